"""Backend registry: picks the backend class for a model config (platform / backend field)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from perfkit_server.backends.base import Backend, InstanceSpec

# Triton's platforms and the backends that serve them (and the platform a backend reports).
PLATFORMS = {
    "onnxruntime_onnx": "onnxruntime",
    "pytorch_libtorch": "pytorch",
    "tensorrt_plan": "tensorrt",
}
# The model file a version directory holds for each backend (`default_model_filename` overrides).
DEFAULT_FILENAMES = {"onnxruntime": "model.onnx", "pytorch": "model.pt", "tensorrt": "model.plan"}


def backend_name(config: Any, model_dir: Path | None = None) -> str:
    """Normalized backend name of a config: "onnxruntime", "pytorch", "tensorrt" or
    "perfkit_identity".

    With neither `backend` nor `platform` set, a version directory holding a model.onnx,
    model.pt or model.plan names the backend (Triton infers it from the model file the same way).
    """
    if config.backend:
        return str(config.backend)
    if config.platform:
        return PLATFORMS.get(str(config.platform), str(config.platform))
    if model_dir is not None:
        for name, filename in DEFAULT_FILENAMES.items():
            if any(model_dir.glob(f"*/{filename}")):
                return name
    return ""


def platform_of(config: Any) -> str:
    """The platform Triton reports for a config: its own, or the one its backend serves."""
    if config.platform:
        return str(config.platform)
    by_backend = {backend: platform for platform, backend in PLATFORMS.items()}
    return by_backend.get(str(config.backend), str(config.backend))


# Each backend's per-instance thread knobs (integer config parameters), capped on load.
THREAD_PARAMETERS: dict[str, tuple[str, ...]] = {
    "onnxruntime": ("intra_op_thread_count", "inter_op_thread_count"),
}


def check_parameters(config: Any, name: str, source: str) -> None:
    """Refuse the backend parameters no load may set (ValueError naming the key)."""
    if name == "perfkit_identity":
        from perfkit_server.backends.identity import check_parameters as check_identity

        check_identity(config, source)


BACKENDS = ("onnxruntime", "pytorch", "tensorrt", "perfkit_identity")


def known_backend(name: str) -> bool:
    """Whether this server can load models of backend `name`."""
    return name in BACKENDS


def create_backend(spec: InstanceSpec) -> Backend:
    """Load one instance. Runs in a worker thread; raises on any load failure. Each backend's
    module is imported here, on first use: torch and tensorrt are optional."""
    name = backend_name(spec.config)
    if name == "onnxruntime":
        from perfkit_server.backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(spec)
    if name == "pytorch":
        from perfkit_server.backends.pytorch import PyTorchBackend

        return PyTorchBackend(spec)
    if name == "tensorrt":
        from perfkit_server.backends.tensorrt import TensorRTBackend

        return TensorRTBackend(spec)
    if name == "perfkit_identity":
        from perfkit_server.backends.identity import IdentityBackend

        return IdentityBackend(spec)
    raise ValueError(f"unsupported backend {name!r}; this server runs {', '.join(BACKENDS)}")


__all__ = [
    "BACKENDS",
    "DEFAULT_FILENAMES",
    "PLATFORMS",
    "THREAD_PARAMETERS",
    "Backend",
    "InstanceSpec",
    "backend_name",
    "check_parameters",
    "create_backend",
    "known_backend",
    "platform_of",
]
