"""The typed knobs as search dimensions: backend parameters, config fields by proto path, the
response cache and ONNX Runtime's execution accelerators (what `perfkit.sweepfile.knobs` parses).

Dimension names (`knob_values`), which `perfkit.tune.space.split_dim` keeps whole behind an
ensemble's "<model>." prefix although paths and keys contain dots:

    param:<key>      parameters { key: "<key>" value { string_value: "<value>" } }  (str values)
    field:<path>     the field at <path> in model_config.proto (values typed as the proto's)
    response_cache   response_cache { enable: <bool> }
    accelerator      optimization.execution_accelerators: "none" clears it; "tensorrt[:P]" and
                     "cuda" set one gpu_execution_accelerator (precision_mode P), "openvino" one
                     cpu_execution_accelerator; an accelerator of that name in the model's config
                     keeps its other parameters

Integer-valued knobs (thread counts, sizes, delays: `ordered`) are ordered dimensions, searched
by index so that TPE can learn a trend; enums, booleans, lists and strings are categorical.

A variant applies them after [space]'s own dimensions (`apply_knobs`), fields last. A field that
[space] also has a key for (instance_group[..].count and instance_count, ...) is refused when the
sweep is read. A dynamic_batching field is skipped in a variant whose dynamic_batching is off, and
turns the batcher on in a model that has none, as writing it into config.pbtxt would. A value
the server refuses fails its trial with the server's reason; what the model's config rules out
for every variant (a key of another backend, a repeated entry the config lacks, a GPU
accelerator without GPU instances) is refused before the first trial (`check_knobs`).

`machine_knobs(config, cpus=, gpus=)` proposes the knobs worth searching for a model on a machine
(for the zero-config tune): `SpaceSpec` keyword arguments.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from perfkit.errors import ConfigError
from perfkit.model_repo.config import ModelConfig
from perfkit.sweepfile import SpaceSpec
from perfkit.sweepfile import protopath as pp
from perfkit.sweepfile.knobs import (
    FIELD_CHOICES,
    GPU_ACCELERATORS,
    PARAMETERS,
    parameter_knob,
)

PARAM, FIELD = "param:", "field:"
CACHE, ACCELERATOR = "response_cache", "accelerator"
# Backend of a config that names a platform only (Triton's auto-completion).
_PLATFORMS = {
    "onnxruntime_onnx": "onnxruntime",
    "pytorch_libtorch": "pytorch",
    "tensorrt_plan": "tensorrt",
    "tensorflow_graphdef": "tensorflow",
    "tensorflow_savedmodel": "tensorflow",
}
# The backends that read optimization.graph and execution_accelerators.
_GRAPH_READERS = ("onnxruntime", "tensorflow")
_SHORT_FIELDS = {
    "optimization.graph.level": "graph",
    "dynamic_batching.max_queue_delay_microseconds": "delay",
}


def is_knob(dim: str) -> bool:
    """Whether `dim` (without an ensemble's prefix) is one of this module's dimensions."""
    return dim.startswith((PARAM, FIELD)) or dim in (CACHE, ACCELERATOR)


def is_batcher_field(dim: str) -> bool:
    """A field of dynamic_batching: it changes nothing when dynamic batching is off."""
    return dim.startswith(f"{FIELD}dynamic_batching.")


def knob_values(space: SpaceSpec) -> dict[str, tuple[Any, ...]]:
    """The knob dimensions of `space`, by dimension name, in apply order."""
    values: dict[str, tuple[Any, ...]] = {f"{PARAM}{key}": vals for key, vals in space.parameters}
    if space.accelerators:
        values[ACCELERATOR] = space.accelerators
    if space.response_cache:
        values[CACHE] = space.response_cache
    values.update({f"{FIELD}{path}": vals for path, vals in space.fields})
    return values


def ordered(dim: str) -> bool:
    """Whether the knob dimension `dim` is searched by index (numbers with a magnitude)."""
    if dim.startswith(PARAM):
        knob = parameter_knob(dim.removeprefix(PARAM))
        return knob is not None and knob.ordered
    if dim.startswith(FIELD):
        path = dim.removeprefix(FIELD)
        return path not in FIELD_CHOICES and pp.resolve(path).numeric
    return False


def encode(dim: str, value: Any) -> Any:
    """The Optuna value of a categorical knob value (a repeated field's list as JSON text)."""
    if isinstance(value, list | tuple):
        return json.dumps(list(value))
    return value


def decode(dim: str, raw: Any) -> Any:
    if dim.startswith(FIELD) and isinstance(raw, str) and pp.resolve(dim[len(FIELD) :]).repeated:
        return tuple(json.loads(raw))
    return raw


def backend_of(config: ModelConfig) -> str:
    """The backend that serves `config`: its `backend`, else the one its platform implies."""
    return str(config.backend or _PLATFORMS.get(config.platform, config.platform))


def apply_knobs(config: ModelConfig, params: Mapping[str, Any]) -> ModelConfig:
    """A copy of `config` with the point's knob values; ConfigError for a value that cannot be
    set (the trial fails with it)."""
    names = [name for name in params if is_knob(name)]
    if not names:
        return config
    out = ModelConfig()
    out.CopyFrom(config)
    for name in names:
        value = params[name]
        if name.startswith(PARAM):
            out.parameters[name.removeprefix(PARAM)].string_value = str(value)
        elif name == CACHE:
            out.response_cache.enable = bool(value)
            if not out.response_cache.ListFields():
                out.ClearField("response_cache")  # off: as a config without it
        elif name == ACCELERATOR:
            _set_accelerator(out, str(value))
    for name in names:
        if name.startswith(FIELD):
            if is_batcher_field(name) and params.get("dynamic_batching") is False:
                continue
            set_field(out, name.removeprefix(FIELD), params[name])
    return out


def set_field(config: ModelConfig, path: str, value: Any) -> None:
    """Set the field at `path` (model_config.proto) of `config` in place; ConfigError says why a
    path or value does not fit this config (an index past its entries, no entry of a kind)."""
    try:
        resolved = pp.resolve(path)
        value = resolved.coerce(list(value) if isinstance(value, tuple) else value)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    messages = [config]
    for step in resolved.steps[:-1]:
        nxt = []
        for message in messages:
            if step.selector is None:
                nxt.append(getattr(message, step.name))
            else:
                nxt.extend(_select(getattr(message, step.name), step, path))
        messages = nxt
    leaf = resolved.steps[-1].name
    for message in messages:
        try:
            if resolved.repeated:
                field = getattr(message, leaf)
                del field[:]
                field.extend(value)
            else:
                setattr(message, leaf, value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"{path}: {value!r} does not fit {resolved.type_name()}: {exc}"
            ) from None


def _select(entries: Any, step: pp.Step, path: str) -> list[Any]:
    where = f"{path}: {step.name}[{step.selector}]"
    if isinstance(step.selector, int):
        if step.selector >= len(entries):
            raise ConfigError(
                f"{where}: the model's config has {len(entries)} {step.name} entries; index from "
                f"0 to {len(entries) - 1}, or add the entry to config.pbtxt"
            )
        return [entries[step.selector]]
    if str(step.selector).startswith("KIND_"):
        chosen = [e for e in entries if _kind_name(e) == step.selector]
        what = f"no {step.name} entry of kind {step.selector}"
    else:
        chosen = [e for e in entries if getattr(e, "name", None) == step.selector]
        what = f"no {step.name} entry named {step.selector!r}"
    if not chosen:
        raise ConfigError(f"{where}: the model's config has {what}")
    return chosen


def _kind_name(entry: Any) -> str:
    field = entry.DESCRIPTOR.fields_by_name["kind"]
    return str(field.enum_type.values_by_number[entry.kind].name)


def _set_accelerator(config: ModelConfig, value: str) -> None:
    name, _, precision = value.partition(":")
    accelerators = config.optimization.execution_accelerators
    kept = {a.name: dict(a.parameters) for a in accelerators.gpu_execution_accelerator}
    kept.update({a.name: dict(a.parameters) for a in accelerators.cpu_execution_accelerator})
    config.optimization.ClearField("execution_accelerators")
    accelerators = config.optimization.execution_accelerators  # the cleared one is detached
    if name == "none":
        if not config.optimization.ListFields():
            config.ClearField("optimization")
        return
    if name in GPU_ACCELERATORS:
        kinds = {_kind_name(g) for g in config.instance_group}
        if config.instance_group and not kinds & {"KIND_GPU", "KIND_AUTO"}:
            raise ConfigError(
                f"accelerator {value!r} is a GPU execution accelerator, which Triton applies to "
                f"KIND_GPU instances only, and this variant's instances are {', '.join(sorted(kinds))}"
            )
        entry = accelerators.gpu_execution_accelerator.add(name=name)
    else:
        entry = accelerators.cpu_execution_accelerator.add(name=name)
    entry.parameters.update(kept.get(name, {}))
    if precision:
        entry.parameters["precision_mode"] = precision


def check_knobs(base: ModelConfig, space: SpaceSpec) -> None:
    """Refuse, before any trial, a knob the model's config rules out for every variant."""
    backend = backend_of(base)
    own = PARAMETERS.get(backend, {})
    for key, values in space.parameters:
        knob = parameter_knob(key)
        if knob is not None and key not in own:
            other = next(b for b, knobs in PARAMETERS.items() if key in knobs)
            raise ConfigError(
                f"space.parameters.{key}: a parameter of Triton's {other} backend; model "
                f"{base.name!r} runs on {backend}, which ignores it. Its parameters: "
                f"{', '.join(own) or 'none known to perfkit'}"
            )
        if knob is not None and knob.process_wide and len(values) > 1:
            raise ConfigError(
                f"space.parameters.{key}: {backend} sets it once for the whole server process "
                "(the first model's value holds, in Triton too), so trials on one server cannot "
                "compare values: pin one value, or tune it across server restarts yourself"
            )
    if space.accelerators and space.accelerators != ("none",) and backend != "onnxruntime":
        raise ConfigError(
            f"space.accelerators: model {base.name!r} runs on {backend}; perfkit searches ONNX "
            "Runtime's execution accelerators only (backend onnxruntime)"
        )
    gpu = [a for a in space.accelerators if a.partition(":")[0] in GPU_ACCELERATORS]
    kinds = {_kind_name(g) for g in base.instance_group} | set(space.instance_kind)
    if gpu and base.instance_group and not kinds & {"KIND_GPU", "KIND_AUTO"}:
        raise ConfigError(
            f"space.accelerators: {gpu[0]!r} is a GPU execution accelerator, which Triton applies "
            f"to KIND_GPU instances only; model {base.name!r} has {', '.join(sorted(kinds))} "
            'instances: add instance_kind = ["KIND_GPU"] to [space], or drop it'
        )
    if True in space.response_cache and (
        base.model_transaction_policy.decoupled or base.HasField("sequence_batching")
    ):
        raise ConfigError(
            f"space.response_cache: model {base.name!r} is decoupled or sequence-batched, and "
            "Triton's response cache refuses both: drop response_cache"
        )
    for path, values in space.fields:
        if path.startswith("optimization.") and backend not in _GRAPH_READERS:
            raise ConfigError(
                f'space.fields."{path}": read by the onnxruntime and tensorflow backends only; '
                f"model {base.name!r} runs on {backend}, which ignores it"
            )
        if space.instance_kind and pp.selects_kind(pp.resolve(path)):
            continue  # the kinds are the variant's: checked when it is built
        for value in values:
            trial = ModelConfig()
            trial.CopyFrom(base)
            try:
                set_field(trial, path, value)
            except ConfigError as exc:
                raise ConfigError(f'space.fields."{path}": {exc}') from None


def describe_knobs(params: Mapping[str, Any]) -> list[str]:
    """Short words for the knob values of one model's point, e.g. ["intra=2", "graph=1", "cache"]."""
    parts: list[str] = []
    for name, value in params.items():
        if name.startswith(PARAM):
            key = name.removeprefix(PARAM)
            knob = parameter_knob(key)
            parts.append(f"{knob.short if knob and knob.short else key}={value}")
        elif name.startswith(FIELD):
            path = name.removeprefix(FIELD)
            shown = ",".join(map(str, value)) if isinstance(value, list | tuple) else value
            parts.append(f"{_SHORT_FIELDS.get(path, path)}={shown}")
        elif name == CACHE:
            parts.append("cache" if value else "no-cache")
        elif name == ACCELERATOR:
            parts.append(f"accel={value}")
    return parts


def machine_knobs(config: ModelConfig, *, cpus: int, gpus: int) -> dict[str, Any]:
    """`SpaceSpec` keyword arguments with the typed knobs worth searching for `config`'s backend
    on a machine with `cpus` cores and `gpus` GPUs (for the zero-config tune; merge them into its
    SpaceSpec). ONNX Runtime: intra_op_thread_count over the powers of two up to `cpus` (and
    `cpus`), execution_mode 0/1, optimization.graph.level -1/0/1, and with GPUs the TensorRT
    accelerator (FP32, FP16) when the model may run on GPU instances (KIND_GPU/KIND_AUTO or no
    instance_group). Other backends: nothing (PyTorch's thread pools are set once per server
    process, so trials on one server cannot compare them). A knob with one value is left out.
    The response cache is never proposed: it needs a server started with a cache, and its gain
    depends on repeated inputs, which a load generator's data does not represent."""
    if backend_of(config) != "onnxruntime":
        return {}
    threads = [1 << k for k in range(max(cpus, 1).bit_length())]
    if cpus > threads[-1]:
        threads.append(cpus)
    parameters: list[tuple[str, tuple[str, ...]]] = []
    if len(threads) > 1:
        parameters.append(("intra_op_thread_count", tuple(str(t) for t in threads)))
    parameters.append(("execution_mode", ("0", "1")))
    out: dict[str, Any] = {
        "parameters": tuple(parameters),
        "fields": (("optimization.graph.level", (-1, 0, 1)),),
    }
    kinds = {_kind_name(g) for g in config.instance_group}
    if gpus > 0 and (not kinds or kinds & {"KIND_GPU", "KIND_AUTO"}):
        out["accelerators"] = ("none", "tensorrt", "tensorrt:FP16")
    return out
