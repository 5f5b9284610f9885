"""Triton's normalization of a loaded model config, and its JSON form with every default spelled out.

Triton serves the *normalized* config (GET /v2/models/{m}/config, gRPC ModelConfig): version_policy,
instance groups (name, count, the kind KIND_AUTO resolved to, a KIND_GPU group's gpus), preferred
batch size and optimization filled in, and over HTTP every field including default-valued ones.
The pure config.pbtxt helpers live in perfkit.model_repo.config, the instance groups' rules in
perfkit_server.placement; this module adds only what a server does on load.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from perfkit.model_repo.config import config_to_json
from perfkit_server.backends import DEFAULT_FILENAMES
from perfkit_server.placement import Group, apply_groups


def normalize(config: Any, backend: str, groups: Sequence[Group]) -> None:
    """Fill in what Triton fills in on load (in place); `groups` are the instance groups as
    placement.resolve_groups resolved them for this host."""
    if not config.HasField("version_policy"):
        config.version_policy.latest.num_versions = 1
    apply_groups(config, groups)
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
