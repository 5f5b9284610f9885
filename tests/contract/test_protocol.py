"""Contract: metadata, model config JSON, infer and error answers, as perfkit reads them."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from tests.contract._client import PROTOCOLS, batch, expect_error, infer
from tests.contract._models import IdentitySpec, backend_for
from tests.contract._server import Server

SPECS = [IdentitySpec("identity", max_batch_size=8, instance_count=2, queue_delay_us=2000)]

MODEL = "identity"

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=PROTOCOLS)
def protocol(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_live_and_ready(server: Server, protocol: str) -> None:
    client = server.client(protocol)
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(MODEL)
    assert client.is_model_ready(MODEL, "1")
    assert not client.is_model_ready(MODEL, "7")


def test_http_ready_unknown_version_body(server: Server) -> None:
    status, body = server.http("GET", f"/v2/models/{MODEL}/versions/7/ready")
    assert status == 400
    assert json.loads(body) == {"error": "Model version not ready"}


def test_server_metadata_shape(server: Server, protocol: str) -> None:
    if protocol == "http":
        meta = server.client("http").get_server_metadata()
        assert set(meta) == {"name", "version", "extensions"}
        name, version, extensions = meta["name"], meta["version"], meta["extensions"]
    else:
        pb = server.client("grpc").get_server_metadata()
        name, version, extensions = pb.name, pb.version, list(pb.extensions)
    assert isinstance(name, str)
    assert name
    assert isinstance(version, str)
    assert version
    # The extensions perfkit relies on: load/unload/index, /config, stats, binary tensors.
    needed = {
        "model_repository",
        "model_configuration",
        "statistics",
        "binary_tensor_data",
        "schedule_policy",
    }
    assert needed <= set(extensions)


def test_model_metadata(server: Server, protocol: str) -> None:
    tensor = {"datatype": "FP32", "shape": [-1, 16]}
    if protocol == "http":
        meta = server.client("http").get_model_metadata(MODEL)
        assert set(meta) == {"name", "versions", "platform", "inputs", "outputs"}
        assert meta["inputs"] == [{"name": "INPUT0", **tensor}]
        assert meta["outputs"] == [{"name": "OUTPUT0", **tensor}]
        assert all(type(d) is int for d in meta["inputs"][0]["shape"])
    else:
        meta = {}
        pb = server.client("grpc").get_model_metadata(MODEL)
        meta = {"name": pb.name, "versions": list(pb.versions), "platform": pb.platform}
        ins = [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in pb.inputs]
        outs = [
            {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in pb.outputs
        ]
        assert ins == [{"name": "INPUT0", **tensor}]
        assert outs == [{"name": "OUTPUT0", **tensor}]
    assert meta["name"] == MODEL
    assert meta["versions"] == ["1"]
    # Triton reports a backend model's backend name as its platform.
    assert meta["platform"] == backend_for(server.kind)


def _http_config(server: Server) -> dict[str, Any]:
    status, body = server.http("GET", f"/v2/models/{MODEL}/config")
    assert status == 200, body
    config = json.loads(body)
    assert isinstance(config, dict)
    return config


def test_config_json_core_fields(server: Server) -> None:
    """GET /v2/models/{m}/config: the fields perfkit reads, with JSON ints where the proto has ints."""
    config = _http_config(server)
    assert config["name"] == MODEL
    assert config["backend"] == backend_for(server.kind)
    assert type(config["max_batch_size"]) is int
    assert config["max_batch_size"] == 8
    tensor = {"data_type": "TYPE_FP32", "dims": [16]}
    [inp] = config["input"]
    [out] = config["output"]
    assert {k: inp[k] for k in ("name", *tensor)} == {"name": "INPUT0", **tensor}
    assert {k: out[k] for k in ("name", *tensor)} == {"name": "OUTPUT0", **tensor}
    assert all(type(d) is int for d in inp["dims"] + out["dims"])
    [group] = config["instance_group"]
    assert type(group["count"]) is int
    assert group["count"] == 2
    assert group["kind"] == "KIND_CPU"
    batching = config["dynamic_batching"]
    assert isinstance(batching, dict)
    assert type(batching["max_queue_delay_microseconds"]) is int
    assert batching["max_queue_delay_microseconds"] == 2000


def test_config_json_has_triton_defaults(server: Server) -> None:
    config = _http_config(server)
    assert config["platform"] == ""
    assert config["version_policy"] == {"latest": {"num_versions": 1}}
    [inp] = config["input"]
    assert inp["format"] == "FORMAT_NONE"
    assert inp["is_shape_tensor"] is False
    [group] = config["instance_group"]
    assert group["name"] == f"{MODEL}_0"
    assert group["gpus"] == []
    for key in ("batch_input", "batch_output", "model_warmup"):
        assert config[key] == [], key
    assert "optimization" in config
    batching = config["dynamic_batching"]
    assert isinstance(batching, dict)
    assert batching["preserve_ordering"] is False
    assert batching["priority_levels"] == 0


def test_config_preferred_batch_size_defaults_to_max(server: Server, protocol: str) -> None:
    if protocol == "http":
        batching = _http_config(server)["dynamic_batching"]
        assert isinstance(batching, dict)
        assert batching["preferred_batch_size"] == [8]
    else:
        config = server.client("grpc").get_model_config(MODEL).config
        assert list(config.dynamic_batching.preferred_batch_size) == [8]


def test_config_grpc(server: Server) -> None:
    config = server.client("grpc").get_model_config(MODEL).config
    assert isinstance(config, model_config_pb2.ModelConfig)
    assert config.name == MODEL
    assert config.backend == backend_for(server.kind)
    assert config.max_batch_size == 8
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [
        ("INPUT0", model_config_pb2.TYPE_FP32, [16])
    ]
    assert [(t.name, t.data_type, list(t.dims)) for t in config.output] == [
        ("OUTPUT0", model_config_pb2.TYPE_FP32, [16])
    ]
    [group] = config.instance_group
    assert (group.count, group.kind) == (2, model_config_pb2.ModelInstanceGroup.KIND_CPU)
    assert config.HasField("dynamic_batching")
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000


def test_config_grpc_normalized(server: Server) -> None:
    config = server.client("grpc").get_model_config(MODEL).config
    assert config.instance_group[0].name == f"{MODEL}_0"
    assert config.HasField("version_policy")
    assert config.version_policy.latest.num_versions == 1


@pytest.mark.parametrize("rows", [1, 8])
@pytest.mark.parametrize(
    ("protocol", "binary"),
    [("http", True), ("http", False), ("grpc", True)],
    ids=["http-binary", "http-json", "grpc"],
)
def test_infer_outputs(server: Server, protocol: str, rows: int, binary: bool) -> None:
    data = batch(rows, seed=rows)
    result = infer(server, protocol, MODEL, data, binary=binary)
    out = result.as_numpy("OUTPUT0")
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, data)
    response = result.get_response()
    if protocol == "http":
        assert response["model_name"] == MODEL
        assert response["model_version"] == "1"
        [output] = response["outputs"]
        assert (output["name"], output["datatype"], output["shape"]) == (
            "OUTPUT0",
            "FP32",
            [rows, 16],
        )
    else:
        assert (response.model_name, response.model_version) == (MODEL, "1")
        [output] = response.outputs
        assert (output.name, output.datatype, list(output.shape)) == ("OUTPUT0", "FP32", [rows, 16])


def test_json_output_writes_inf_and_nan_as_triton_does(server: Server) -> None:
    # Issue #10 finding 9 named `Infinity` in a JSON reply as a bug; Triton writes it (rapidjson's
    # kWriteNanAndInfFlag), and tritonclient reads it back. This pins the text to Triton's.
    values = np.array([[np.inf, -np.inf, np.nan] + [0.5] * 13], np.float32)
    body = {
        "inputs": [
            {
                "name": "INPUT0",
                "datatype": "FP32",
                "shape": [1, 16],
                "parameters": {"binary_data_size": 64},
            }
        ],
        "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": False}}],
    }
    head = json.dumps(body).encode()
    raw = head + values.tobytes()
    headers = {"Inference-Header-Content-Length": str(len(head))}
    status, reply = server.http("POST", f"/v2/models/{MODEL}/infer", raw, headers)
    assert status == 200, reply
    text = reply.decode()
    assert '"data":[Infinity,-Infinity,NaN,0.5' in text.replace(" ", "")
    out = json.loads(text)["outputs"][0]["data"]
    assert out[0] == np.inf
    assert out[1] == -np.inf
    assert np.isnan(out[2])


def test_infer_explicit_version(server: Server, protocol: str) -> None:
    data = batch(2)
    result = infer(server, protocol, MODEL, data, version="1")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)


def test_error_unknown_model(server: Server, protocol: str) -> None:
    with pytest.raises(InferenceServerException) as exc:
        infer(server, protocol, "nope", batch(1))
    assert "Request for unknown model: 'nope' is not found" in expect_error(protocol, exc, "404")
    for call in ("get_model_metadata", "get_model_config"):
        with pytest.raises(InferenceServerException) as exc:
            getattr(server.client(protocol), call)("nope")
        assert "Request for unknown model: 'nope' is not found" in expect_error(
            protocol, exc, "404"
        )


def test_error_unknown_version(server: Server, protocol: str) -> None:
    with pytest.raises(InferenceServerException) as exc:
        infer(server, protocol, MODEL, batch(1), version="7")
    message = expect_error(protocol, exc, "404")
    assert "Request for unknown model: 'identity' version 7 is not found" in message


def test_error_wrong_shape(server: Server, protocol: str) -> None:
    with pytest.raises(InferenceServerException) as exc:
        infer(server, protocol, MODEL, np.zeros((1, 15), np.float32))
    assert (
        "unexpected shape for input 'INPUT0' for model 'identity'. Expected [-1,16], got [1,15]"
        in expect_error(protocol, exc, "400")
    )


def test_error_wrong_datatype(server: Server, protocol: str) -> None:
    with pytest.raises(InferenceServerException) as exc:
        infer(server, protocol, MODEL, np.zeros((1, 16), np.int32), datatype="INT32")
    assert (
        "inference input 'INPUT0' data-type is 'INT32', but model 'identity' expects 'FP32'"
        in expect_error(protocol, exc, "400")
    )


def test_error_batch_above_max(server: Server, protocol: str) -> None:
    with pytest.raises(InferenceServerException) as exc:
        infer(server, protocol, MODEL, batch(9))
    assert "inference request batch-size must be <= 8 for 'identity'" in expect_error(
        protocol, exc, "400"
    )


def test_error_unknown_input(server: Server, protocol: str) -> None:
    with pytest.raises(InferenceServerException) as exc:
        infer(server, protocol, MODEL, batch(1), input_name="INPUTX")
    assert "unexpected inference input 'INPUTX' for model 'identity'" in expect_error(
        protocol, exc, "400"
    )


def test_errors_leave_model_serving(server: Server, protocol: str) -> None:
    with pytest.raises(InferenceServerException):
        infer(server, protocol, MODEL, batch(9))
    data = batch(3)
    np.testing.assert_array_equal(infer(server, protocol, MODEL, data).as_numpy("OUTPUT0"), data)
    assert server.client(protocol).is_model_ready(MODEL)
