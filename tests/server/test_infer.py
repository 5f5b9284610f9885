"""tritonclient HTTP and gRPC, sync and aio, get the outputs ONNX Runtime computes directly."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio

from tests.fixtures.server import ServerHandle, start_server
from tests.server import models

MODELS = {"identity": (16,), "add_sub": (16,), "mlp": (32,)}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    models.identity_onnx(root)
    models.add_sub(root)
    models.mlp(root)  # no config.pbtxt: completed from the ONNX graph
    return root


@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    log = tmp_path_factory.mktemp("log") / "server.log"
    with start_server(repo, log_path=log) as handle:
        yield handle


def _inputs(name: str, batch: int) -> dict[str, Any]:
    rng = np.random.default_rng(batch)
    shape = (batch, *MODELS[name])
    names = ["INPUT0", "INPUT1"] if name == "add_sub" else ["INPUT0"]
    return {n: rng.standard_normal(shape).astype(np.float32) for n in names}


def _expected(repo: Path, name: str, feed: dict[str, Any]) -> dict[str, Any]:
    session = ort.InferenceSession(str(repo / name / "1" / "model.onnx"))
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed), strict=True))


def _build(module: Any, feed: dict[str, Any], binary: bool = True) -> list[Any]:
    inputs = []
    for n, a in feed.items():
        inp = module.InferInput(n, list(a.shape), "FP32")
        if module is httpclient or module is httpaio:
            inp.set_data_from_numpy(a, binary_data=binary)
        else:
            inp.set_data_from_numpy(a)
        inputs.append(inp)
    return inputs


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("binary", [True, False])
def test_http_sync(server, repo, model, binary):
    client = httpclient.InferenceServerClient(server.http_url)
    feed = _inputs(model, 3)
    expected = _expected(repo, model, feed)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in expected]
    result = client.infer(model, _build(httpclient, feed, binary), outputs=outputs)
    for n, want in expected.items():
        np.testing.assert_allclose(result.as_numpy(n), want, rtol=1e-6)


@pytest.mark.parametrize("model", list(MODELS))
def test_grpc_sync(server, repo, model):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    feed = _inputs(model, 2)
    expected = _expected(repo, model, feed)
    result = client.infer(model, _build(grpcclient, feed))
    for n, want in expected.items():
        np.testing.assert_allclose(result.as_numpy(n), want, rtol=1e-6)
    assert client.is_model_ready(model)
    meta = client.get_model_metadata(model, as_json=True)
    assert meta["inputs"][0]["shape"] == ["-1", str(MODELS[model][0])]


@pytest.mark.parametrize("model", list(MODELS))
async def test_http_aio(server, repo, model):
    client = httpaio.InferenceServerClient(server.http_url)
    try:
        feed = _inputs(model, 1)
        expected = _expected(repo, model, feed)
        result = await client.infer(model, _build(httpaio, feed))
        for n, want in expected.items():
            np.testing.assert_allclose(result.as_numpy(n), want, rtol=1e-6)
        assert await client.is_server_ready()
    finally:
        await client.close()


@pytest.mark.parametrize("model", list(MODELS))
async def test_grpc_aio(server, repo, model):
    client = grpcaio.InferenceServerClient(server.grpc_url)
    try:
        feed = _inputs(model, 4)
        expected = _expected(repo, model, feed)
        result = await client.infer(model, _build(grpcaio, feed))
        for n, want in expected.items():
            np.testing.assert_allclose(result.as_numpy(n), want, rtol=1e-6)
    finally:
        await client.close()


def test_autocompleted_config(server):
    """mlp has no config.pbtxt: inputs, outputs and max_batch_size come from the ONNX graph."""
    config = httpclient.InferenceServerClient(server.http_url).get_model_config("mlp")
    assert config["max_batch_size"] == 4
    assert config["input"][0]["name"] == "INPUT0"
    assert config["input"][0]["dims"] == [32]
    assert config["output"][0]["dims"] == [10]
    assert "dynamic_batching" in config


def test_server_metadata_and_index(server):
    client = httpclient.InferenceServerClient(server.http_url)
    assert client.is_server_live()
    assert client.get_server_metadata()["name"] == "perfkit_server"
    index = {e["name"]: e for e in client.get_model_repository_index()}
    assert {index[m]["state"] for m in MODELS} == {"READY"}
