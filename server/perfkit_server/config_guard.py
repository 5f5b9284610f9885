"""No config field silently ignored: every field a loaded ModelConfig sets is one this server
implements, one that has no effect here for a stated reason, or the load is refused naming it.

What perfkit_server measures must be what Triton would do with the same config. A field the server
does not read would make the two differ without a word, so the load fails instead, naming the
field path and the two ways out: remove the field, or measure the real Triton (`perfkit run -u`).

The rule table, per top-level field of model_config.proto (`FIELDS`; a field missing from it, such
as one a newer Triton adds, is refused until someone decides about it):

| field | rule |
|---|---|
| name, platform, backend, version_policy, max_batch_size | implemented (registry, backends) |
| runtime | only `libtriton_<backend>.so`, the library Triton picks anyway; else refused (this server
  has no backend libraries or Python-based backend runtimes to choose from) |
| input | name, data_type, dims, optional implemented; `format` accepted (Triton only checks that
  FORMAT_NHWC/NCHW has 3 dims, checked here; clients read it); `reshape`, `is_shape_tensor`,
  `allow_ragged_batch`, `is_non_linear_format_io` refused |
| output | name, data_type, dims implemented; `label_filename` accepted (its file is checked as
  Triton loads it; labels serve only the classification extension, which this server refuses
  per request by name); `reshape`, `is_shape_tensor`, `is_non_linear_format_io` refused |
| batch_input, batch_output | refused (ragged batching) |
| optimization | `graph` and `execution_accelerators`: implemented by the onnxruntime backend, and
  read by no other Triton backend (accepted there); `priority`, `cuda`, `eager_batching`: read
  only by Triton's tensorrt backend: refused for tensorrt, accepted elsewhere; pinned memory
  off and `gather_kernel_buffer_threshold` shape CPU<->GPU copies: accepted on CPU-only models,
  refused on a model with a KIND_GPU instance (enabled pinned memory is Triton's default) |
| dynamic_batching, model_warmup, default_model_filename, parameters | implemented (batching,
  scheduler, warmup, backends; a backend ignores parameter keys it does not know, as Triton's do) |
| sequence_batching, model_transaction_policy, response_cache | implemented (issue #13: the
  sequence batcher, decoupled models, the response cache) |
| ensemble_scheduling | implemented with platform "ensemble"; on any other model refused (Triton
  refuses it too) |
| instance_group | name, kind, count, gpus, profile, passive, secondary_devices as placement.py
  rules; rate_limiter implemented (issue #13); `host_policy` refused (no --host-policy here) |
| cc_model_filenames | accepted on CPU-only models (Triton reads it only for GPU instances),
  refused on a model with a KIND_GPU instance |
| metric_tags | refused (this server's metrics carry no custom labels) |
| model_metrics | accepted: it shapes only histogram metrics, which Triton makes only under
  `--metrics-config histogram_latencies=true`, a flag this server does not have |
| model_operations | refused (no custom operation libraries are loaded) |
| model_repository_agents | refused (no repository agents run here) |

Pure apart from one stat of a label file; imports only the placement types.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from perfkit_server.placement import KIND_GPU, Group

IMPLEMENTED, ACCEPTED, REFUSED, CHECKED = "implemented", "accepted", "refused", "checked"


@dataclass(frozen=True, slots=True)
class Rule:
    """What the server does with a field: `status` IMPLEMENTED (read, with effect), ACCEPTED (no
    effect here, `why`), REFUSED (`why` says what is missing) or CHECKED (its sub-fields or value
    decide, in `_CHECKS`)."""

    status: str
    why: str


FIELDS: dict[str, Rule] = {
    "name": Rule(IMPLEMENTED, "must equal the model directory"),
    "platform": Rule(IMPLEMENTED, "chooses the backend"),
    "backend": Rule(IMPLEMENTED, "chooses the backend"),
    "runtime": Rule(CHECKED, "only the library Triton would pick anyway"),
    "version_policy": Rule(IMPLEMENTED, "chooses the served versions"),
    "max_batch_size": Rule(IMPLEMENTED, "batch dimension and batcher cap"),
    "input": Rule(CHECKED, "name, data_type, dims, optional, format"),
    "output": Rule(CHECKED, "name, data_type, dims, label_filename"),
    "batch_input": Rule(REFUSED, "ragged-batch inputs (batch_input)"),
    "batch_output": Rule(REFUSED, "ragged-batch outputs (batch_output)"),
    "optimization": Rule(CHECKED, "per sub-field and backend"),
    "dynamic_batching": Rule(IMPLEMENTED, "the dynamic batcher (batching.py, scheduler.py)"),
    "sequence_batching": Rule(IMPLEMENTED, "the sequence batcher (issue #13)"),
    "ensemble_scheduling": Rule(CHECKED, "the ensemble scheduler, platform ensemble only"),
    "instance_group": Rule(CHECKED, "placement.py; rate_limiter (issue #13)"),
    "default_model_filename": Rule(IMPLEMENTED, "the model file each backend loads"),
    "cc_model_filenames": Rule(CHECKED, "read by Triton for GPU instances only"),
    "metric_tags": Rule(REFUSED, "custom metric labels (metric_tags)"),
    "parameters": Rule(IMPLEMENTED, "each backend reads its keys and ignores others, as Triton's"),
    "model_warmup": Rule(IMPLEMENTED, "warmup.py runs them on every instance before READY"),
    "model_operations": Rule(REFUSED, "custom operation libraries (model_operations)"),
    "model_transaction_policy": Rule(IMPLEMENTED, "decoupled models (issue #13)"),
    "model_repository_agents": Rule(REFUSED, "repository agents (model_repository_agents)"),
    "response_cache": Rule(IMPLEMENTED, "the response cache (issue #13)"),
    "model_metrics": Rule(
        ACCEPTED,
        "it shapes only histogram metrics, which Triton makes only under --metrics-config "
        "histogram_latencies=true, a flag this server does not have",
    ),
}

# Sub-fields of checked messages this server reads; any other set sub-field is refused.
_INPUT_READ = frozenset({"name", "data_type", "dims", "optional", "format"})
_OUTPUT_READ = frozenset({"name", "data_type", "dims", "label_filename"})
_GROUP_READ = frozenset(
    # profile, passive and secondary_devices: placement.resolve_groups refuses what it cannot do.
    {"name", "kind", "count", "gpus", "rate_limiter", "profile", "passive", "secondary_devices"}
)
_TENSORRT_ONLY = ("priority", "cuda", "eager_batching")
_ORT_ONLY = ("graph", "execution_accelerators")
_COPY_KNOBS = ("input_pinned_memory", "output_pinned_memory", "gather_kernel_buffer_threshold")


@dataclass(frozen=True, slots=True)
class _Model:
    """What the checks need besides the field: where the config came from and how it runs."""

    config: Any
    backend: str
    source: str
    has_gpu_instance: bool
    model_dir: Path | None


def refusal(source: str, path: str, what: str) -> ValueError:
    """The load error for a field this server does not implement."""
    return ValueError(
        f"{source}: {path}: perfkit_server does not implement {what}, so it would serve this "
        f"config unlike Triton; remove '{path}' from the config, or measure a real Triton "
        "server with it (perfkit run -u <url>)"
    )


def check_fields(
    config: Any,
    backend: str,
    source: str,
    groups: Sequence[Group] | None = None,
    model_dir: Path | None = None,
) -> None:
    """Raise ValueError naming the first set field of `config` this server does not implement.

    `groups` are the instance groups as placed (placement.resolve_groups); without them a group
    counts as GPU only if it says KIND_GPU. `model_dir` is where a label file is looked for."""
    if groups is None:
        from tritonclient.grpc import model_config_pb2 as mc

        gpu = any(g.kind == mc.ModelInstanceGroup.KIND_GPU for g in config.instance_group)
    else:
        gpu = any(g.kind == KIND_GPU for g in groups)
    model = _Model(config, backend, source, gpu, model_dir)
    for field, value in config.ListFields():
        rule = FIELDS.get(field.name)
        if rule is None:
            raise refusal(source, field.name, f"the field '{field.name}' (not in its rule table)")
        if rule.status == REFUSED:
            raise refusal(source, field.name, rule.why)
        if rule.status == CHECKED:
            _CHECKS[field.name](model, value)


def _runtime(model: _Model, value: Any) -> None:
    if value != f"libtriton_{model.backend}.so":
        raise refusal(
            model.source,
            "runtime",
            f"backend runtimes (runtime {value!r}: it runs backend '{model.backend}' built in)",
        )


def _unread(model: _Model, message: Any, path: str, read: frozenset[str], what: str) -> None:
    for field, _ in message.ListFields():
        if field.name not in read:
            raise refusal(model.source, f"{path}.{field.name}", f"{what} '{field.name}'")


def _inputs(model: _Model, tensors: Any) -> None:
    from tritonclient.grpc import model_config_pb2 as mc

    for i, tensor in enumerate(tensors):
        path = f"input[{i}]"
        _unread(model, tensor, path, _INPUT_READ, "the input field")
        laid_out = (mc.ModelInput.FORMAT_NHWC, mc.ModelInput.FORMAT_NCHW)
        if tensor.format in laid_out and len(tensor.dims) != 3:
            name = mc.ModelInput.Format.Name(tensor.format)
            raise ValueError(
                f"{model.source}: {path}.format: input '{tensor.name}' is {name}, which requires "
                f"3 dims (got {list(tensor.dims)}), as Triton requires"
            )


def _outputs(model: _Model, tensors: Any) -> None:
    for i, tensor in enumerate(tensors):
        path = f"output[{i}]"
        _unread(model, tensor, path, _OUTPUT_READ, "the output field")
        if tensor.label_filename:
            _label_file(model, f"{path}.label_filename", tensor.label_filename)


def _label_file(model: _Model, path: str, name: str) -> None:
    """Triton reads the label file at load: it must be a file inside the model directory."""
    relative = PurePosixPath(name)
    if relative.is_absolute() or ".." in relative.parts or "\\" in name or "\x00" in name:
        raise ValueError(
            f"{model.source}: {path}: {name!r} must be a relative path inside the model "
            "directory (no '..')"
        )
    if model.model_dir is not None and not (model.model_dir / relative).is_file():
        raise ValueError(
            f"{model.source}: {path}: no label file {name!r} in the model directory "
            f"{model.model_dir}; Triton fails the load without it"
        )


def _optimization(model: _Model, optimization: Any) -> None:
    for field, value in optimization.ListFields():
        path = f"optimization.{field.name}"
        if field.name in _ORT_ONLY:
            continue  # onnxruntime_options applies them; Triton's other backends never read them
        if field.name in _TENSORRT_ONLY:
            if model.backend == "tensorrt":
                raise refusal(model.source, path, f"TensorRT's '{field.name}' setting")
            continue  # only Triton's tensorrt backend reads it
        if field.name in _COPY_KNOBS:
            off = field.name == "gather_kernel_buffer_threshold" or not value.enable
            if model.has_gpu_instance and off:
                raise refusal(
                    model.source, path, "this CPU<->GPU copy setting for KIND_GPU instances"
                )
            continue  # copies to and from a GPU only: a CPU instance makes none
        raise refusal(model.source, path, f"the optimization field '{field.name}'")


def _instance_groups(model: _Model, groups: Any) -> None:
    for i, group in enumerate(groups):
        path = f"instance_group[{i}]"
        if group.host_policy:
            raise refusal(
                model.source,
                f"{path}.host_policy",
                "host policies (NUMA binding: it has no --host-policy)",
            )
        _unread(model, group, path, _GROUP_READ, "the instance group field")


def _cc_model_filenames(model: _Model, _value: Any) -> None:
    if model.has_gpu_instance:
        raise refusal(
            model.source,
            "cc_model_filenames",
            "per-compute-capability model files for KIND_GPU instances",
        )


def _ensemble(model: _Model, _value: Any) -> None:
    if model.config.platform != "ensemble":
        raise ValueError(
            f'{model.source}: ensemble_scheduling: only an ensemble (platform "ensemble") may '
            f"set it, and this model's platform is {model.config.platform or '(none)'!r}; remove "
            "ensemble_scheduling, or make the model an ensemble, as Triton requires"
        )


_CHECKS: dict[str, Callable[[_Model, Any], None]] = {
    "runtime": _runtime,
    "input": _inputs,
    "output": _outputs,
    "optimization": _optimization,
    "ensemble_scheduling": _ensemble,
    "instance_group": _instance_groups,
    "cc_model_filenames": _cc_model_filenames,
}
