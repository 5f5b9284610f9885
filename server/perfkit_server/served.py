"""What the registry serves: a model's entry, its loaded versions and their tensor signatures,
and the file-level helpers a load uses (version selection, the model directory's fingerprint).

Kept apart from `perfkit_server.registry` (the lifecycle) so that module stays readable; the
registry re-exports these names.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from perfkit.model_repo import ModelRepoError
from perfkit.model_repo.config import v2_datatype
from perfkit.model_repo.repository import version_dirs
from perfkit_server.errors import InvalidConfig
from perfkit_server.stats import ModelStats

if TYPE_CHECKING:
    from perfkit_server.ensemble import EnsembleScheduler
    from perfkit_server.response_cache import ResponseCache
    from perfkit_server.scheduler import Scheduler
    from perfkit_server.sequence import SequenceScheduler

CONFIG_FILE = "config.pbtxt"


@dataclass(frozen=True, slots=True)
class TensorSignature:
    """An input or output as the config declares it (dims without the batch dimension).

    What a request is checked against (not perfkit.zoo's TensorSpec, which builds a config)."""

    name: str
    datatype: str
    dims: tuple[int, ...]
    optional: bool = False


@dataclass(slots=True, eq=False)
class LoadedVersion:
    """One served model version: its config, scheduler and statistics."""

    name: str
    version: int
    config: Any
    scheduler: Scheduler | EnsembleScheduler | SequenceScheduler
    stats: ModelStats
    inputs: dict[str, TensorSignature]
    outputs: dict[str, TensorSignature]
    max_batch_size: int
    platform: str
    # model_transaction_policy { decoupled: true }: answered only on a stream (infer_stream).
    decoupled: bool = False
    # Signatures of requests already checked against this version: (batch size, outputs wanted).
    checked: dict[object, tuple[int, list[str]]] = field(default_factory=dict)
    # The server's response cache when the config enables it (and the server has one), else None.
    response_cache: ResponseCache | None = None


@dataclass(slots=True, eq=False)
class ModelEntry:
    """A model's current state: its loaded versions, or why it is unavailable."""

    name: str
    versions: dict[int, LoadedVersion] = field(default_factory=dict)
    config: Any = None
    state: str = "UNAVAILABLE"
    reason: str = ""
    fingerprint: tuple[Any, ...] = ()
    # Versions last served (or tried), for the index entries of an unavailable model.
    last_versions: list[str] = field(default_factory=list)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    awaiting_composing: bool = False  # an ensemble unloaded with a composing model (ensemble_deps)
    explicit: bool = False  # loaded on its own request, not only for an ensemble (ensemble_deps)


def fingerprint(model_dir: Path) -> tuple[Any, ...]:
    items: list[tuple[str, int, int]] = []
    for root, dirs, files in os.walk(model_dir):
        dirs.sort()
        for fname in sorted(files):
            path = Path(root) / fname
            try:
                st = path.stat()
            except OSError:
                continue
            items.append((str(path.relative_to(model_dir)), st.st_mtime_ns, st.st_size))
    return tuple(items)


def select_versions(config: Any, model_dir: Path, source: str) -> dict[int, Path]:
    available = version_dirs(model_dir)
    policy = config.version_policy
    which = policy.WhichOneof("policy_choice")
    if which == "all":
        chosen = available
    elif which == "specific":
        chosen = {v: p for v, p in available.items() if v in set(policy.specific.versions)}
    else:
        n = max(1, policy.latest.num_versions) if which == "latest" else 1
        chosen = dict(sorted(available.items())[-n:])
    if not chosen:
        raise InvalidConfig(
            f"{source}: version_policy: no version directory of model '{config.name}' matches the "
            f"policy (found versions {sorted(available) or 'none'}); add a numbered directory such "
            "as 1/ holding the model file"
        )
    return chosen


def signatures(tensors: Any, source: str, kind: str) -> dict[str, TensorSignature]:
    specs: dict[str, TensorSignature] = {}
    for t in tensors:
        try:
            datatype = v2_datatype(t.data_type)
        except ModelRepoError as exc:
            raise InvalidConfig(f"{source}: {kind} '{t.name}': {exc}") from None
        specs[t.name] = TensorSignature(
            t.name, datatype, tuple(int(d) for d in t.dims), bool(getattr(t, "optional", False))
        )
    return specs
