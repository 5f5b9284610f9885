"""Triton's normalization of a loaded model config, and its JSON form with every default spelled out.

Triton serves the *normalized* config (GET /v2/models/{m}/config, gRPC ModelConfig): version_policy,
instance group names and kinds, preferred batch size and optimization filled in, and over HTTP
every field including default-valued ones. The pure config.pbtxt helpers live in
perfkit.model_repo.config; this module adds only what a server does on load.
"""

from __future__ import annotations

from typing import Any

from tritonclient.grpc import model_config_pb2 as mc

from perfkit.model_repo.config import config_to_json
from perfkit_server.backends import DEFAULT_FILENAMES


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
    if not config.default_model_filename and backend in DEFAULT_FILENAMES:
        config.default_model_filename = DEFAULT_FILENAMES[backend]


def config_json(config: Any) -> dict[str, Any]:
    """Triton's HTTP JSON of a config: every field, defaults included, 64-bit ints as numbers."""
    return config_to_json(config, include_defaults=True)
