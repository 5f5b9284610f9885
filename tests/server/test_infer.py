"""tritonclient HTTP and gRPC, sync and aio, get the outputs ONNX Runtime computes directly, for the
zoo models (identity, add_sub, mlp; resnet50 as a slow test)."""

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

from perfkit import zoo
from tests.fixtures.server import ServerHandle, start_server
from tests.server import models

MODELS = ["identity", "add_sub", "mlp"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    for name in MODELS:
        zoo.build(name, root)
    models.mlp(root, "mlp_auto")  # no config.pbtxt: completed from the ONNX graph
    return root


@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    log = tmp_path_factory.mktemp("log") / "server.log"
    with start_server(repo, log_path=log) as handle:
        yield handle


def _session(repo: Path, name: str) -> ort.InferenceSession:
    return ort.InferenceSession(
        str(repo / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )


def _feed(session: ort.InferenceSession, batch: int) -> dict[str, Any]:
    rng = np.random.default_rng(batch)
    return {
        i.name: rng.standard_normal((batch, *i.shape[1:])).astype(np.float32)
        for i in session.get_inputs()
    }


def _expected(session: ort.InferenceSession, feed: dict[str, Any]) -> dict[str, Any]:
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


def _check(result: Any, expected: dict[str, Any]) -> None:
    for n, want in expected.items():
        np.testing.assert_allclose(result.as_numpy(n), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("binary", [True, False])
def test_http_sync(server, repo, model, binary):
    session = _session(repo, model)
    feed = _feed(session, 3)
    expected = _expected(session, feed)
    client = httpclient.InferenceServerClient(server.http_url)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in expected]
    _check(client.infer(model, _build(httpclient, feed, binary), outputs=outputs), expected)


@pytest.mark.parametrize("model", MODELS)
def test_grpc_sync(server, repo, model):
    session = _session(repo, model)
    feed = _feed(session, 2)
    client = grpcclient.InferenceServerClient(server.grpc_url)
    _check(client.infer(model, _build(grpcclient, feed)), _expected(session, feed))
    assert client.is_model_ready(model)
    meta = client.get_model_metadata(model, as_json=True)
    assert meta["inputs"][0]["shape"][0] == "-1"


@pytest.mark.parametrize("model", MODELS)
async def test_http_aio(server, repo, model):
    session = _session(repo, model)
    feed = _feed(session, 1)
    client = httpaio.InferenceServerClient(server.http_url)
    try:
        _check(await client.infer(model, _build(httpaio, feed)), _expected(session, feed))
        assert await client.is_server_ready()
    finally:
        await client.close()


@pytest.mark.parametrize("model", MODELS)
async def test_grpc_aio(server, repo, model):
    session = _session(repo, model)
    feed = _feed(session, 4)
    client = grpcaio.InferenceServerClient(server.grpc_url)
    try:
        _check(await client.infer(model, _build(grpcaio, feed)), _expected(session, feed))
    finally:
        await client.close()


def test_autocompleted_config(server, repo):
    """mlp_auto has no config.pbtxt: inputs, outputs and max_batch_size come from the ONNX graph."""
    client = httpclient.InferenceServerClient(server.http_url)
    config = client.get_model_config("mlp_auto")
    assert config["max_batch_size"] == 4
    assert config["input"][0]["name"] == "INPUT0"
    assert config["input"][0]["dims"] == [32]
    assert config["output"][0]["dims"] == [10]
    assert "dynamic_batching" in config
    session = _session(repo, "mlp_auto")
    feed = _feed(session, 4)
    _check(client.infer("mlp_auto", _build(httpclient, feed)), _expected(session, feed))


def test_server_metadata_and_index(server):
    client = httpclient.InferenceServerClient(server.http_url)
    assert client.is_server_live()
    assert client.get_server_metadata()["name"] == "perfkit_server"
    index = {e["name"]: e for e in client.get_model_repository_index()}
    assert {index[m]["state"] for m in [*MODELS, "mlp_auto"]} == {"READY"}


@pytest.mark.slow
# tritonclient's aio HTTP client itself warns when it posts a body of several MB (client side)
@pytest.mark.filterwarnings("ignore:Sending a large body:ResourceWarning")
async def test_resnet50_all_clients(perfkit_server, tmp_path):
    zoo.build("resnet50", tmp_path)
    server = perfkit_server(tmp_path, timeout=300)
    session = _session(tmp_path, "resnet50")
    feed = _feed(session, 2)
    expected = _expected(session, feed)
    _check(
        httpclient.InferenceServerClient(server.http_url).infer(
            "resnet50", _build(httpclient, feed)
        ),
        expected,
    )
    _check(
        grpcclient.InferenceServerClient(server.grpc_url).infer(
            "resnet50", _build(grpcclient, feed)
        ),
        expected,
    )
    h = httpaio.InferenceServerClient(server.http_url)
    g = grpcaio.InferenceServerClient(server.grpc_url)
    try:
        _check(await h.infer("resnet50", _build(httpaio, feed)), expected)
        _check(await g.infer("resnet50", _build(grpcaio, feed)), expected)
    finally:
        await h.close()
        await g.close()


def test_grpc_stream(server, repo):
    """ModelStreamInfer (perf_analyzer --streaming): one response per request, errors in-stream."""
    session = _session(repo, "add_sub")
    feeds = [_feed(session, b) for b in (1, 2, 3)]
    results: list[Any] = []
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: results.append((result, error)))
    try:
        for feed in feeds:
            client.async_stream_infer("add_sub", _build(grpcclient, feed))
        bad = {"INPUT0": np.zeros((1, 3), np.float32), "INPUT1": np.zeros((1, 3), np.float32)}
        client.async_stream_infer("add_sub", _build(grpcclient, bad))
    finally:
        client.stop_stream()
    assert len(results) == 4
    for (result, error), feed in zip(results[:3], feeds, strict=True):
        assert error is None
        _check(result, _expected(session, feed))
    assert results[3][0] is None
    assert "unexpected shape" in str(results[3][1])
