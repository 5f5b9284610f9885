"""What each format means in a config.pbtxt, and the variant of a config that serves a format.

The formats (a sweep's `[space] formats`, `perfkit.sweepfile.spec.FORMATS`):

    onnxruntime           the ONNX file on ONNX Runtime (CPU, or its CUDA provider on KIND_GPU)
    onnxruntime_tensorrt  the ONNX file on ONNX Runtime's TensorRT execution provider (GPU;
                          optimization.execution_accelerators.gpu_execution_accelerator "tensorrt")
    pytorch               a TorchScript model.pt on the pytorch backend (platform pytorch_libtorch)
    tensorrt              a TensorRT engine model.plan (platform tensorrt_plan; GPU)

"auto" (`AUTO`) stands for every candidate this machine can run that passes its check.

Pure (no I/O, no torch or onnx): `with_format` is called for every trial by the search space.

A format's variant sets the platform (backend cleared), the model file (`default_model_filename`,
empty when the backend's default name is the file), for ONNX Runtime the TensorRT execution
accelerator, and the source's intra-/inter-op thread counts under the other backend's parameter
names (ONNX Runtime's intra_op_thread_count is the pytorch backend's INTRA_OP_THREAD_COUNT); every
other field is kept (a backend ignores the other's parameters, as Triton's do). The model file of a format is fixed by the source config
alone (`model_file`), so the tuner and the files placed in the version directory agree.
"""

from __future__ import annotations

from dataclasses import dataclass

from perfkit.errors import ConfigError
from perfkit.model_repo.config import ModelConfig

AUTO = "auto"

# The model file kinds: what a format's file holds.
ONNX, TORCHSCRIPT, PLAN = "onnx", "torchscript", "plan"


@dataclass(frozen=True, slots=True)
class Format:
    """One format: the platform and backend that serve it and the file it reads."""

    name: str
    platform: str
    backend: str
    # The backend's default file name, and the kind of file it is.
    filename: str
    kind: str
    # ONNX Runtime's GPU execution accelerator, if the format is one.
    accelerator: str | None = None


TABLE: dict[str, Format] = {  # one per name of FORMATS
    "onnxruntime": Format("onnxruntime", "onnxruntime_onnx", "onnxruntime", "model.onnx", ONNX),
    "onnxruntime_tensorrt": Format(
        "onnxruntime_tensorrt", "onnxruntime_onnx", "onnxruntime", "model.onnx", ONNX, "tensorrt"
    ),
    "pytorch": Format("pytorch", "pytorch_libtorch", "pytorch", "model.pt", TORCHSCRIPT),
    "tensorrt": Format("tensorrt", "tensorrt_plan", "tensorrt", "model.plan", PLAN),
}
_BACKEND_OF_PLATFORM = {f.platform: f.backend for f in TABLE.values()}


def backend_of(config: ModelConfig) -> str:
    """The config's backend: its `backend`, else the one its `platform` names ("" for neither)."""
    if config.backend:
        return str(config.backend)
    return _BACKEND_OF_PLATFORM.get(str(config.platform), str(config.platform))


def _accelerators(config: ModelConfig) -> list[str]:
    ea = config.optimization.execution_accelerators
    return [a.name for a in ea.gpu_execution_accelerator]


def format_of(config: ModelConfig) -> str | None:
    """The format a config serves, or None when it is none of `TABLE`'s (python, ensemble, ...)."""
    backend = backend_of(config)
    if backend == "onnxruntime":
        return "onnxruntime_tensorrt" if "tensorrt" in _accelerators(config) else "onnxruntime"
    return backend if backend in ("pytorch", "tensorrt") else None


def config_file(config: ModelConfig) -> str:
    """The model file a config's backend reads in a version directory."""
    fmt = format_of(config)
    default = TABLE[fmt].filename if fmt is not None else ""
    return str(config.default_model_filename) or default


def model_file(source: ModelConfig, fmt: str) -> str:
    """The file `fmt` reads when the model's own config is `source`: the source's own file for a
    format of the same kind, else the format's default name (`model_<format>.<ext>` when the
    source's file has that name already)."""
    own = format_of(source)
    target = TABLE[fmt]
    if own is not None and TABLE[own].kind == target.kind:
        return config_file(source)
    if target.filename != config_file(source):
        return target.filename
    return f"model_{fmt}{target.filename[target.filename.rindex('.') :]}"


def with_format(config: ModelConfig, fmt: str | None) -> ModelConfig:
    """`config` serving `fmt` (None, or the config's own format: `config` itself)."""
    if fmt is None or fmt == format_of(config):
        return config
    target = TABLE[fmt]
    out = ModelConfig()
    out.CopyFrom(config)
    filename = model_file(config, fmt)
    out.backend = ""
    out.platform = target.platform
    out.default_model_filename = "" if filename == target.filename else filename
    _carry_threads(config, out, target.backend)
    # Execution accelerators are ONNX Runtime's here: the ORT formats keep the others, set theirs.
    ea = out.optimization.execution_accelerators
    if target.backend != "onnxruntime":
        out.optimization.ClearField("execution_accelerators")
    else:
        kept = [a for a in ea.gpu_execution_accelerator if a.name != "tensorrt"]
        del ea.gpu_execution_accelerator[:]
        ea.gpu_execution_accelerator.extend(kept)
        if target.accelerator is not None:
            ea.gpu_execution_accelerator.add().name = target.accelerator
        if not ea.gpu_execution_accelerator and not ea.cpu_execution_accelerator:
            out.optimization.ClearField("execution_accelerators")
    if not config.HasField("optimization") and out.optimization.ByteSize() == 0:
        out.ClearField("optimization")
    return out


# The thread counts each backend reads (intra-op, inter-op): a variant in another format keeps the
# source's, so that formats are compared with the same threads.
THREAD_KEYS = {
    "onnxruntime": ("intra_op_thread_count", "inter_op_thread_count"),
    "pytorch": ("INTRA_OP_THREAD_COUNT", "INTER_OP_THREAD_COUNT"),
}


def _carry_threads(source: ModelConfig, out: ModelConfig, backend: str) -> None:
    """Copy the source backend's thread counts to `backend`'s keys (unless `out` sets them)."""
    own = THREAD_KEYS.get(backend_of(source))
    theirs = THREAD_KEYS.get(backend)
    if own is None or theirs is None or own == theirs:
        return
    for key, target in zip(own, theirs, strict=True):
        if key in source.parameters and target not in out.parameters:
            out.parameters[target].string_value = source.parameters[key].string_value


def check_resolved(formats: tuple[str, ...]) -> tuple[str, ...]:
    """`formats` for a search space: "auto" must have been resolved (`perfkit.formats.prepare`)."""
    if AUTO in formats:
        raise ConfigError(
            'space.formats = "auto" stands for the candidates perfkit.formats.prepare finds; '
            "prepare them before building the search space"
        )
    return formats
