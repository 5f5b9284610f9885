"""The TensorRT plan backend (platform tensorrt_plan, model.plan).

Here (no GPU, no tensorrt) a plan model's load fails naming the `gpu` extra, and the server keeps
serving its other models. The `gpu` test builds a real engine from the ONNX add_sub with the
TensorRT builder, serves it and checks its outputs; it runs only in `make gpu-check`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from perfkit_server.backends import InstanceSpec
from perfkit_server.backends.tensorrt import TensorRTBackend

from perfkit.model_repo.config import load_config
from tests.server import models
from tests.server.helpers import fp32_input

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
INSTALL = "pip install 'perfkit[gpu]'"
no_tensorrt = pytest.mark.skipif(HAS_TENSORRT, reason="tensorrt is installed here")


def _plan_model(repo: Path, name: str, groups: str = "", plan: bytes = b"not an engine") -> Path:
    model_dir = repo / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "1" / "model.plan").write_bytes(plan)
    models.write_config(
        repo,
        name,
        f"""name: "{name}"
platform: "tensorrt_plan"
max_batch_size: 8
input [
  {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] }},
  {{ name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] }}
]
output [
  {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] }},
  {{ name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 16 ] }}
]
{groups}
""",
    )
    return model_dir


def _add_sub(client: httpclient.InferenceServerClient, name: str) -> None:
    a = np.arange(32, dtype=np.float32).reshape(2, 16)
    b = np.full((2, 16), 3, dtype=np.float32)
    result = client.infer(
        name, [fp32_input(httpclient, "INPUT0", a), fp32_input(httpclient, "INPUT1", b)]
    )
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_allclose(result.as_numpy("OUTPUT1"), a - b)


@no_tensorrt
def test_plan_model_without_tensorrt_names_the_extra(perfkit_server, tmp_path, fake_nvml):
    models.add_sub(tmp_path, "add_sub", config_extra="instance_group [ { kind: KIND_CPU } ]")
    _plan_model(tmp_path, "trt_gpu", "instance_group [ { kind: KIND_GPU count: 2 } ]")
    _plan_model(tmp_path, "trt_auto")
    server = perfkit_server(tmp_path, env=fake_nvml.env())
    client = httpclient.InferenceServerClient(server.http_url)
    _add_sub(client, "add_sub")
    index = {e["name"]: e for e in client.get_model_repository_index()}
    gpu = index["trt_gpu"]["reason"]
    assert "instance group 'trt_gpu_0' (instance_group[0]) of model 'trt_gpu'" in gpu
    assert "backend 'tensorrt' needs the tensorrt package" in gpu
    assert INSTALL in gpu
    # Two FAKE GPUs, but no tensorrt: KIND_AUTO is KIND_CPU, which a plan cannot run on.
    auto = index["trt_auto"]["reason"]
    assert "backend 'tensorrt' runs only on a GPU (KIND_GPU)" in auto
    assert INSTALL in auto
    assert not client.is_model_ready("trt_gpu")
    assert grpcclient.InferenceServerClient(server.grpc_url).is_model_ready("add_sub")


@no_tensorrt
def test_backend_without_tensorrt_names_the_extra(tmp_path):
    model_dir = _plan_model(tmp_path, "p")
    config = load_config(model_dir / "config.pbtxt")
    spec = InstanceSpec("p", 1, model_dir / "1", config, 0, 1, "KIND_GPU", 0)
    with pytest.raises(ValueError, match="needs the tensorrt package") as info:
        TensorRTBackend(spec)
    assert INSTALL in str(info.value)


def test_backend_refuses_a_cpu_instance(tmp_path):
    model_dir = _plan_model(tmp_path, "p")
    config = load_config(model_dir / "config.pbtxt")
    spec = InstanceSpec("p", 1, model_dir / "1", config, 0, 1, "KIND_CPU", 0)
    with pytest.raises(ValueError, match=r"runs only on a GPU \(KIND_GPU\), not KIND_CPU"):
        TensorRTBackend(spec)


def _build_add_sub_plan(onnx_path: Path) -> bytes:
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch always
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(onnx_path.read_bytes()), [
        parser.get_error(i) for i in range(parser.num_errors)
    ]
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    for name in ("INPUT0", "INPUT1"):
        profile.set_shape(name, (1, 16), (4, 16), (8, 16))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    assert plan is not None
    return bytes(plan)


@pytest.mark.gpu
def test_real_engine_served_on_the_gpu(perfkit_server, tmp_path):
    pytest.importorskip("tensorrt")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    onnx_dir = models.add_sub(tmp_path / "onnx", "add_sub")
    plan = _build_add_sub_plan(onnx_dir / "1" / "model.onnx")
    repo = tmp_path / "repo"
    _plan_model(repo, "trt", "instance_group [ { kind: KIND_GPU count: 2 } ]", plan=plan)
    _plan_model(repo, "trt_auto", plan=plan)
    server = perfkit_server(repo)
    client = httpclient.InferenceServerClient(server.http_url)
    for name in ("trt", "trt_auto"):
        _add_sub(client, name)
    [group] = client.get_model_config("trt_auto")["instance_group"]
    assert group["kind"] == "KIND_GPU"
    assert group["gpus"] == list(range(torch.cuda.device_count()))
