"""ONNX Runtime's options from the model config, as Triton's onnxruntime backend reads them.

The values are checked before anything loads (bad ones refused naming key and allowed values); a
real session is built with them and its SessionOptions read back (ONNX Runtime exposes them); a
real server serves a model with them and refuses bad ones through the load API.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient
from perfkit_server.backends import InstanceSpec, check_parameters
from perfkit_server.backends.onnxruntime import OnnxRuntimeBackend
from perfkit_server.backends.onnxruntime_options import OrtOptions, parse
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import InferenceServerException

from perfkit.model_repo.config import config_to_json, load_config
from tests.server import models
from tests.server.helpers import fp32_input

KNOBS = """
parameters { key: "execution_mode" value: { string_value: "1" } }
parameters { key: "intra_op_thread_count" value: { string_value: "2" } }
parameters { key: "inter_op_thread_count" value: { string_value: "3" } }
parameters { key: "enable_mem_arena" value: { string_value: "false" } }
parameters { key: "enable_mem_pattern" value: { string_value: "Off" } }
optimization { graph { level: 2 } }
"""


def _config(text: str = "") -> Any:
    config = mc.ModelConfig(name="m")
    from google.protobuf import text_format

    text_format.Parse(text, config)
    return config


def _param(key: str, value: str) -> str:
    return f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}'


def test_defaults_are_ort_defaults():
    assert parse(_config(), "cfg") == OrtOptions()


def test_knobs_parse_as_triton_reads_them():
    options = parse(_config(KNOBS), "cfg")
    assert options.parallel
    assert (options.intra_op_threads, options.inter_op_threads) == (2, 3)
    assert options.graph_level == "ORT_DISABLE_ALL"
    assert (options.mem_arena, options.mem_pattern) == (False, False)
    assert options.run_entries == {}


@pytest.mark.parametrize(
    ("level", "name"),
    [
        (-1, "ORT_ENABLE_BASIC"),
        (0, "ORT_ENABLE_ALL"),
        (1, "ORT_ENABLE_EXTENDED"),
        (2, "ORT_DISABLE_ALL"),
    ],
)
def test_graph_levels_map_as_tritons_onnxruntime_backend(level, name):
    assert parse(_config(f"optimization {{ graph {{ level: {level} }} }}"), "c").graph_level == name


def test_tensorrt_accelerator_maps_to_ort_provider_options():
    config = _config(
        """optimization { execution_accelerators { gpu_execution_accelerator [ {
             name: "tensorrt"
             parameters { key: "precision_mode" value: "FP16" }
             parameters { key: "max_workspace_size_bytes" value: "1073741824" }
             parameters { key: "trt_engine_cache_enable" value: "true" }
             parameters { key: "trt_engine_cache_path" value: "trt_cache" }
             parameters { key: "int8_use_native_calibration_table" value: "0" }
           }, { name: "cuda" parameters { key: "use_tf32" value: "0" } } ] } }"""
        + _param("cudnn_conv_algo_search", "1")
    )
    options = parse(config, "cfg")
    assert options.tensorrt == {
        "trt_fp16_enable": "1",
        "trt_max_workspace_size": "1073741824",
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": "trt_cache",
        "trt_int8_use_native_calibration_table": "0",
    }
    assert options.cuda == {"cudnn_conv_algo_search": "HEURISTIC", "use_tf32": "0"}


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (_param("execution_mode", "7"), ["parameters['execution_mode']", "'7'", "0 or 1"]),
        (_param("execution_mode", "par"), ["execution_mode", "not an integer", "0 or 1"]),
        (_param("intra_op_thread_count", "-2"), ["intra_op_thread_count", "0 (ONNX Runtime's"]),
        (_param("enable_mem_arena", "maybe"), ["enable_mem_arena", "true/on/1 or false/off/0"]),
        (_param("cudnn_conv_algo_search", "3"), ["cudnn_conv_algo_search", "0, 1 or 2"]),
        (_param("arena_extend_strategy", "2"), ["arena_extend_strategy", "0 or 1"]),
        (_param("memory.enable_memory_arena_shrinkage", "all"), ["'cpu:0;gpu:0'"]),
        ("optimization { graph { level: 5 } }", ["graph.level: 5", "-1 (basic)", "2 (disable"]),
        (
            'optimization { execution_accelerators { gpu_execution_accelerator [ { name: "tensorrt"'
            ' parameters { key: "precision_mode" value: "FP64" } } ] } }',
            ["gpu_execution_accelerator[0]", "precision_mode", "FP32, FP16, BF16, INT8"],
        ),
        (
            'optimization { execution_accelerators { gpu_execution_accelerator [ { name: "tensorrt"'
            ' parameters { key: "trt_engine_cache_path" value: "/tmp/x" } } ] } }',
            ["trt_engine_cache_path", "relative directory inside the model directory"],
        ),
        (
            'optimization { execution_accelerators { gpu_execution_accelerator [ { name: "tensorrt"'
            ' parameters { key: "trt_extra_plugin_lib_paths" value: "x.so" } } ] } }',
            ["trt_extra_plugin_lib_paths", "not supported"],
        ),
        (
            'optimization { execution_accelerators { gpu_execution_accelerator [ { name: "tensorrt"'
            ' parameters { key: "speed" value: "max" } } ] } }',
            ["'speed'", "unknown parameter", "precision_mode"],
        ),
        (
            'optimization { execution_accelerators { gpu_execution_accelerator [ { name: "cuda"'
            ' parameters { key: "device_id" value: "1" } } ] } }',
            ["unknown CUDA provider option 'device_id'"],
        ),
        (
            'optimization { execution_accelerators { gpu_execution_accelerator [ { name: "x" } ] } }',
            ["unknown execution accelerator 'x'", "'tensorrt' and 'cuda'"],
        ),
        (
            'optimization { execution_accelerators { cpu_execution_accelerator [ { name: "dnnl" } ] } }',
            ["cpu_execution_accelerator[0]", "'dnnl'", "'openvino'"],
        ),
    ],
)
def test_bad_values_are_refused_naming_key_and_allowed_values(text, words):
    with pytest.raises(ValueError, match=r"^cfg: ") as info:
        check_parameters(_config(text), "onnxruntime", "cfg")
    for word in words:
        assert word in str(info.value)


def test_custom_op_libraries_are_refused():
    config = _config('model_operations { op_library_filename: "/tmp/evil.so" }')
    with pytest.raises(ValueError, match="op_library_filename"):
        check_parameters(config, "onnxruntime", "cfg")


def _spec(repo: Path, text: str, kind: str = "KIND_CPU", device: int = 0) -> InstanceSpec:
    model_dir = models.add_sub(repo, "add_sub", config_extra=text)
    config = load_config(model_dir / "config.pbtxt")
    return InstanceSpec("add_sub", 1, model_dir / "1", config, 0, 1, kind, device)


def test_session_runs_with_the_options(tmp_path):
    backend = OnnxRuntimeBackend(_spec(tmp_path, KNOBS))
    try:
        options = backend._session.get_session_options()
        assert options.execution_mode == ort.ExecutionMode.ORT_PARALLEL
        assert (options.intra_op_num_threads, options.inter_op_num_threads) == (2, 3)
        assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        assert (options.enable_cpu_mem_arena, options.enable_mem_pattern) == (False, False)
        a = np.ones((2, 16), np.float32)
        out = backend.infer({"INPUT0": a, "INPUT1": a})
        np.testing.assert_array_equal(out["OUTPUT1"], np.zeros_like(a))
    finally:
        backend.close()


def test_arena_shrinkage_runs_and_needs_the_arena(tmp_path):
    shrink = _param("memory.enable_memory_arena_shrinkage", "cpu:0")
    backend = OnnxRuntimeBackend(_spec(tmp_path, shrink))
    try:
        a = np.ones((2, 16), np.float32)
        np.testing.assert_array_equal(backend.infer({"INPUT0": a, "INPUT1": a})["OUTPUT0"], 2 * a)
    finally:
        backend.close()
    with pytest.raises(ValueError, match="enable_mem_arena"):
        parse(_config(shrink + _param("enable_mem_arena", "0")), "cfg")


def test_defaults_keep_the_cpu_fast_path(tmp_path):
    backend = OnnxRuntimeBackend(_spec(tmp_path, ""))
    try:
        options = backend._session.get_session_options()
        assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
        assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        assert backend.may_block is False
    finally:
        backend.close()


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(), reason="this onnxruntime has CUDA"
)
def test_a_gpu_instance_without_the_cuda_provider_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no CUDAExecutionProvider") as info:
        OnnxRuntimeBackend(_spec(tmp_path, "", kind="KIND_GPU", device=1))
    assert "pip install 'perfkit[gpu]'" in str(info.value)
    assert "GPU 1" in str(info.value)


@pytest.mark.skipif(
    "OpenVINOExecutionProvider" in ort.get_available_providers(), reason="OpenVINO is here"
)
def test_openvino_without_its_provider_is_refused(tmp_path):
    text = 'optimization { execution_accelerators { cpu_execution_accelerator [ { name: "openvino" } ] } }'
    with pytest.raises(ValueError, match="no OpenVINOExecutionProvider"):
        OnnxRuntimeBackend(_spec(tmp_path, text))


def test_server_serves_with_knobs_and_refuses_bad_values(perfkit_server, tmp_path):
    models.add_sub(tmp_path, "add_sub", config_extra=KNOBS)
    server = perfkit_server(tmp_path, "--model-control-mode=explicit", "--load-model=add_sub")
    client = httpclient.InferenceServerClient(server.http_url)
    a = np.arange(32, dtype=np.float32).reshape(2, 16)
    b = np.ones((2, 16), np.float32)
    result = client.infer(
        "add_sub", [fp32_input(httpclient, "INPUT0", a), fp32_input(httpclient, "INPUT1", b)]
    )
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    config = load_config(tmp_path / "add_sub" / "config.pbtxt")
    config.parameters["execution_mode"].string_value = "7"
    with pytest.raises(InferenceServerException) as info:
        client.load_model("add_sub", config=json.dumps(config_to_json(config)))
    assert info.value.status() == "400"
    message = str(info.value.message())
    assert "parameters['execution_mode']" in message
    assert "allowed: 0 or 1" in message
    assert client.is_model_ready("add_sub")  # the loaded version keeps serving
    client.infer(
        "add_sub", [fp32_input(httpclient, "INPUT0", a), fp32_input(httpclient, "INPUT1", b)]
    )
