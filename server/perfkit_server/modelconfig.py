"""Triton's normalization of a loaded model config, and its JSON form with every default spelled out.

Triton serves the *normalized* config (GET /v2/models/{m}/config, gRPC ModelConfig): version_policy,
instance group names and kinds, preferred batch size and optimization filled in, and over HTTP
every field including default-valued ones. The pure config.pbtxt helpers live in
perfkit.model_repo.config; this module adds only what a server does on load.
"""

from __future__ import annotations

import inspect
from typing import Any

from google.protobuf import descriptor, json_format
from tritonclient.grpc import model_config_pb2 as mc

_INT64 = {
    descriptor.FieldDescriptor.TYPE_INT64,
    descriptor.FieldDescriptor.TYPE_UINT64,
    descriptor.FieldDescriptor.TYPE_SINT64,
    descriptor.FieldDescriptor.TYPE_FIXED64,
    descriptor.FieldDescriptor.TYPE_SFIXED64,
}
_DEFAULT_FILENAMES = {"onnxruntime": "model.onnx"}
# protobuf >= 5.26 renamed including_default_value_fields.
_DEFAULTS_KW = (
    "always_print_fields_with_no_presence"
    if "always_print_fields_with_no_presence"
    in inspect.signature(json_format.MessageToDict).parameters
    else "including_default_value_fields"
)


def normalize(config: Any, backend: str) -> None:
    """Fill in what Triton fills in on load (in place)."""
    if not config.HasField("version_policy"):
        config.version_policy.latest.num_versions = 1
    if not config.instance_group:
        config.instance_group.add()
    for index, group in enumerate(config.instance_group):
        if not group.name:
            group.name = f"{config.name}_{index}"
        if group.count < 1:
            group.count = 1
        if group.kind == mc.ModelInstanceGroup.KIND_AUTO:
            group.kind = mc.ModelInstanceGroup.KIND_CPU
    if config.HasField("dynamic_batching") and not config.dynamic_batching.preferred_batch_size:
        config.dynamic_batching.preferred_batch_size.append(config.max_batch_size)
    if not config.HasField("optimization"):
        config.optimization.input_pinned_memory.enable = True
        config.optimization.output_pinned_memory.enable = True
    if not config.default_model_filename and backend in _DEFAULT_FILENAMES:
        config.default_model_filename = _DEFAULT_FILENAMES[backend]


def config_json(config: Any) -> dict[str, Any]:
    """Triton's HTTP JSON of a config: every field, defaults included, 64-bit ints as numbers."""
    options: dict[str, Any] = {"preserving_proto_field_name": True, _DEFAULTS_KW: True}
    obj = json_format.MessageToDict(config, **options)
    return _ints(config.DESCRIPTOR, obj)


def _ints(message: Any, obj: dict[str, Any]) -> dict[str, Any]:
    # json_format writes 64-bit integers as strings; Triton's JSON has numbers.
    for key, value in obj.items():
        field = message.fields_by_name.get(key)
        if field is None:
            continue
        if field.type == descriptor.FieldDescriptor.TYPE_MESSAGE:
            sub = field.message_type
            if sub.GetOptions().map_entry:
                value_field = sub.fields_by_name["value"]
                if value_field.type == descriptor.FieldDescriptor.TYPE_MESSAGE:
                    for item in value.values():
                        _ints(value_field.message_type, item)
            elif isinstance(value, list):
                for item in value:
                    _ints(sub, item)
            else:
                _ints(sub, value)
        elif field.type in _INT64:
            obj[key] = [int(v) for v in value] if isinstance(value, list) else int(value)
    return obj
