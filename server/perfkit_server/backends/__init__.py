"""Backend registry: picks the backend class for a model config (platform / backend field)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from perfkit_server.backends.base import Backend, InstanceSpec


def backend_name(config: Any, model_dir: Path | None = None) -> str:
    """Normalized backend name of a config: "onnxruntime" or "perfkit_identity".

    With neither `backend` nor `platform` set, a version directory holding a model.onnx means
    onnxruntime (Triton infers the backend from the model file in the same way).
    """
    if config.backend:
        return str(config.backend)
    if config.platform == "onnxruntime_onnx":
        return "onnxruntime"
    if config.platform:
        return str(config.platform)
    if model_dir is not None and any(model_dir.glob("*/model.onnx")):
        return "onnxruntime"
    return ""


# Each backend's per-instance thread knobs (integer config parameters), capped on load.
THREAD_PARAMETERS: dict[str, tuple[str, ...]] = {
    "onnxruntime": ("intra_op_thread_count", "inter_op_thread_count"),
}


def check_parameters(config: Any, name: str, source: str) -> None:
    """Refuse the backend parameters no load may set (ValueError naming the key)."""
    if name == "perfkit_identity":
        from perfkit_server.backends.identity import check_parameters as check_identity

        check_identity(config, source)


def known_backend(name: str) -> bool:
    """Whether this server can load models of backend `name`."""
    return name in ("onnxruntime", "perfkit_identity")


def create_backend(spec: InstanceSpec) -> Backend:
    """Load one instance. Runs in a worker thread; raises on any load failure."""
    name = backend_name(spec.config)
    if name == "onnxruntime":
        from perfkit_server.backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(spec)
    if name == "perfkit_identity":
        from perfkit_server.backends.identity import IdentityBackend

        return IdentityBackend(spec)
    raise ValueError(
        f"unsupported backend {name!r}; this server runs onnxruntime and perfkit_identity"
    )


__all__ = [
    "THREAD_PARAMETERS",
    "Backend",
    "InstanceSpec",
    "backend_name",
    "check_parameters",
    "create_backend",
    "known_backend",
]
