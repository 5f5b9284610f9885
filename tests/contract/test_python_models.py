"""Contract: the same python-backend model.py files on perfkit_server and on the real tritonserver.

A pre-processing model (UINT8 pixels -> normalized FP32, a BYTES label upper-cased, the
`initialize` args it saw) and a BLS model that runs it through the server: each test runs on both
servers and expects the same outputs, errors and statuses. This module's `server` fixture replaces
the conftest's (which writes identity models) with these models, written identically for both.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.contract._client import PROTOCOLS, expect_error
from tests.contract._models import PERFKIT, TRITON
from tests.contract._server import Server
from tests.contract.conftest import _perfkit, _triton
from tests.fixtures.triton import triton_available

pytestmark = pytest.mark.timeout(180)

PRE, BLS, CRASHY, BATCHED = "preprocess", "bls_pipeline", "crashy", "batched"

PRE_PY = '''
"""Pre-processing: RAW (UINT8 pixels) -> NORM (FP32), LABEL (BYTES) -> UPPER, ARGS (what
initialize got). LABEL b"bad" is an INVALID_ARG response error; b"boom" makes execute raise;
b"die" ends the stub process; b"sender" answers through the response sender."""
import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(auto_complete_model_config):
        return auto_complete_model_config

    def initialize(self, args):
        config = json.loads(args["model_config"])
        norm = pb_utils.get_output_config_by_name(config, "NORM")
        self.norm_dtype = pb_utils.triton_string_to_numpy(norm["data_type"])
        seen = {k: args[k] for k in (
            "model_instance_kind", "model_instance_name", "model_instance_device_id",
            "model_version", "model_name")}
        seen["model_repository"] = os.path.basename(args["model_repository"])
        seen["config_name"] = config["name"]
        seen["max_batch_size"] = config["max_batch_size"]
        seen["inputs"] = [(i["name"], i["data_type"], i["dims"]) for i in config["input"]]
        seen["decoupled"] = pb_utils.using_decoupled_model_transaction_policy(config)
        seen["group"] = [(g["name"], g["count"], g["kind"]) for g in config["instance_group"]]
        self.seen = json.dumps(seen, sort_keys=True).encode()

    def execute(self, requests):
        responses = []
        for request in requests:
            raw = pb_utils.get_input_tensor_by_name(request, "RAW").as_numpy()
            labels = pb_utils.get_input_tensor_by_name(request, "LABEL").as_numpy()
            if labels[0, 0] == b"die":
                os._exit(3)
            if labels[0, 0] == b"boom":
                raise ValueError("boom")
            if labels[0, 0] == b"bad":
                err = pb_utils.TritonError("label 'bad' is not allowed", pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=err))
                continue
            norm = ((raw.astype(np.float32) / 255.0 - 0.5) / 0.25).astype(self.norm_dtype)
            upper = np.array([[x.upper()] for x in labels[:, 0]], dtype=np.object_)
            args = np.array([[self.seen]] * raw.shape[0], dtype=np.object_)
            response = pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("NORM", norm),
                pb_utils.Tensor("UPPER", upper),
                pb_utils.Tensor("ARGS", args),
            ])
            if labels[0, 0] == b"sender":  # answered through the request's sender instead
                request.get_response_sender().send(
                    response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                response = None
            responses.append(response)
        return responses
'''

PRE_CONFIG = """name: "preprocess"
backend: "python"
max_batch_size: 8
input [
  { name: "RAW" data_type: TYPE_UINT8 dims: [ 4 ] },
  { name: "LABEL" data_type: TYPE_STRING dims: [ 1 ] }
]
output [
  { name: "NORM" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "UPPER" data_type: TYPE_STRING dims: [ 1 ] },
  { name: "ARGS" data_type: TYPE_STRING dims: [ 1 ] }
]
instance_group [ { count: 2 kind: KIND_CPU } ]
dynamic_batching { }
"""

BLS_PY = '''
"""BLS: RAW -> preprocess (through the server) -> OUT = NORM * 2 + 1. RAW[0] == 255 asks a
model that does not exist, and returns that error as its own."""
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            raw = pb_utils.get_input_tensor_by_name(request, "RAW").as_numpy()
            target = "absent" if raw[0, 0] == 255 else "preprocess"
            label = np.array([[b"bls"]] * raw.shape[0], dtype=np.object_)
            inner = pb_utils.InferenceRequest(
                model_name=target,
                inputs=[pb_utils.Tensor("RAW", raw), pb_utils.Tensor("LABEL", label)],
                requested_output_names=["NORM", "UPPER"],
            ).exec()
            if inner.has_error():
                responses.append(pb_utils.InferenceResponse(error=inner.error()))
                continue
            norm = pb_utils.get_output_tensor_by_name(inner, "NORM").as_numpy()
            upper = pb_utils.get_output_tensor_by_name(inner, "UPPER").as_numpy()
            assert pb_utils.get_output_tensor_by_name(inner, "ARGS") is None  # not requested
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("OUT", norm * 2 + 1), pb_utils.Tensor("UPPER", upper)]))
        return responses
'''

BLS_CONFIG = """name: "bls_pipeline"
backend: "python"
max_batch_size: 8
input [ { name: "RAW" data_type: TYPE_UINT8 dims: [ 4 ] } ]
output [
  { name: "OUT" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "UPPER" data_type: TYPE_STRING dims: [ 1 ] }
]
instance_group [ { count: 1 kind: KIND_CPU } ]
"""


BATCHED_PY = '''
"""Y = X * 2 and COUNT = how many requests this execute call got; X < 0 fails its request."""
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            if (x < 0).any():
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError("X must not be negative")))
                continue
            count = np.full((x.shape[0], 1), len(requests), dtype=np.int32)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("Y", x * 2), pb_utils.Tensor("COUNT", count)]))
        return responses
'''

# Four requests wait (up to 10 s) for the preferred batch of 4: one execute call gets them all.
BATCHED_CONFIG = """name: "batched"
backend: "python"
max_batch_size: 8
input [ { name: "X" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [
  { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] },
  { name: "COUNT" data_type: TYPE_INT32 dims: [ 1 ] }
]
instance_group [ { count: 1 kind: KIND_CPU } ]
dynamic_batching { preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 10000000 }
"""


@pytest.fixture(scope="module", params=[PERFKIT, pytest.param(TRITON, marks=pytest.mark.triton)])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    kind: str = request.param
    if kind == TRITON and not triton_available():
        pytest.skip("no tritonserver: neither on PATH nor the nvidia-pytriton wheel")
    base = tmp_path_factory.mktemp(f"contract-python-{kind}")
    repo = base / "repo"
    crashy = PRE_CONFIG.replace(f'"{PRE}"', f'"{CRASHY}"').replace("count: 2", "count: 1")
    models = (
        (PRE, PRE_PY, PRE_CONFIG),
        (BLS, BLS_PY, BLS_CONFIG),
        (CRASHY, PRE_PY, crashy),
        (BATCHED, BATCHED_PY, BATCHED_CONFIG),
    )
    for name, source, config in models:
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "1" / "model.py").write_text(source)
        (repo / name / "config.pbtxt").write_text(config)
    if kind == TRITON:
        launcher = _triton(repo, base, request.getfixturevalue("triton_cache_dir"))
    else:
        launcher = _perfkit(repo, base)
    with launcher as (http_url, grpc_url, metrics_url, log_path):
        srv = Server(kind, repo, http_url, grpc_url, metrics_url, log_path, {})
        try:
            yield srv
        finally:
            srv.close()


def _inputs(protocol: str, raw: np.ndarray[Any, Any], labels: list[bytes] | None) -> list[Any]:
    module: Any = httpclient if protocol == "http" else grpcclient
    out = [module.InferInput("RAW", list(raw.shape), "UINT8")]
    out[0].set_data_from_numpy(raw)
    if labels is not None:
        label = np.array([[x] for x in labels], dtype=np.object_)
        out.append(module.InferInput("LABEL", list(label.shape), "BYTES"))
        out[1].set_data_from_numpy(label)
    return out


def _raw(rows: int) -> np.ndarray[Any, Any]:
    return (np.arange(rows * 4, dtype=np.uint8) * 17).reshape(rows, 4)


def _norm(raw: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    return (raw.astype(np.float32) / 255.0 - 0.5) / 0.25


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_preprocessing_model_outputs(server: Server, protocol: str) -> None:
    raw = _raw(3)
    result = server.client(protocol).infer(PRE, _inputs(protocol, raw, [b"cat", b"dog", b"x"]))
    np.testing.assert_array_equal(result.as_numpy("NORM"), _norm(raw))
    assert result.as_numpy("NORM").dtype == np.float32
    assert result.as_numpy("UPPER").tolist() == [[b"CAT"], [b"DOG"], [b"X"]]


def test_metadata_and_config_of_a_python_model(server: Server) -> None:
    metadata = server.client("http").get_model_metadata(PRE)
    assert metadata["platform"] == "python"
    config = server.client("http").get_model_config(PRE)
    assert (config["backend"], config["platform"]) == ("python", "")
    assert config["default_model_filename"] == "model.py"


def test_initialize_gets_tritons_args(server: Server) -> None:
    result = server.client("http").infer(PRE, _inputs("http", _raw(1), [b"a"]))
    seen = json.loads(result.as_numpy("ARGS")[0, 0])
    assert seen["model_instance_kind"] == "CPU"
    assert seen["model_instance_name"] in ("preprocess_0_0", "preprocess_0_1")
    assert seen["model_instance_device_id"] == "0"
    assert seen["model_version"] == "1"
    assert seen["model_name"] == PRE
    assert seen["model_repository"] == PRE  # the model's directory, as Triton passes it
    assert seen["config_name"] == PRE
    assert seen["max_batch_size"] == 8
    assert seen["inputs"] == [["RAW", "TYPE_UINT8", [4]], ["LABEL", "TYPE_STRING", [1]]]
    assert seen["decoupled"] is False
    assert seen["group"] == [["preprocess_0", 2, "KIND_CPU"]]


def test_a_response_sent_through_the_sender_of_a_non_decoupled_model(server: Server) -> None:
    raw = _raw(2)
    result = server.client("http").infer(PRE, _inputs("http", raw, [b"sender", b"y"]))
    np.testing.assert_array_equal(result.as_numpy("NORM"), _norm(raw))
    assert result.as_numpy("UPPER").tolist() == [[b"SENDER"], [b"Y"]]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_response_error_keeps_its_code_and_message(server: Server, protocol: str) -> None:
    with pytest.raises(InferenceServerException) as exc:
        server.client(protocol).infer(PRE, _inputs(protocol, _raw(1), [b"bad"]))
    assert expect_error(protocol, exc, "400") == "label 'bad' is not allowed"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_an_exception_in_execute_fails_the_request(server: Server, protocol: str) -> None:
    with pytest.raises(InferenceServerException) as exc:
        server.client(protocol).infer(PRE, _inputs(protocol, _raw(1), [b"boom"]))
    message = expect_error(protocol, exc, "500")
    # Triton's words, with the model's frames as pybind11 prints them (the stub's are left out).
    model_py = server.repo.resolve() / PRE / "1" / "model.py"
    assert re.fullmatch(
        r"Failed to process the request\(s\) for model 'preprocess_0_[01]', message: "
        rf"ValueError: boom\n\nAt:\n  {re.escape(str(model_py))}\(\d+\): execute\n",
        message,
    ), message


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_bls_model_outputs(server: Server, protocol: str) -> None:
    raw = _raw(2)
    result = server.client(protocol).infer(BLS, _inputs(protocol, raw, None))
    np.testing.assert_array_equal(result.as_numpy("OUT"), _norm(raw) * 2 + 1)
    assert result.as_numpy("UPPER").tolist() == [[b"BLS"], [b"BLS"]]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_bls_error_is_the_called_servers_error(server: Server, protocol: str) -> None:
    raw = np.full((1, 4), 255, dtype=np.uint8)
    with pytest.raises(InferenceServerException) as exc:
        server.client(protocol).infer(BLS, _inputs(protocol, raw, None))
    assert expect_error(protocol, exc, "500") == (
        "Model absent - Error when running inference: Failed for execute the inference request. "
        "Model 'absent' is not ready."
    )


def test_a_dead_stub_fails_its_requests_and_the_model_stays_listed_ready(server: Server) -> None:
    client = server.client("http")
    for label in (b"die", b"x"):  # the request that ended it, and every later one
        with pytest.raises(InferenceServerException) as exc:
            client.infer(CRASHY, _inputs("http", _raw(1), [label]))
        message = expect_error("http", exc, "500")
        assert message.startswith("Stub process 'crashy_0_0' is not healthy."), message
    assert client.is_server_live()
    assert client.is_model_ready(CRASHY)  # as Triton 2.51: readiness does not ask the stub
    result = client.infer(PRE, _inputs("http", _raw(1), [b"ok"]))
    assert result.as_numpy("UPPER").tolist() == [[b"OK"]]


def test_a_batch_reaches_execute_as_separate_requests_with_their_own_results(
    server: Server,
) -> None:
    client = httpclient.InferenceServerClient(server.http_url, concurrency=4)
    try:
        pending = []
        for value in (1.0, -1.0, 3.0, 4.0):
            x = httpclient.InferInput("X", [1, 1], "FP32")
            x.set_data_from_numpy(np.array([[value]], dtype=np.float32))
            pending.append(client.async_infer(BATCHED, [x]))
        outcomes: list[Any] = []
        for request in pending:
            try:
                outcomes.append(request.get_result(timeout=60))
            except InferenceServerException as exc:
                outcomes.append(exc)
    finally:
        client.close()
    failed = outcomes[1]
    assert isinstance(failed, InferenceServerException)
    assert (failed.status(), failed.message()) == ("500", "X must not be negative")
    for value, result in zip((1.0, 3.0, 4.0), (outcomes[0], *outcomes[2:]), strict=True):
        assert result.as_numpy("Y").tolist() == [[value * 2]]
        assert result.as_numpy("COUNT").tolist() == [[4]]  # one execute call got all four
