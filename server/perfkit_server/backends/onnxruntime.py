"""ONNX Runtime backend (platform `onnxruntime_onnx` / backend `onnxruntime`).

KIND_CPU instances run on the CPU execution provider (OpenVINO's when the config's
cpu_execution_accelerator asks for it); KIND_GPU instances on the CUDA provider of their GPU, with
TensorRT's in front when a gpu_execution_accelerator "tensorrt" asks for it (onnxruntime-gpu, the
`gpu` extra). The session and provider options come from the config as Triton's onnxruntime
backend reads them (backends/onnxruntime_options.py); `allow_spinning` ("0"/"1", default "0":
spinning threads burn the cores a co-located client needs) is perfkit's own.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import onnxruntime as ort

from perfkit.datatypes import BY_V2
from perfkit_server.backends.base import Array, InstanceSpec, check_file_name
from perfkit_server.backends.onnxruntime_options import TRT_DIRS, OrtOptions
from perfkit_server.backends.onnxruntime_options import parse as parse_options

BACKEND_NAME = "onnxruntime"
DEFAULT_FILENAME = "model.onnx"
INSTALL_GPU = "pip install 'perfkit[gpu]' (onnxruntime-gpu, in place of onnxruntime)"
# Triton's autocomplete default for models whose first dimension is variable.
DEFAULT_MAX_BATCH_SIZE = 4

# ONNX Runtime's type names, keyed through the one datatype table (perfkit.datatypes).
_ORT_TO_V2 = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}
_ORT_TO_CONFIG = {ort_type: BY_V2[v2].config for ort_type, v2 in _ORT_TO_V2.items()}


def model_path(version_dir: Path, config: Any) -> Path:
    """The model file of a version directory (`default_model_filename` or model.onnx).

    The name is checked again here (the registry checks it on load), so that no caller can reach
    a file outside the version directory."""
    name = check_file_name(
        config.default_model_filename or DEFAULT_FILENAME,
        "default_model_filename",
        f"model '{config.name}' config",
    )
    return version_dir / name


def _providers(spec: InstanceSpec, options: OrtOptions) -> list[Any]:
    """The execution providers of one instance, most preferred first (Triton's order: the GPU
    accelerators of a KIND_GPU instance, then the CPU accelerators, then the CPU)."""
    where = f"model '{spec.model_name}' instance {spec.index}"
    available = ort.get_available_providers()

    def need(provider: str, what: str) -> None:
        if provider not in available:
            raise ValueError(
                f"{where}: {what}, but onnxruntime {ort.__version__} has no {provider} (it "
                f"offers {', '.join(available)}); {INSTALL_GPU}"
            )

    providers: list[Any] = []
    if spec.kind == "KIND_GPU":
        device = str(spec.device_id)
        if options.tensorrt is not None:
            need("TensorrtExecutionProvider", "the tensorrt gpu_execution_accelerator is asked for")
            trt = dict(options.tensorrt, device_id=device)
            model_dir = spec.version_dir.parent
            for key in TRT_DIRS:
                if key in trt:
                    trt[key] = str(model_dir / trt[key])
            providers.append(("TensorrtExecutionProvider", trt))
        need("CUDAExecutionProvider", f"it runs on GPU {device} (KIND_GPU)")
        providers.append(("CUDAExecutionProvider", dict(options.cuda, device_id=device)))
    if options.openvino:
        if "OpenVINOExecutionProvider" not in available:
            raise ValueError(
                f"{where}: the openvino cpu_execution_accelerator is asked for, but onnxruntime "
                f"{ort.__version__} has no OpenVINOExecutionProvider; pip install "
                "onnxruntime-openvino (in place of onnxruntime), or remove the accelerator"
            )
        providers.append(("OpenVINOExecutionProvider", {"device_type": "CPU"}))
    providers.append("CPUExecutionProvider")
    return providers


def session_options(options: OrtOptions, instance_count: int) -> Any:
    """ONNX Runtime SessionOptions for one instance. Thread counts left unset split the machine's
    cores between the model's instances (ONNX Runtime's own default takes every core)."""
    cores = os.cpu_count() or 1
    default_threads = max(1, cores // max(1, instance_count))
    session = ort.SessionOptions()
    intra, inter = options.intra_op_threads, options.inter_op_threads
    session.intra_op_num_threads = default_threads if intra is None else intra
    # Inter-op threads run independent nodes in parallel mode only.
    session.inter_op_num_threads = (
        inter if inter is not None else default_threads if options.parallel else 1
    )
    session.execution_mode = (
        ort.ExecutionMode.ORT_PARALLEL if options.parallel else ort.ExecutionMode.ORT_SEQUENTIAL
    )
    session.graph_optimization_level = getattr(ort.GraphOptimizationLevel, options.graph_level)
    if options.mem_arena is not None:
        session.enable_cpu_mem_arena = options.mem_arena
    if options.mem_pattern is not None:
        session.enable_mem_pattern = options.mem_pattern
    session.add_session_config_entry("session.intra_op.allow_spinning", options.spinning)
    session.add_session_config_entry("session.inter_op.allow_spinning", options.spinning)
    for key, value in options.session_entries.items():
        session.add_session_config_entry(key, value)
    session.log_severity_level = 3
    return session


class OnnxRuntimeBackend:
    """One ONNX Runtime InferenceSession per model instance."""

    def __init__(self, spec: InstanceSpec) -> None:
        config = spec.config
        source = f"model '{spec.model_name}' config"
        path = model_path(spec.version_dir, config)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: model file not found")
        options = parse_options(config, source)
        providers = _providers(spec, options)
        self._session = ort.InferenceSession(
            str(path), session_options(options, spec.instance_count), providers=providers
        )
        running = self._session.get_providers()
        for provider in providers[:-1]:
            name = provider[0]
            if name not in running:
                # ONNX Runtime falls back to the CPU with a warning when a provider's libraries
                # (CUDA, cuDNN, TensorRT) fail to load; Triton fails the load instead.
                raise RuntimeError(
                    f"model '{spec.model_name}' instance {spec.index}: {name} did not start on "
                    f"device {spec.device_id} (ONNX Runtime runs it on {', '.join(running)}); "
                    "check the CUDA, cuDNN and TensorRT libraries onnxruntime-gpu needs"
                )
        if spec.kind == "KIND_GPU":
            # InferenceSession.run would rerun a batch whose GPU run failed on the CPU, for good.
            self._session.disable_fallback()
        graph_outputs = {o.name for o in self._session.get_outputs()}
        self._output_names = [o.name for o in config.output if o.name in graph_outputs] or sorted(
            graph_outputs
        )
        self._run_options = ort.RunOptions()
        for key, value in options.run_entries.items():
            self._run_options.add_run_config_entry(key, value)
        # InferenceSession.run validates the feed's names and array ownership in Python (~10 us,
        # the identity model's whole run takes 5) before calling the C session, and retries a
        # failed CUDA run on the CPU. The scheduler has already checked the inputs against the
        # config, and a CPU session has nothing to fall back to: call the C session directly.
        native = getattr(self._session, "_sess", None)
        cpu_only = running == ["CPUExecutionProvider"]
        self._run = native.run if native is not None and cpu_only else self._session.run
        # A CPU session computes and returns; a GPU one waits on its device.
        self.may_block = not cpu_only

    def infer(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        feed = inputs if isinstance(inputs, dict) else dict(inputs)
        results = self._run(self._output_names, feed, self._run_options)
        return dict(zip(self._output_names, results, strict=True))

    def close(self) -> None:
        del self._session


def autocomplete(config: Any, version_dir: Path) -> None:
    """Fill inputs, outputs and max_batch_size from the ONNX graph, as Triton's autocomplete does.

    Only fields the config leaves empty are filled. A model whose every input and output has a
    variable first dimension batches: max_batch_size becomes 4 and dynamic batching is enabled
    when the config names no scheduler.
    """
    from tritonclient.grpc import model_config_pb2 as mc

    path = model_path(version_dir, config)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    graph_inputs = session.get_inputs()
    graph_outputs = session.get_outputs()

    def variable_first(shape: list[Any]) -> bool:
        return bool(shape) and not isinstance(shape[0], int)

    batches = all(variable_first(t.shape) for t in [*graph_inputs, *graph_outputs])
    if config.max_batch_size == 0 and batches and not config.input and not config.output:
        config.max_batch_size = DEFAULT_MAX_BATCH_SIZE
        if not config.HasField("dynamic_batching") and not config.HasField("sequence_batching"):
            config.dynamic_batching.SetInParent()
    skip = 1 if config.max_batch_size > 0 else 0
    for tensors, graph in ((config.input, graph_inputs), (config.output, graph_outputs)):
        if len(tensors):
            continue
        for node in graph:
            tensor = tensors.add()
            tensor.name = node.name
            tensor.data_type = mc.DataType.Value(_ORT_TO_CONFIG.get(node.type, "TYPE_INVALID"))
            tensor.dims.extend(d if isinstance(d, int) and d > 0 else -1 for d in node.shape[skip:])
    if not config.platform and not config.backend:
        config.backend = BACKEND_NAME
    del session
