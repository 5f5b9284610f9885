"""The ONNX Runtime session and provider options a model config asks for, as Triton's onnxruntime
backend reads them (onnxruntime_backend src/onnxruntime.cc), checked before anything loads.

Pure: reads the config and returns an `OrtOptions` value or raises ValueError naming the key, the
value and the values allowed. Imports no onnxruntime; backends/onnxruntime.py applies the value.

- `parameters`: intra_op_thread_count, inter_op_thread_count, execution_mode (0 sequential,
  1 parallel), enable_mem_arena, enable_mem_pattern (true/on/1, false/off/0),
  session.use_device_allocator_for_initializers (0/1), memory.enable_memory_arena_shrinkage
  ("cpu:0;gpu:0"), allow_spinning (perfkit's: 0/1), and for the CUDA provider
  cudnn_conv_algo_search (0 EXHAUSTIVE, 1 HEURISTIC, 2 DEFAULT), gpu_mem_limit (bytes),
  arena_extend_strategy (0 kNextPowerOfTwo, 1 kSameAsRequested), do_copy_in_default_stream.
- `optimization { graph { level } }`: -1 basic, 0 all (the default), 1 extended, 2 disable all.
- `optimization { execution_accelerators { gpu_execution_accelerator [...] } }`: "tensorrt"
  (precision_mode FP32/FP16/BF16/INT8, max_workspace_size_bytes and the trt_* keys, mapped to ONNX
  Runtime's TensorrtExecutionProvider options) and "cuda" (CUDA provider options); applied to
  KIND_GPU instances only, as Triton does. `cpu_execution_accelerator [ { name: "openvino" } ]`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

GRAPH_LEVELS = {
    -1: "ORT_ENABLE_BASIC",
    0: "ORT_ENABLE_ALL",
    1: "ORT_ENABLE_EXTENDED",
    2: "ORT_DISABLE_ALL",
}
_TRUE, _FALSE = ("true", "on", "1"), ("false", "off", "0")
_BOOL_WORDS = "true/on/1 or false/off/0"
_CUDNN_SEARCH = {"0": "EXHAUSTIVE", "1": "HEURISTIC", "2": "DEFAULT"}
_ARENA_STRATEGY = {"0": "kNextPowerOfTwo", "1": "kSameAsRequested"}
_PRECISION = {"FP32": "", "FP16": "trt_fp16_enable", "BF16": "trt_bf16_enable"}
_PRECISION["INT8"] = "trt_int8_enable"
_SHRINK_KEY = "memory.enable_memory_arena_shrinkage"
_SHRINKAGE = re.compile(r"(cpu|gpu):\d+(;(cpu|gpu):\d+)*")

# Triton's TensorRT accelerator keys that ONNX Runtime takes under the same name, by value type.
_TRT_INT = (
    "trt_max_partition_iterations",
    "trt_min_subgraph_size",
    "trt_dla_core",
    "trt_builder_optimization_level",
    "trt_auxiliary_streams",
)
_TRT_BOOL = (
    "trt_dla_enable",
    "trt_engine_cache_enable",
    "trt_dump_subgraphs",
    "trt_force_sequential_engine_build",
    "trt_context_memory_sharing_enable",
    "trt_layer_norm_fp32_fallback",
    "trt_timing_cache_enable",
    "trt_force_timing_cache",
    "trt_detailed_build_log",
    "trt_build_heuristics_enable",
    "trt_sparsity_enable",
    "trt_cuda_graph_enable",
)
_TRT_TEXT = (
    "trt_tactic_sources",
    "trt_profile_min_shapes",
    "trt_profile_max_shapes",
    "trt_profile_opt_shapes",
)
# Directories ONNX Runtime writes engines and timing caches to: relative to the model directory.
TRT_DIRS = ("trt_engine_cache_path", "trt_timing_cache_path")
# Keys that would load code or write files outside the model directory.
_TRT_REFUSED = (
    "trt_extra_plugin_lib_paths",
    "trt_ep_context_file_path",
    "trt_dump_ep_context_model",
)
# The CUDA provider options a "cuda" accelerator may set (device_id and the stream are the server's).
_CUDA_KEYS = (
    "gpu_mem_limit",
    "arena_extend_strategy",
    "cudnn_conv_algo_search",
    "do_copy_in_default_stream",
    "cudnn_conv_use_max_workspace",
    "cudnn_conv1d_pad_to_nc1d",
    "enable_cuda_graph",
    "enable_skip_layer_norm_strict_mode",
    "use_ep_level_unified_stream",
    "use_tf32",
    "prefer_nhwc",
    "tunable_op_enable",
    "tunable_op_tuning_enable",
    "tunable_op_max_tuning_duration_ms",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class OrtOptions:
    """What one model's sessions are built with (thread counts: None means not set)."""

    intra_op_threads: int | None = None
    inter_op_threads: int | None = None
    parallel: bool = False  # execution_mode 1
    graph_level: str = "ORT_ENABLE_ALL"
    mem_arena: bool | None = None
    mem_pattern: bool | None = None
    spinning: str = "0"
    session_entries: dict[str, str] = field(default_factory=dict)
    run_entries: dict[str, str] = field(default_factory=dict)
    cuda: dict[str, str] = field(default_factory=dict)  # CUDA provider options, less device_id
    tensorrt: dict[str, str] | None = None  # TensorRT provider options; None: not asked for
    openvino: bool = False


def _param(config: Any, key: str) -> str | None:
    if key in config.parameters:
        return str(config.parameters[key].string_value)
    return None


def _int(text: str, where: str, allowed: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"{where}: {text!r} is not an integer; allowed: {allowed}") from None


def _bool(text: str, where: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE or word in _FALSE:
        return word in _TRUE
    raise ValueError(f"{where}: {text!r} is not a boolean; allowed: {_BOOL_WORDS}")


def _choice(text: str, choices: dict[str, str], where: str, allowed: str) -> str:
    key = str(_int(text, where, allowed))
    if key not in choices:
        raise ValueError(f"{where}: {text!r} is not allowed; allowed: {allowed}")
    return choices[key]


def parse(config: Any, source: str) -> OrtOptions:
    """The options `config` asks for; ValueError names the key, the value and what is allowed."""

    def where(key: str) -> str:
        return f"{source}: parameters['{key}']"

    def read(key: str, convert: Callable[[str, str], Any]) -> Any:
        text = _param(config, key)
        return None if text is None else convert(text, where(key))

    threads = "0 (ONNX Runtime's default) or more threads"
    mode = read("execution_mode", lambda t, w: _choice(t, {"0": "0", "1": "1"}, w, "0 or 1"))
    spinning = read("allow_spinning", lambda t, w: _choice(t, {"0": "0", "1": "1"}, w, "0 or 1"))
    session_entries: dict[str, str] = {}
    key = "session.use_device_allocator_for_initializers"
    initializers = read(key, lambda t, w: _choice(t, {"0": "0", "1": "1"}, w, "0 or 1"))
    if initializers is not None:
        session_entries[key] = initializers
    run_entries: dict[str, str] = {}
    shrinkage = _param(config, _SHRINK_KEY)
    if shrinkage is not None:
        if not _SHRINKAGE.fullmatch(shrinkage.strip()):
            raise ValueError(
                f"{where(_SHRINK_KEY)}: {shrinkage!r} is not allowed; allowed: devices as 'cpu:0' "
                "or 'cpu:0;gpu:0'"
            )
        run_entries[_SHRINK_KEY] = shrinkage.strip()
    cuda: dict[str, str] = {}
    for key, convert in (
        ("cudnn_conv_algo_search", lambda t, w: _choice(t, _CUDNN_SEARCH, w, "0, 1 or 2")),
        ("arena_extend_strategy", lambda t, w: _choice(t, _ARENA_STRATEGY, w, "0 or 1")),
        ("gpu_mem_limit", lambda t, w: str(_unsigned(t, w))),
        ("do_copy_in_default_stream", lambda t, w: "1" if _bool(t, w) else "0"),
    ):
        value = read(key, convert)
        if value is not None:
            cuda[key] = value
    tensorrt, openvino = _accelerators(config, source, cuda)
    mem_arena = read("enable_mem_arena", _bool)
    if mem_arena is False and "cpu:" in run_entries.get(_SHRINK_KEY, ""):
        raise ValueError(
            f"{where(_SHRINK_KEY)}: {shrinkage!r} shrinks the CPU memory arena, which "
            "parameters['enable_mem_arena'] turns off (ONNX Runtime would fail every run); drop "
            "one of them"
        )
    return OrtOptions(
        intra_op_threads=read("intra_op_thread_count", lambda t, w: _count(t, w, threads)),
        inter_op_threads=read("inter_op_thread_count", lambda t, w: _count(t, w, threads)),
        parallel=mode == "1",
        graph_level=_graph_level(config, source),
        mem_arena=mem_arena,
        mem_pattern=read("enable_mem_pattern", _bool),
        spinning=spinning or "0",
        session_entries=session_entries,
        run_entries=run_entries,
        cuda=cuda,
        tensorrt=tensorrt,
        openvino=openvino,
    )


def _count(text: str, where: str, allowed: str) -> int:
    value = _int(text, where, allowed)
    if value < 0:
        raise ValueError(f"{where}: {value} is not allowed; allowed: {allowed}")
    return value


def _unsigned(text: str, where: str) -> int:
    return _count(text, where, "a byte count, 0 or more")


def _graph_level(config: Any, source: str) -> str:
    level = int(config.optimization.graph.level)
    if level not in GRAPH_LEVELS:
        raise ValueError(
            f"{source}: optimization.graph.level: {level} is not allowed; allowed: -1 (basic), "
            "0 (all, the default), 1 (extended), 2 (disable all)"
        )
    return GRAPH_LEVELS[level]


def _accelerators(
    config: Any, source: str, cuda: dict[str, str]
) -> tuple[dict[str, str] | None, bool]:
    accelerators = config.optimization.execution_accelerators
    tensorrt: dict[str, str] | None = None
    for i, accelerator in enumerate(accelerators.gpu_execution_accelerator):
        where = f"{source}: optimization.execution_accelerators.gpu_execution_accelerator[{i}]"
        params = dict(accelerator.parameters)
        if accelerator.name == "tensorrt":
            tensorrt = _tensorrt(params, where)
        elif accelerator.name == "cuda":
            for key, value in params.items():
                if key not in _CUDA_KEYS:
                    raise ValueError(
                        f"{where}: unknown CUDA provider option '{key}'; allowed: "
                        f"{', '.join(_CUDA_KEYS)}"
                    )
                cuda[key] = value
        else:
            raise ValueError(
                f"{where}: unknown execution accelerator '{accelerator.name}'; the onnxruntime "
                "backend takes 'tensorrt' and 'cuda'"
            )
    openvino = False
    for i, accelerator in enumerate(accelerators.cpu_execution_accelerator):
        where = f"{source}: optimization.execution_accelerators.cpu_execution_accelerator[{i}]"
        if accelerator.name != "openvino":
            raise ValueError(
                f"{where}: unknown execution accelerator '{accelerator.name}'; the onnxruntime "
                "backend takes 'openvino'"
            )
        if accelerator.parameters:
            raise ValueError(f"{where}: the openvino accelerator takes no parameters")
        openvino = True
    return tensorrt, openvino


def _tensorrt(params: dict[str, str], where: str) -> dict[str, str]:
    """Triton's TensorRT accelerator parameters as ONNX Runtime TensorrtExecutionProvider options."""
    options: dict[str, str] = {}
    for key, value in params.items():
        at = f"{where}: parameters['{key}']"
        if key == "precision_mode":
            if value not in _PRECISION:
                raise ValueError(f"{at}: {value!r} is not allowed; allowed: FP32, FP16, BF16, INT8")
            if _PRECISION[value]:
                options[_PRECISION[value]] = "1"
        elif key == "max_workspace_size_bytes":
            options["trt_max_workspace_size"] = str(_unsigned(value, at))
        elif key in _TRT_INT:
            options[key] = str(_int(value, at, "an integer"))
        elif key in _TRT_BOOL or key == "int8_use_native_calibration_table":
            name = "trt_" + key if key.startswith("int8") else key
            options[name] = "1" if _bool(value, at) else "0"
        elif key in _TRT_TEXT:
            options[key] = value
        elif key in TRT_DIRS:
            options[key] = _relative_dir(value, at)
        elif key in ("int8_calibration_table_name", "trt_engine_cache_prefix"):
            name = "trt_" + key if key.startswith("int8") else key
            if not value or value in {".", ".."} or any(c in value for c in "/\\\x00"):
                raise ValueError(f"{at}: {value!r} must be a plain file name (no '/' or '..')")
            options[name] = value
        elif key in _TRT_REFUSED:
            raise ValueError(
                f"{at}: not supported by this server (it would load or write files outside the "
                "model directory)"
            )
        else:
            raise ValueError(
                f"{at}: unknown parameter for the TensorRT execution accelerator; allowed: "
                "precision_mode, max_workspace_size_bytes, int8_calibration_table_name, "
                "int8_use_native_calibration_table, trt_engine_cache_prefix, "
                f"{', '.join((*_TRT_INT, *_TRT_BOOL, *_TRT_TEXT, *TRT_DIRS))}"
            )
    return options


def _relative_dir(value: str, where: str) -> str:
    path = PurePosixPath(value)
    if not value or "\x00" in value or "\\" in value or path.is_absolute() or ".." in path.parts:
        raise ValueError(
            f"{where}: {value!r} must be a relative directory inside the model directory "
            "(no leading '/', no '..')"
        )
    return value
