"""ONNX Runtime's CUDA and TensorRT providers and the TensorRT plan backend on a real GPU. They
need the `gpu` extra (onnxruntime-gpu, tensorrt): without it each test is skipped saying which
package is missing (the device check's host has neither; these paths are then covered by
reading and by the refusal tests of tests/server)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tritonclient.http as httpclient

from perfkit.model_repo.config import config_to_json, format_config
from tests.gpu import helpers
from tests.gpu.conftest import GpuHost, GpuServer

pytestmark = pytest.mark.gpu


def _providers() -> list[str]:
    try:
        import onnxruntime
    except ImportError:
        return []
    return list(onnxruntime.get_available_providers())


def _need_provider(name: str) -> None:
    if name not in _providers():
        pytest.skip(
            f"ONNX Runtime has no {name} here (providers: {', '.join(_providers()) or 'none'}): "
            "pip install 'perfkit[gpu]' brings onnxruntime-gpu"
        )


@pytest.fixture
def client(gpu_server: GpuServer) -> Iterator[httpclient.InferenceServerClient]:
    c = httpclient.InferenceServerClient(gpu_server.handle.http_url, network_timeout=300.0)
    yield c
    for name in ("mlp", "mlp_plan"):
        try:
            c.unload_model(name)
        except Exception:
            pass
    c.close()


def _cpu_reference(repo: Path, inputs: dict[str, helpers.Array]) -> dict[str, helpers.Array]:
    import onnxruntime

    session = onnxruntime.InferenceSession(
        str(repo / "mlp" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs), strict=True))


def _infer(
    client: httpclient.InferenceServerClient, model: str, inputs: dict[str, helpers.Array]
) -> dict[str, helpers.Array]:
    request = []
    for name, array in inputs.items():
        inp = httpclient.InferInput(name, list(array.shape), "FP32")
        inp.set_data_from_numpy(array)
        request.append(inp)
    result = client.infer(model, request)
    return {o["name"]: result.as_numpy(o["name"]) for o in result.get_response()["outputs"]}


@pytest.mark.parametrize("accelerator", [None, "tensorrt"])
def test_onnxruntime_on_the_gpu_matches_the_cpu(
    gpu_host: GpuHost,
    gpu_server: GpuServer,
    client: httpclient.InferenceServerClient,
    accelerator: str | None,
) -> None:
    _need_provider("CUDAExecutionProvider")
    config = helpers.config(gpu_server.repo, "mlp")
    if accelerator is not None:
        _need_provider("TensorrtExecutionProvider")
        accel = config.optimization.execution_accelerators.gpu_execution_accelerator.add()
        accel.name = accelerator
        accel.parameters["precision_mode"] = "FP32"
    client.load_model("mlp", config=json.dumps(config_to_json(config)))
    inputs = helpers.random_inputs(config, 8, seed=3)
    got, want = _infer(client, "mlp", inputs), _cpu_reference(gpu_server.repo, inputs)
    for name, ref in want.items():
        # CUDA's matmuls may run in TF32: 1 % of the largest value.
        helpers.assert_close(got[name], ref, rel=1e-2, what=f"mlp {name} ({accelerator or 'cuda'})")


def _build_plan(onnx_path: Path, plan_path: Path, input_name: str, dims: tuple[int, ...]) -> None:
    """A TensorRT engine of the ONNX mlp, batch 1..32 (one optimization profile)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch: TensorRT 10's only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise AssertionError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, (1, *dims), (8, *dims), (32, *dims))
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    assert engine is not None, "TensorRT could not build the engine"
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_bytes(bytes(engine))


def test_tensorrt_plan_matches_onnxruntime_cpu(
    gpu_host: GpuHost, gpu_server: GpuServer, client: httpclient.InferenceServerClient
) -> None:
    pytest.importorskip(
        "tensorrt", reason="tensorrt is not installed: pip install 'perfkit[gpu]' brings it"
    )
    repo = gpu_server.repo
    onnx_config = helpers.config(repo, "mlp")
    (inp,) = onnx_config.input
    plan_dir = repo / "mlp_plan"
    if not (plan_dir / "1" / "model.plan").exists():
        _build_plan(
            repo / "mlp" / "1" / "model.onnx",
            plan_dir / "1" / "model.plan",
            inp.name,
            tuple(inp.dims),
        )
    config: Any = helpers.groups_config(onnx_config, [{"kind": "KIND_GPU", "count": 1}])
    config.name, config.platform = "mlp_plan", "tensorrt_plan"
    (plan_dir / "config.pbtxt").write_text(format_config(config))
    client.load_model("mlp_plan")
    inputs = helpers.random_inputs(config, 8, seed=5)
    got, want = _infer(client, "mlp_plan", inputs), _cpu_reference(repo, inputs)
    for name, ref in want.items():
        helpers.assert_close(got[name], ref, rel=1e-2, what=f"mlp_plan {name} (TensorRT)")
