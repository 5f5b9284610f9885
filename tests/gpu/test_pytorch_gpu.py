"""The PyTorch backend on a real GPU: KIND_GPU instances of the zoo's TorchScript models answer as
torch itself does on CUDA, over HTTP and gRPC."""

from __future__ import annotations

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests.gpu import helpers
from tests.gpu.conftest import GpuServer
from tests.gpu.helpers import Array

pytestmark = pytest.mark.gpu


def _infer_http(
    url: str, model: str, inputs: dict[str, Array], outputs: list[str]
) -> dict[str, Array]:
    client = httpclient.InferenceServerClient(url)
    try:
        req = []
        for name, array in inputs.items():
            inp = httpclient.InferInput(name, list(array.shape), _v2(array))
            inp.set_data_from_numpy(array, binary_data=True)
            req.append(inp)
        res = client.infer(
            model,
            req,
            outputs=[httpclient.InferRequestedOutput(o, binary_data=True) for o in outputs],
        )
        return {o: res.as_numpy(o) for o in outputs}
    finally:
        client.close()


def _infer_grpc(
    url: str, model: str, inputs: dict[str, Array], outputs: list[str]
) -> dict[str, Array]:
    client = grpcclient.InferenceServerClient(url)
    try:
        req = []
        for name, array in inputs.items():
            inp = grpcclient.InferInput(name, list(array.shape), _v2(array))
            inp.set_data_from_numpy(array)
            req.append(inp)
        res = client.infer(
            model, req, outputs=[grpcclient.InferRequestedOutput(o) for o in outputs]
        )
        return {o: res.as_numpy(o) for o in outputs}
    finally:
        client.close()


def _v2(array: Array) -> str:
    from tritonclient.utils import np_to_triton_dtype

    return str(np_to_triton_dtype(array.dtype))


@pytest.mark.parametrize(
    ("model", "protocol", "batch", "rel"),
    [
        # fc_model_pt: the seed's config verbatim (INT64 [-1] in, two FP32 [-1, -1, N] out).
        ("fc_model_pt", "http", 3, 1e-4),
        ("fc_model_pt", "grpc", 5, 1e-4),
        # resnet50 in FP32: cuDNN may pick another algorithm (TF32 convolutions by default) for the
        # server's batch than for torch's here: 1 % of the largest logit.
        ("resnet50_pt", "grpc", 4, 1e-2),
        ("resnet50_pt", "http", 2, 1e-2),
    ],
)
def test_kind_gpu_outputs_match_torch_on_cuda(
    gpu_server: GpuServer, model: str, protocol: str, batch: int, rel: float
) -> None:
    cfg = helpers.config(gpu_server.repo, model)
    inputs = helpers.random_inputs(cfg, batch, seed=batch)
    outputs = [t.name for t in cfg.output]
    infer = _infer_http if protocol == "http" else _infer_grpc
    url = gpu_server.handle.http_url if protocol == "http" else gpu_server.handle.grpc_url
    got = infer(url, model, inputs, outputs)
    want = helpers.torch_reference(
        gpu_server.repo / model / "1" / "model.pt", cfg, inputs, "cuda:0"
    )
    for name in outputs:
        helpers.assert_close(got[name], want[name], rel=rel, what=f"{model} {name} ({protocol})")


def test_the_served_config_says_kind_gpu_on_gpu_0(gpu_server: GpuServer) -> None:
    client = httpclient.InferenceServerClient(gpu_server.handle.http_url)
    try:
        cfg = client.get_model_config("resnet50_pt")
    finally:
        client.close()
    groups = cfg["instance_group"]
    assert [(g["kind"], g.get("count"), g.get("gpus")) for g in groups] == [("KIND_GPU", 1, [0])]
