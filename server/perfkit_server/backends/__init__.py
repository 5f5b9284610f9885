"""Backend registry: picks the backend class for a model config (platform / backend field), and
says what the host offers a backend (visible GPUs, whether the backend can use one).

torch, onnxruntime and tensorrt are imported lazily, inside the functions that need them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from perfkit.nvml import visible_gpus
from perfkit_server.backends.base import Backend, InstanceSpec

if TYPE_CHECKING:  # placement imports tritonclient.grpc: ~0.4 s a python stub need not pay
    from perfkit_server.placement import Host

# Triton's platforms and the backends that serve them (and the platform a backend reports).
PLATFORMS = {
    "onnxruntime_onnx": "onnxruntime",
    "pytorch_libtorch": "pytorch",
    "tensorrt_plan": "tensorrt",
}
# The model file a version directory holds for each backend (`default_model_filename` overrides).
DEFAULT_FILENAMES = {
    "onnxruntime": "model.onnx",
    "pytorch": "model.pt",
    "tensorrt": "model.plan",
    "python": "model.py",
}


def backend_name(config: Any, model_dir: Path | None = None) -> str:
    """Normalized backend name of a config: "onnxruntime", "pytorch", "tensorrt", "python",
    "perfkit_identity" or "perfkit_repeat".

    With neither `backend` nor `platform` set, a version directory holding a model.onnx,
    model.pt, model.plan or model.py names the backend (Triton infers it from the model file the
    same way, in that order).
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
    "pytorch": ("INTRA_OP_THREAD_COUNT", "INTER_OP_THREAD_COUNT"),
}


def check_parameters(config: Any, name: str, source: str) -> None:
    """Refuse the backend parameters no load may set or no backend reads right (ValueError naming
    the key, the value and what is allowed)."""
    if name == "perfkit_identity":
        from perfkit_server.backends.identity import check_parameters as check_identity

        check_identity(config, source)
    if name == "onnxruntime":
        from perfkit_server.backends.onnxruntime_options import parse

        parse(config, source)
    if name == "python":
        from perfkit_server.backends.python.backend import check_parameters as check_python

        check_python(config, source)
    if config.HasField("model_operations") and config.model_operations.op_library_filename:
        raise ValueError(
            f"{source}: model_operations.op_library_filename: custom operation libraries are not "
            "loaded by this server (a config may not name code to load)"
        )
    check_decoupled(config, name, source)


# Backends whose models may be decoupled (they implement `execute_decoupled`, see base.py).
DECOUPLED_BACKENDS = frozenset({"perfkit_repeat", "python"})


def check_decoupled(config: Any, name: str, source: str) -> None:
    """Refuse `model_transaction_policy { decoupled: true }` for a backend that answers each
    request once (naming the field, never ignoring it)."""
    if config.model_transaction_policy.decoupled and name not in DECOUPLED_BACKENDS:
        raise ValueError(
            f"{source}: model_transaction_policy.decoupled: backend '{name}' sends one response "
            f"per request and cannot serve a decoupled model (backends that can: "
            f"{', '.join(sorted(DECOUPLED_BACKENDS))})"
        )


# Backends that run only on a GPU (Triton's tensorrt backend refuses KIND_CPU).
GPU_ONLY = frozenset({"tensorrt"})
INSTALL_GPU = "pip install 'perfkit[gpu]'"
_TORCH_CUDA = "install a CUDA build of torch (https://pytorch.org/get-started/locally/)"


def _torch_cuda_missing(backend: str) -> str | None:
    try:
        import torch
    except ImportError:
        return f"backend '{backend}' needs torch with CUDA, and torch is not installed"
    if torch.cuda.is_available():
        return None
    build = "is a CPU-only build" if torch.version.cuda is None else "finds no CUDA device"
    return f"backend '{backend}' needs torch with CUDA: torch {torch.__version__} {build}"


def gpu_unavailable_reason(backend: str) -> str | None:
    """Why `backend` cannot run an instance on a GPU here (what is missing and how to get it), or
    None when it can. Imports the backend's library; a visible GPU is checked apart (probe_host)."""
    if backend == "python":
        return None  # as Triton's: the model's own code uses the device it is given
    if backend == "onnxruntime":
        import onnxruntime as ort

        providers = ort.get_available_providers()
        if "CUDAExecutionProvider" in providers:
            return None
        return (
            f"backend 'onnxruntime' has no CUDA execution provider (onnxruntime {ort.__version__} "
            f"offers {', '.join(providers)}): {INSTALL_GPU} (onnxruntime-gpu, in place of "
            "onnxruntime)"
        )
    if backend == "pytorch":
        missing = _torch_cuda_missing(backend)
        return None if missing is None else f"{missing}; {_TORCH_CUDA}"
    if backend == "tensorrt":
        try:
            import tensorrt  # noqa: F401
        except (ImportError, OSError) as exc:
            return f"backend 'tensorrt' needs the tensorrt package ({exc}): {INSTALL_GPU}"
        # The engine's device buffers and CUDA stream are torch's (backends/tensorrt.py).
        missing = _torch_cuda_missing(backend)
        return None if missing is None else f"{missing}; {INSTALL_GPU}"
    return f"backend '{backend}' runs on the CPU only"


def _visible() -> tuple[tuple[int, ...], str]:
    """The visible CUDA device ids (NVML read once), and why there are none."""
    gpus = tuple(g.device_id for g in visible_gpus())
    shown = os.environ.get("CUDA_VISIBLE_DEVICES")
    if shown is not None:
        return gpus, f"no GPU is visible (NVML found none with CUDA_VISIBLE_DEVICES={shown!r})"
    return gpus, "no GPU is visible (NVML found none: no NVIDIA driver or GPU on this host)"


def probe_host(config: Any, backend: str) -> Host:
    """What this host offers `backend` for `config`'s instance groups: NVML is read once, and the
    backend's GPU support is asked for (importing its library) only when a group may need it."""
    from tritonclient.grpc import model_config_pb2 as mc

    from perfkit_server.placement import Host

    gpus, no_gpu = _visible()
    kinds = {g.kind for g in config.instance_group} or {mc.ModelInstanceGroup.KIND_AUTO}
    wants = (
        backend in GPU_ONLY
        or mc.ModelInstanceGroup.KIND_GPU in kinds
        or (bool(gpus) and mc.ModelInstanceGroup.KIND_AUTO in kinds)
    )
    return Host(
        gpus=gpus,
        no_gpu=no_gpu,
        backend_gpu=gpu_unavailable_reason(backend) if wants else None,
        backend_cpu=backend not in GPU_ONLY,
    )


BACKENDS = ("onnxruntime", "pytorch", "tensorrt", "python", "perfkit_identity", "perfkit_repeat")


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
    if name == "python":
        from perfkit_server.backends.python.backend import PythonBackend

        return PythonBackend(spec)
    if name == "perfkit_identity":
        from perfkit_server.backends.identity import IdentityBackend

        return IdentityBackend(spec)
    if name == "perfkit_repeat":
        from perfkit_server.backends.repeat import RepeatBackend

        return RepeatBackend(spec)
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
    "gpu_unavailable_reason",
    "known_backend",
    "platform_of",
    "probe_host",
]
