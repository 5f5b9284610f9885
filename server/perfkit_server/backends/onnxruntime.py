"""ONNX Runtime backend (platform `onnxruntime_onnx` / backend `onnxruntime`), CPU execution provider.

Config parameters (Triton's onnxruntime backend names): `intra_op_thread_count`,
`inter_op_thread_count`; plus `allow_spinning` ("0"/"1", default "0": spinning threads burn the
cores a co-located client needs). The default intra-op thread count splits the machine's cores
between the model's instances.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import onnxruntime as ort

from perfkit.datatypes import BY_V2
from perfkit_server.backends.base import (
    Array,
    InstanceSpec,
    check_file_name,
    int_parameter,
    string_parameter,
)

BACKEND_NAME = "onnxruntime"
DEFAULT_FILENAME = "model.onnx"
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


def _providers(spec: InstanceSpec) -> list[Any]:
    if spec.kind == "KIND_GPU" and "CUDAExecutionProvider" in ort.get_available_providers():
        return [("CUDAExecutionProvider", {"device_id": spec.device_id}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxRuntimeBackend:
    """One ONNX Runtime InferenceSession per model instance."""

    # A CPU session computes and returns; it never waits on anything outside the process.
    may_block = False

    def __init__(self, spec: InstanceSpec) -> None:
        config = spec.config
        source = f"model '{spec.model_name}' config"
        path = model_path(spec.version_dir, config)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: model file not found")
        cores = os.cpu_count() or 1
        default_threads = max(1, cores // max(1, spec.instance_count))
        options = ort.SessionOptions()
        options.intra_op_num_threads = int_parameter(
            config, "intra_op_thread_count", default_threads, source
        )
        options.inter_op_num_threads = int_parameter(config, "inter_op_thread_count", 1, source)
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        spinning = string_parameter(config, "allow_spinning", "0")
        options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
        options.add_session_config_entry("session.inter_op.allow_spinning", spinning)
        options.log_severity_level = 3
        self._session = ort.InferenceSession(str(path), options, providers=_providers(spec))
        graph_outputs = {o.name for o in self._session.get_outputs()}
        self._output_names = [o.name for o in config.output if o.name in graph_outputs] or sorted(
            graph_outputs
        )
        self._run_options = ort.RunOptions()
        # InferenceSession.run validates the feed's names and array ownership in Python (~10 us,
        # the identity model's whole run takes 5) before calling the C session, and retries a
        # failed CUDA run on the CPU. The scheduler has already checked the inputs against the
        # config, and a CPU session has nothing to fall back to: call the C session directly.
        native = getattr(self._session, "_sess", None)
        cpu_only = self._session.get_providers() == ["CPUExecutionProvider"]
        self._run = native.run if native is not None and cpu_only else self._session.run

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
