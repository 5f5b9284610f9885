"""The python backend's model loading API: pb_utils.is_model_ready, load_model, unload_model.

A controller python model runs each call a request asks for (a JSON command) inside the server
and answers with its result or the exception it raised, so the tests see exactly what a model
sees. Its `initialize` tries a load during the server's startup, which Triton refuses. The
target is a tiny python model in the same repository. tests/contract/test_python_control_contract.py
runs the same model on the real tritonserver.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient

from tests.fixtures.server import ServerHandle, start_server

CTL, TARGET = "ctl", "target"
INSTANCE = "ctl_0_0"  # the controller's instance, named in Triton's errors
LOAD, UNLOAD, READY = (
    "Failed to load model: ",
    "Failed to unload model: ",
    "Failed to check model readiness: ",
)

# CMD (BYTES [1], a JSON object {"fn": name in pb_utils, "kw": {...}}) -> RESULT (BYTES [1], JSON
# {"value": return value} or {"error": exception type, "message": its text}). {"fn": "at_start"}
# answers what the load attempted in initialize (with parameter load_at_start) raised.
CTL_PY = """
import json

import numpy as np
import triton_python_backend_utils as pb_utils


def _outcome(call):
    try:
        return {"value": call()}
    except Exception as exc:
        return {"error": type(exc).__name__, "message": str(exc)}


class TritonPythonModel:
    def initialize(self, args):
        params = json.loads(args["model_config"]).get("parameters", {})
        self.at_start = None
        if "load_at_start" in params:
            self.at_start = _outcome(lambda: pb_utils.load_model(model_name="target"))

    def _run(self, cmd):
        if cmd["fn"] == "at_start":
            return self.at_start
        kw = dict(cmd.get("kw", {}))
        if isinstance(kw.get("files"), dict):
            kw["files"] = {k: v.encode() for k, v in kw["files"].items()}
        return _outcome(lambda: getattr(pb_utils, cmd["fn"])(**kw))

    def execute(self, requests):
        responses = []
        for request in requests:
            raw = pb_utils.get_input_tensor_by_name(request, "CMD").as_numpy()[0]
            result = self._run(json.loads(raw))
            out = np.array([json.dumps(result).encode()], dtype=np.object_)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("RESULT", out)]))
        return responses
"""

CTL_CONFIG = """name: "ctl"
backend: "python"
max_batch_size: 0
input [ { name: "CMD" data_type: TYPE_STRING dims: [ 1 ] } ]
output [ { name: "RESULT" data_type: TYPE_STRING dims: [ 1 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
"""

TARGET_PY = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [
            pb_utils.InferenceResponse(
                [pb_utils.Tensor("OUT", pb_utils.get_input_tensor_by_name(r, "IN").as_numpy())]
            )
            for r in requests
        ]
"""


def target_config(max_batch_size: int) -> dict[str, Any]:
    """The target's config as Triton's JSON (a load override is a whole config)."""
    return {
        "name": TARGET,
        "backend": "python",
        "max_batch_size": max_batch_size,
        "input": [{"name": "IN", "data_type": "TYPE_FP32", "dims": [2]}],
        "output": [{"name": "OUT", "data_type": "TYPE_FP32", "dims": [2]}],
        "instance_group": [{"count": 1, "kind": "KIND_CPU"}],
    }


def _pbtxt(config: dict[str, Any]) -> str:
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    message = json_format.ParseDict(config, model_config_pb2.ModelConfig())
    return str(text_format.MessageToString(message))


def write_repository(repo: Path, load_at_start: bool = True) -> Path:
    """The controller and the target, identical for perfkit_server and tritonserver."""
    at_start = 'parameters { key: "load_at_start" value { string_value: "1" } }\n'
    for name, source, config in (
        (CTL, CTL_PY, CTL_CONFIG + (at_start if load_at_start else "")),
        (TARGET, TARGET_PY, _pbtxt(target_config(8))),
    ):
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "1" / "model.py").write_text(textwrap.dedent(source))
        (repo / name / "config.pbtxt").write_text(config)
    return repo


def call(url: str, fn: str, **kw: Any) -> dict[str, Any]:
    """Run pb_utils.<fn>(**kw) inside the controller model; its {"value"} or {"error", "message"}."""
    client = httpclient.InferenceServerClient(url)
    data = np.array([json.dumps({"fn": fn, "kw": kw}).encode()], dtype=np.object_)
    inp = httpclient.InferInput("CMD", [1], "BYTES")
    inp.set_data_from_numpy(data)
    raw = client.infer(CTL, [inp]).as_numpy("RESULT")[0]
    result: dict[str, Any] = json.loads(raw)
    return result


def failed(result: dict[str, Any], action: str, server: str = "") -> str:
    """The message of a TritonModelException: Triton's prefix of the `action`, then the
    server's error, starting with `server`."""
    assert result.get("error") == "TritonModelException", result
    message = str(result["message"])
    prefix = f"{action}Failed to process the request for model '{INSTANCE}', message: {server}"
    assert message.startswith(prefix), message
    return message


@pytest.fixture(scope="module")
def explicit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    repo = write_repository(tmp_path_factory.mktemp("control-repo"))
    handle = start_server(repo, "--model-control-mode=explicit", f"--load-model={CTL}")
    try:
        yield handle
    finally:
        handle.stop()


def test_a_load_during_the_server_startup_is_refused(explicit):
    failed(call(explicit.http_url, "at_start"), LOAD, "Server not ready")
    assert not httpclient.InferenceServerClient(explicit.http_url).is_model_ready(TARGET)


def test_is_model_ready_says_whether_a_model_is_served(explicit):
    url = explicit.http_url
    assert call(url, "is_model_ready", model_name=CTL) == {"value": True}
    assert call(url, "is_model_ready", model_name=CTL, model_version="1") == {"value": True}
    assert call(url, "is_model_ready", model_name=CTL, model_version="2") == {"value": False}
    assert call(url, "is_model_ready", model_name="no_such_model") == {"value": False}
    message = failed(call(url, "is_model_ready", model_name=CTL, model_version="one"), READY)
    assert "version string 'one'" in message
    assert "integral value" in message


def test_load_and_unload_a_model_of_the_repository(explicit):
    url = explicit.http_url
    client = httpclient.InferenceServerClient(url)
    assert call(url, "is_model_ready", model_name=TARGET) == {"value": False}
    assert call(url, "load_model", model_name=TARGET) == {"value": None}
    assert call(url, "is_model_ready", model_name=TARGET) == {"value": True}
    assert client.is_model_ready(TARGET)
    inp = httpclient.InferInput("IN", [1, 2], "FP32")
    inp.set_data_from_numpy(np.array([[1.5, 2.5]], dtype=np.float32))
    np.testing.assert_array_equal(client.infer(TARGET, [inp]).as_numpy("OUT"), [[1.5, 2.5]])
    assert call(url, "unload_model", model_name=TARGET) == {"value": None}
    assert call(url, "is_model_ready", model_name=TARGET) == {"value": False}
    assert not client.is_model_ready(TARGET)


def test_load_with_a_config_override(explicit):
    url = explicit.http_url
    client = httpclient.InferenceServerClient(url)
    override = json.dumps(target_config(4))
    assert call(url, "load_model", model_name=TARGET, config=override) == {"value": None}
    assert client.get_model_config(TARGET)["max_batch_size"] == 4
    assert call(url, "unload_model", model_name=TARGET, unload_dependents=True) == {"value": None}
    assert not client.is_model_ready(TARGET)


def test_bad_loads_raise_a_triton_model_exception_naming_the_problem(explicit):
    url = explicit.http_url
    message = failed(
        call(url, "load_model", model_name=TARGET, config="{not json"),
        LOAD,
        f"failed to load '{TARGET}'",
    )
    assert "config override" in message
    assert "JSON" in message
    failed(call(url, "load_model", model_name="no_such_model"), LOAD, "failed to load 'no_such")
    result = call(url, "load_model", model_name=TARGET, files=["1/model.py"])
    assert result == {
        "error": "TritonModelException",
        "message": f"failed to load model '{TARGET}', files should be a dictionary of file paths "
        "and file contents",
    }
    result = call(url, "load_model", model_name=TARGET, files={"file:1/model.py": "x = 1"})
    assert "override files (files=...) are not supported" in result["message"], result
    assert not httpclient.InferenceServerClient(url).is_model_ready(TARGET)
    assert call(url, "load_model", model_name=None)["error"] == "TypeError"


def test_load_and_unload_are_refused_outside_explicit_mode(tmp_path):
    repo = write_repository(tmp_path)
    handle = start_server(repo, "--model-control-mode=none")
    try:
        url = handle.http_url
        refused = "explicit model load / unload is not allowed if polling is enabled"
        failed(call(url, "load_model", model_name=TARGET), LOAD, refused)
        failed(call(url, "unload_model", model_name=TARGET), UNLOAD, refused)
        # Readiness is no model control: it answers in every mode.
        assert call(url, "is_model_ready", model_name=TARGET) == {"value": True}
        assert httpclient.InferenceServerClient(url).is_model_ready(TARGET)
    finally:
        handle.stop()


def test_a_model_may_reload_and_unload_itself(tmp_path):
    """The call returns once the new versions serve / the model stopped serving, so the calling
    instance (which the reload or unload closes) is not waited for by its own call."""
    repo = write_repository(tmp_path, load_at_start=False)
    handle = start_server(repo, "--model-control-mode=explicit", f"--load-model={CTL}")
    try:
        url = handle.http_url
        client = httpclient.InferenceServerClient(url)
        config = client.get_model_config(CTL)
        config["parameters"] = {"reloaded": {"string_value": "yes"}}
        assert call(url, "load_model", model_name=CTL, config=json.dumps(config)) == {"value": None}
        assert client.get_model_config(CTL)["parameters"]["reloaded"] == {"string_value": "yes"}
        assert call(url, "unload_model", model_name=CTL) == {"value": None}
        assert not client.is_model_ready(CTL)
        assert client.is_server_live()
    finally:
        handle.stop()
