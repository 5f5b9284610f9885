"""Every bad input of issue 2 gets a clear Triton-style error, and the server keeps serving."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.fixtures.server import ServerHandle, start_server
from tests.server import models
from tests.server.helpers import fp32_input


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    models.add_sub(root)
    models.write_config(root, "malformed", 'name: "malformed"\nmax_batch_size: "eight"\n')
    (root / "malformed" / "1").mkdir()
    models.add_sub(
        root,
        "invalid",
        config_extra="dynamic_batching { preferred_batch_size: [ 64 ] }",
    )
    return root


@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    log = tmp_path_factory.mktemp("log") / "server.log"
    with start_server(repo, "--model-control-mode=explicit", "--load-model=*", log_path=log) as s:
        yield s


def _post(
    server: ServerHandle, path: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    conn = http.client.HTTPConnection(server.http_url, timeout=10)
    try:
        conn.request("POST", path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    finally:
        conn.close()


def _grpc_infer(server: ServerHandle, request: Any) -> grpc.RpcError:
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request)
    return info.value


def _add_sub_request(model: str = "add_sub", **overrides: Any) -> Any:
    req = service_pb2.ModelInferRequest(model_name=model)
    for name in ("INPUT0", "INPUT1"):
        t = req.inputs.add()
        t.name, t.datatype = name, overrides.get("datatype", "FP32")
        t.shape.extend(overrides.get("shape", [1, 16]))
        req.raw_input_contents.append(overrides.get("raw", np.zeros(16, np.float32).tobytes()))
    return req


def _http_inputs(a: np.ndarray[Any, Any], datatype: str = "FP32") -> list[Any]:
    out = []
    for name in ("INPUT0", "INPUT1"):
        inp = httpclient.InferInput(name, list(a.shape), datatype)
        inp.set_data_from_numpy(a)
        out.append(inp)
    return out


@pytest.fixture(autouse=True)
def still_serving(server: ServerHandle) -> Iterator[None]:
    """After every bad input, the good model still answers correctly on both transports."""
    yield
    assert server.process.poll() is None
    a = np.arange(16, dtype=np.float32).reshape(1, 16)
    for module, url in ((httpclient, server.http_url), (grpcclient, server.grpc_url)):
        client = module.InferenceServerClient(url)
        result = client.infer("add_sub", [fp32_input(module, n, a) for n in ("INPUT0", "INPUT1")])
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), 2 * a)


def test_malformed_and_invalid_configs_fail_alone(server, repo):
    client = httpclient.InferenceServerClient(server.http_url)
    index = {e["name"]: e for e in client.get_model_repository_index()}
    assert index["add_sub"]["state"] == "READY"
    for name, field in (("malformed", "max_batch_size"), ("invalid", "preferred_batch_size")):
        assert index[name]["state"] == "UNAVAILABLE"
        assert str(repo / name / "config.pbtxt") in index[name]["reason"]
        assert field in index[name]["reason"]
        assert not client.is_model_ready(name)
        with pytest.raises(InferenceServerException, match="has no available versions") as info:
            client.infer(name, _http_inputs(np.zeros((1, 16), np.float32)))
        assert info.value.status() == "404"  # Triton's answer for a model that failed to load
        assert _grpc_infer(server, _add_sub_request(name)).code() == grpc.StatusCode.NOT_FOUND
    log = server.log()
    assert "malformed/config.pbtxt" in log
    assert "invalid/config.pbtxt" in log


def test_unknown_model_and_version(server):
    client = httpclient.InferenceServerClient(server.http_url)
    a = np.zeros((1, 16), np.float32)
    for model, version in (("nope", ""), ("add_sub", "7")):
        with pytest.raises(InferenceServerException) as info:
            client.infer(model, _http_inputs(a), model_version=version)
        assert info.value.status() == "404"
        assert model in info.value.message()
        req = _add_sub_request(model)
        req.model_version = version
        assert _grpc_infer(server, req).code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(InferenceServerException) as info:
        grpcclient.InferenceServerClient(server.grpc_url).get_model_metadata("nope")
    assert info.value.status() == "StatusCode.NOT_FOUND"


def test_wrong_datatype(server):
    client = httpclient.InferenceServerClient(server.http_url)
    with pytest.raises(InferenceServerException, match="data-type is 'INT32'") as info:
        client.infer("add_sub", _http_inputs(np.zeros((1, 16), np.int32), "INT32"))
    assert info.value.status() == "400"
    err = _grpc_infer(server, _add_sub_request(datatype="INT32"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "expects 'FP32'" in err.details()


def test_wrong_shape(server):
    client = httpclient.InferenceServerClient(server.http_url)
    with pytest.raises(InferenceServerException, match="unexpected shape") as info:
        client.infer("add_sub", _http_inputs(np.zeros((1, 8), np.float32)))
    assert info.value.status() == "400"
    raw = np.zeros(8, np.float32).tobytes()
    err = _grpc_infer(server, _add_sub_request(shape=[1, 8], raw=raw))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Expected [-1,16], got [1,8]" in err.details()


def test_wrong_byte_size(server):
    head = {
        "inputs": [
            {
                "name": n,
                "shape": [1, 16],
                "datatype": "FP32",
                "parameters": {"binary_data_size": 60},
            }
            for n in ("INPUT0", "INPUT1")
        ]
    }
    head_bytes = json.dumps(head).encode()
    status, body = _post(
        server,
        "/v2/models/add_sub/infer",
        head_bytes + bytes(120),
        {"Inference-Header-Content-Length": str(len(head_bytes))},
    )
    assert status == 400
    assert "unexpected byte size 60, expected 64" in body["error"]
    err = _grpc_infer(server, _add_sub_request(raw=bytes(60)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "byte size 60" in err.details()
    # JSON data with the wrong element count
    head2 = {
        "inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [1.0] * 15}]
    }
    status, body = _post(server, "/v2/models/add_sub/infer", json.dumps(head2).encode())
    assert status == 400
    assert "got 15 elements, expected 16" in body["error"]


def test_batch_above_max_batch_size(server):
    client = httpclient.InferenceServerClient(server.http_url)
    with pytest.raises(InferenceServerException, match="batch-size must be <= 8") as info:
        client.infer("add_sub", _http_inputs(np.zeros((9, 16), np.float32)))
    assert info.value.status() == "400"
    raw = np.zeros((9, 16), np.float32).tobytes()
    err = _grpc_infer(server, _add_sub_request(shape=[9, 16], raw=raw))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_invalid_json(server):
    status, body = _post(server, "/v2/models/add_sub/infer", b'{"inputs": [ {"name": ')
    assert status == 400
    assert "failed to parse the inference request JSON" in body["error"]
    status, body = _post(server, "/v2/repository/models/add_sub/load", b"{not json")
    assert status == 400


def test_body_far_larger_than_inputs_need(server):
    a = np.zeros((1, 16), np.float32).tobytes()
    head = {
        "inputs": [
            {
                "name": n,
                "shape": [1, 16],
                "datatype": "FP32",
                "parameters": {"binary_data_size": 64},
            }
            for n in ("INPUT0", "INPUT1")
        ]
    }
    head_bytes = json.dumps(head).encode()
    status, body = _post(
        server,
        "/v2/models/add_sub/infer",
        head_bytes + a + a + bytes(4 * 1024 * 1024),
        {"Inference-Header-Content-Length": str(len(head_bytes))},
    )
    assert status == 400
    assert "trailing bytes" in body["error"]
    err = _grpc_infer(server, _add_sub_request(raw=bytes(1024 * 1024)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_load_name_escaping_repository(server, tmp_path):
    (tmp_path / "outside").mkdir()
    for name in ("..%2F..%2Foutside", "..", "%2Ftmp%2Foutside"):
        status, body = _post(server, f"/v2/repository/models/{name}/load", b"")
        assert status in (400, 404), (name, status)
        if status == 400:
            assert "invalid model name" in body["error"]
    status, body = _post(server, "/v2/repository/models/..%2F..%2Foutside/load", b"")
    assert status == 400
    client = grpcclient.InferenceServerClient(server.grpc_url)
    for name in ("../outside", "/etc", ".hidden"):
        with pytest.raises(InferenceServerException) as info:
            client.load_model(name)
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "invalid model name" in info.value.message()
    # unknown (but well-formed) name: Triton's 500 / INTERNAL "failed to poll from model repository"
    with pytest.raises(InferenceServerException, match="failed to poll") as info:
        client.load_model("does_not_exist")
    assert info.value.status() == "StatusCode.INTERNAL"


def test_body_over_the_size_limit(perfkit_server, tmp_path):
    models.add_sub(tmp_path)
    server = perfkit_server(tmp_path, "--http-max-input-size=65536")
    head = json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32"}]})
    status, body = _post(server, "/v2/models/add_sub/infer", head.encode() + bytes(200_000))
    assert status == 413
    assert "--http-max-input-size" in body["error"]
    grpc_client = grpcclient.InferenceServerClient(server.grpc_url)
    big = np.zeros((8, 16), np.float32)
    req = _add_sub_request(shape=[8, 16], raw=big.tobytes() + bytes(100_000))
    assert _grpc_infer(server, req).code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert grpc_client.is_model_ready("add_sub")
