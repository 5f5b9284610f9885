"""What a model load may ask for: file names confined to the model's directories, capped instances
and threads. Checked on every load (config.pbtxt or the load API's override) before anything is
read or loaded, so a refused config costs nothing and names its field, the rule and the flag.

Imports the backends' parameter tables only; nothing here touches the filesystem.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from perfkit.datatypes import BY_V2
from perfkit.model_repo.config import v2_datatype
from perfkit_server.backends import THREAD_PARAMETERS, check_parameters
from perfkit_server.backends.base import check_file_name, int_parameter
from perfkit_server.placement import Group, slots
from perfkit_server.settings import ServerSettings

WARMUP_DIR = "warmup"
# An element of a BYTES warmup input counted as a pointer (its contents are generated, never read).
_OBJECT_ITEM_BYTES = 8


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadLimits:
    """The caps of one server (its flags)."""

    max_instances_per_model: int
    max_threads_per_instance: int
    max_warmup_count: int
    max_warmup_bytes: (
        int  # one warmup request's inputs, as a client request (--http-max-input-size)
    )

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> LoadLimits:
        return cls(
            max_instances_per_model=settings.max_instances_per_model,
            max_threads_per_instance=settings.max_threads_per_instance,
            max_warmup_count=settings.max_warmup_count,
            max_warmup_bytes=settings.max_request_bytes,
        )


def check_load(
    config: Any, backend: str, limits: LoadLimits, source: str, groups: Sequence[Group]
) -> None:
    """Raise ValueError (naming the field, value, rule and flag) for a config no load may ask for.

    `groups` are the config's instance groups as placed on this host (placement.resolve_groups)."""
    if config.default_model_filename:
        check_file_name(config.default_model_filename, "default_model_filename", source)
    check_parameters(config, backend, source)
    _check_instances(groups, limits, source)
    _check_threads(config, backend, limits, source)
    for warmup in config.model_warmup:
        _check_warmup(config, warmup, limits, source)


def _check_instances(groups: Sequence[Group], limits: LoadLimits, source: str) -> None:
    # As placed: a KIND_GPU group's count once on each of its GPUs.
    total = len(slots(groups))
    cap = limits.max_instances_per_model
    if total > cap:
        raise ValueError(
            f"{source}: instance_group: {total} instances asked for (counts summed over the "
            f"groups, a KIND_GPU group's count once per GPU), over this server's cap of {cap}; "
            f"lower the counts, or start the server with --max-instances-per-model={total}"
        )


def _check_threads(config: Any, backend: str, limits: LoadLimits, source: str) -> None:
    cap = limits.max_threads_per_instance
    for key in THREAD_PARAMETERS.get(backend, ()):
        threads = int_parameter(config, key, 0, source)
        if threads < 0:
            raise ValueError(
                f"{source}: parameters['{key}']: {threads} threads; the count must be 0 (the "
                f"backend's default) to {cap}"
            )
        if threads > cap:
            raise ValueError(
                f"{source}: parameters['{key}']: {threads} threads per instance, over this "
                f"server's cap of {cap}; lower it, or start the server with "
                f"--max-threads-per-instance={threads}"
            )


def _check_warmup(config: Any, warmup: Any, limits: LoadLimits, source: str) -> None:
    where = f"{source}: model_warmup '{warmup.name}'"
    if warmup.count > limits.max_warmup_count:
        raise ValueError(
            f"{where}: count {warmup.count}, over this server's cap of "
            f"{limits.max_warmup_count} runs per instance; lower it, or start the server with "
            f"--max-warmup-count={warmup.count}"
        )
    batch = max(1, warmup.batch_size) if config.max_batch_size > 0 else 1
    total = 0
    for name, spec in warmup.inputs.items():
        field = f"{where}: input '{name}'"
        dims = [int(d) for d in spec.dims]
        if any(d < 0 for d in dims):
            raise ValueError(f"{field}: dims {dims}: a warmup input's dims must all be >= 0")
        try:
            datatype = v2_datatype(spec.data_type)
        except ValueError as exc:
            raise ValueError(f"{field}: {exc}") from None
        row = BY_V2[datatype]
        if row.numpy is None:
            raise ValueError(f"{field}: {datatype} warmup inputs are not supported by this server")
        total += math.prod(dims) * (row.byte_size or _OBJECT_ITEM_BYTES) * batch
        if spec.WhichOneof("input_data_type") == "input_data_file":
            check_warmup_file_name(spec.input_data_file, field)
            if row.byte_size is None:
                raise ValueError(
                    f"{field}: input_data_file: {datatype} warmup data from a file is not "
                    "supported by this server; use zero_data or random_data"
                )
    if total > limits.max_warmup_bytes:
        raise ValueError(
            f"{where}: its inputs take {total} bytes, more than a request may "
            f"(--http-max-input-size={limits.max_warmup_bytes})"
        )


def check_warmup_file_name(name: str, field: str) -> PurePosixPath:
    """The path of `input_data_file` relative to the model's warmup/ directory, if it is one."""
    rule = f"a file in the '{WARMUP_DIR}' directory under the model directory"
    path = PurePosixPath(name)
    if not name or "\x00" in name or "\\" in name or path.is_absolute():
        raise ValueError(f"{field}: input_data_file {name!r} must be a relative path naming {rule}")
    if ".." in path.parts or path == PurePosixPath("."):
        raise ValueError(
            f"{field}: input_data_file {name!r} must not contain '..': it names {rule}"
        )
    return path
