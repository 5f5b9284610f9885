"""config.pbtxt <-> `ModelConfig` (tritonclient's model_config_pb2 + protobuf text_format), its JSON form, and
typed editors. Pure: no I/O beyond reading/writing the file it is given; imports nothing of perfkit but
perfkit.datatypes, and raises its own `InvalidModelConfig` (perfkit maps it to ConfigError, perfkit_server
to its own errors)."""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from google.protobuf import descriptor, json_format, text_format
from tritonclient.grpc import model_config_pb2 as mc

from perfkit.datatypes import UnknownDatatype, by_config
from perfkit.model_repo import InvalidModelConfig

if TYPE_CHECKING:
    # tritonclient ships no type information: to mypy a ModelConfig is Any.
    ModelConfig = Any
else:
    ModelConfig = mc.ModelConfig


INSTANCE_KINDS = ("KIND_AUTO", "KIND_CPU", "KIND_GPU", "KIND_MODEL")


def v2_datatype(data_type: int) -> str:
    """KServe v2 datatype ("FP32") of a config `DataType` enum value."""
    try:
        return by_config(mc.DataType.Name(data_type)).v2
    except UnknownDatatype as exc:
        raise InvalidModelConfig(str(exc)) from None


def parse_config(text: str, source: str = "<config>") -> ModelConfig:
    """Parse config.pbtxt text. `source` (a path, usually) is named in the error."""
    config = ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise InvalidModelConfig(
            f"{source}: invalid config.pbtxt: {exc}. Fix the field named above; the format is Triton's "
            "model configuration (protobuf text format)."
        ) from exc
    return config


def load_config(path: Path) -> ModelConfig:
    """Read and parse a config.pbtxt file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidModelConfig(
            f'Path "{path}" does not exist. Make sure the model repository and model name are correct.'
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidModelConfig(f"{path}: cannot read config.pbtxt: {exc}") from exc
    return parse_config(text, str(path))


def format_config(config: ModelConfig) -> str:
    """config.pbtxt text of a config (protobuf text format, as Triton users write it)."""
    return str(text_format.MessageToString(config))


_INT64_TYPES = frozenset(
    {
        descriptor.FieldDescriptor.TYPE_INT64,
        descriptor.FieldDescriptor.TYPE_UINT64,
        descriptor.FieldDescriptor.TYPE_SINT64,
        descriptor.FieldDescriptor.TYPE_FIXED64,
        descriptor.FieldDescriptor.TYPE_SFIXED64,
    }
)


def _fix_int64(message_descriptor: Any, obj: dict[str, Any]) -> dict[str, Any]:
    # json_format writes 64-bit integers as strings; Triton's JSON carries them as numbers.
    for key, value in obj.items():
        field = message_descriptor.fields_by_name.get(key)
        if field is None:
            continue
        if field.type == descriptor.FieldDescriptor.TYPE_MESSAGE:
            sub = field.message_type
            if sub.GetOptions().map_entry:
                value_field = sub.fields_by_name["value"]
                if value_field.type == descriptor.FieldDescriptor.TYPE_MESSAGE:
                    for map_value in value.values():
                        _fix_int64(value_field.message_type, map_value)
            elif isinstance(value, list):
                for item in value:
                    _fix_int64(sub, item)
            else:
                _fix_int64(sub, value)
        elif field.type in _INT64_TYPES:
            obj[key] = [int(v) for v in value] if isinstance(value, list) else int(value)
    return obj


# protobuf >= 5.26 renamed including_default_value_fields.
_DEFAULTS_KW = (
    "always_print_fields_with_no_presence"
    if "always_print_fields_with_no_presence"
    in inspect.signature(json_format.MessageToDict).parameters
    else "including_default_value_fields"
)


def config_to_json(config: ModelConfig, *, include_defaults: bool = False) -> dict[str, Any]:
    """Triton's JSON form of a config (snake_case field names, 64-bit ints as numbers).

    This is what the repository load API takes in `parameters.config`. With `include_defaults`,
    every field is spelled out, default-valued ones too, as Triton's `/v2/models/{m}/config` does.
    """
    options: dict[str, Any] = {"preserving_proto_field_name": True}
    if include_defaults:
        options[_DEFAULTS_KW] = True
    obj = json_format.MessageToDict(config, **options)
    return _fix_int64(ModelConfig.DESCRIPTOR, obj)


def config_from_json(obj: dict[str, Any] | str, source: str = "<json config>") -> ModelConfig:
    """Parse Triton's JSON form of a config (a dict or a JSON string)."""
    config = ModelConfig()
    try:
        if isinstance(obj, str):
            json_format.Parse(obj, config)
        else:
            json_format.ParseDict(obj, config)
    except json_format.ParseError as exc:
        raise InvalidModelConfig(f"{source}: invalid model configuration JSON: {exc}") from exc
    return config


def config_hash(config: ModelConfig) -> str:
    """Stable short hash (12 hex digits of sha256) of a config's content."""
    data = config.SerializeToString(deterministic=True)
    return hashlib.sha256(data).hexdigest()[:12]


def _copy(config: ModelConfig) -> ModelConfig:
    new = ModelConfig()
    new.CopyFrom(config)
    return new


def with_max_batch_size(config: ModelConfig, max_batch_size: int) -> ModelConfig:
    """A copy with `max_batch_size` set."""
    if max_batch_size < 0:
        raise InvalidModelConfig(f"max_batch_size must be >= 0, got {max_batch_size}")
    new = _copy(config)
    new.max_batch_size = max_batch_size
    return new


def with_instances(
    config: ModelConfig,
    count: int | None = None,
    kind: str | None = None,
    gpus: Sequence[int] | None = None,
) -> ModelConfig:
    """A copy whose instance groups have `count` instances of `kind` on `gpus`; None keeps the
    config's own value, so a KIND_AUTO or KIND_GPU group and its `gpus` survive a count change.

    Every group of the config is edited (a count is per group, and per listed GPU for KIND_GPU, as
    Triton places them); a config without instance_group gets one group, whose kind stays unset
    (KIND_AUTO, Triton's default) unless `kind` is given. `gpus` are dropped from a group made
    KIND_CPU or KIND_MODEL: Triton refuses GPUs on those kinds.
    """
    if count is not None and count < 1:
        raise InvalidModelConfig(f"instance_group count must be >= 1, got {count}")
    if kind is not None and kind not in INSTANCE_KINDS:
        raise InvalidModelConfig(
            f"instance_group kind must be one of {', '.join(INSTANCE_KINDS)}, got {kind!r}"
        )
    new = _copy(config)
    if len(new.instance_group) == 0:
        new.instance_group.add().count = 1
    for group in new.instance_group:
        if count is not None:
            group.count = count
        if kind is not None:
            group.kind = mc.ModelInstanceGroup.Kind.Value(kind)
        if gpus is not None:
            del group.gpus[:]
            group.gpus.extend(gpus)
        if group.kind in (mc.ModelInstanceGroup.KIND_CPU, mc.ModelInstanceGroup.KIND_MODEL):
            del group.gpus[:]
    return new


def instance_kinds(config: ModelConfig) -> list[tuple[int, str, tuple[int, ...]]]:
    """(count, kind, gpus) of each instance group; none: Triton's default, one KIND_AUTO."""
    if len(config.instance_group) == 0:
        return [(1, "KIND_AUTO", ())]
    return [
        (max(int(g.count), 1), str(mc.ModelInstanceGroup.Kind.Name(g.kind)), tuple(g.gpus))
        for g in config.instance_group
    ]


def with_dynamic_batching(
    config: ModelConfig,
    preferred_batch_sizes: Iterable[int] = (),
    max_queue_delay_us: int = 0,
) -> ModelConfig:
    """A copy with dynamic batching on, these preferred sizes and queue delay; other batcher fields kept."""
    if max_queue_delay_us < 0:
        raise InvalidModelConfig(
            f"max_queue_delay_microseconds must be >= 0, got {max_queue_delay_us}"
        )
    new = _copy(config)
    batching = new.dynamic_batching
    del batching.preferred_batch_size[:]
    batching.preferred_batch_size.extend(sorted(set(preferred_batch_sizes)))
    batching.max_queue_delay_microseconds = max_queue_delay_us
    # SetInParent makes an all-default `dynamic_batching {}` present, which means "on".
    batching.SetInParent()
    return new


def without_dynamic_batching(config: ModelConfig) -> ModelConfig:
    """A copy with dynamic batching off (the default scheduler)."""
    new = _copy(config)
    new.ClearField("dynamic_batching")
    return new


def instance_summary(config: ModelConfig, gpu_count: int = 0) -> str:
    """Model Analyzer's instance-group cell: total count per kind, e.g. "2:CPU" or "4:GPU + 1:CPU".

    A KIND_GPU group counts `count` per listed GPU, or per GPU of the `gpu_count` the server has
    when it lists none; KIND_AUTO counts as GPU when `gpu_count` > 0, else as CPU (as Triton
    resolves it for a GPU-capable backend)."""
    counts: dict[str, int] = {}
    for count, kind_name, gpus in instance_kinds(config):
        kind = kind_name.removeprefix("KIND_")
        if kind == "AUTO":
            kind = "GPU" if gpu_count > 0 else "CPU"
        if kind == "GPU":
            count *= len(gpus) or max(gpu_count, 1)
        counts[kind] = counts.get(kind, 0) + count
    return " + ".join(f"{n}:{kind}" for kind, n in counts.items())


def validate_config(config: ModelConfig, source: str = "<config>") -> None:
    """Check what Triton checks before loading; raise InvalidModelConfig naming `source` and the field."""

    def fail(field: str, why: str) -> InvalidModelConfig:
        return InvalidModelConfig(f"{source}: {field}: {why}")

    if config.max_batch_size < 0:
        raise fail("max_batch_size", f"must be >= 0, got {config.max_batch_size}")
    for kind_name, tensors in (("input", config.input), ("output", config.output)):
        seen: set[str] = set()
        for i, tensor in enumerate(tensors):
            where = f"{kind_name}[{i}]"
            if not tensor.name:
                raise fail(f"{where}.name", "must not be empty")
            if tensor.name in seen:
                raise fail(f"{where}.name", f"duplicate {kind_name} name {tensor.name!r}")
            seen.add(tensor.name)
            if tensor.data_type == mc.TYPE_INVALID:
                raise fail(
                    f"{where}.data_type", f"{tensor.name!r} needs a data_type, e.g. TYPE_FP32"
                )
            for d in tensor.dims:
                if d < -1 or d == 0:
                    raise fail(
                        f"{where}.dims",
                        f"{tensor.name!r} has invalid dim {d} (use -1 for variable)",
                    )
    if config.HasField("dynamic_batching"):
        batching = config.dynamic_batching
        if config.max_batch_size == 0:
            raise fail("dynamic_batching", "requires max_batch_size > 0 (the model does not batch)")
        for size in batching.preferred_batch_size:
            if size < 1 or size > config.max_batch_size:
                raise fail(
                    "dynamic_batching.preferred_batch_size",
                    f"{size} must be between 1 and max_batch_size ({config.max_batch_size})",
                )
    for i, group in enumerate(config.instance_group):
        if group.count < 0:
            raise fail(f"instance_group[{i}].count", f"must be >= 1, got {group.count}")
