"""Contract: the python backend's model loading API on perfkit_server and the real tritonserver.

The controller model of tests/server/test_python_backend_control.py runs pb_utils.is_model_ready,
load_model and unload_model inside each server; both must answer alike: readiness, a load and an
unload of a repository model (with a config override too), and the arguments the stub refuses.

The server-side refusals are left out: the wheel's tritonserver aborts now and then
(boost::interprocess::lock_exception) when it answers a model loading call with an error (a load
during startup, of a model the repository lacks, outside explicit mode), and always on an
unparsable version string. Their words, as that server sent them when it did not abort, are
checked on perfkit_server in tests/server/test_python_backend_control.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tritonclient.http as httpclient

from tests.fixtures.server import start_server
from tests.server.test_python_backend_control import (
    CTL,
    TARGET,
    call,
    target_config,
    write_repository,
)

pytestmark = pytest.mark.timeout(180)

Start = Callable[[Path], str]


@pytest.fixture(params=["perfkit_server", "triton"])
def serve(request: pytest.FixtureRequest) -> Iterator[Start]:
    """Start the param's server on a repository in explicit mode, loading only CTL."""
    stops: list[Callable[[], Any]] = []
    if request.param == "perfkit_server":

        def start(repo: Path) -> str:
            handle = start_server(repo, "--model-control-mode=explicit", f"--load-model={CTL}")
            stops.append(handle.stop)
            return handle.http_url

    else:
        factory = request.getfixturevalue("triton_server")

        def start(repo: Path) -> str:
            return str(factory(repo, load_models=[CTL]).http_url)

    yield start
    for stop in stops:
        stop()


def test_the_model_loading_api_answers_alike(serve, tmp_path):
    url = serve(write_repository(tmp_path, load_at_start=False))
    client = httpclient.InferenceServerClient(url)
    assert call(url, "is_model_ready", model_name=CTL) == {"value": True}
    assert call(url, "is_model_ready", model_name=CTL, model_version="2") == {"value": False}
    assert call(url, "is_model_ready", model_name="no_such_model") == {"value": False}
    assert call(url, "is_model_ready", model_name=TARGET) == {"value": False}
    assert call(url, "load_model", model_name=TARGET, files=["x"]) == {
        "error": "TritonModelException",
        "message": f"failed to load model '{TARGET}', files should be a dictionary of file paths "
        "and file contents",
    }
    assert call(url, "load_model", model_name=None)["error"] == "TypeError"
    assert call(url, "load_model", model_name=TARGET) == {"value": None}
    assert call(url, "is_model_ready", model_name=TARGET) == {"value": True}
    assert client.is_model_ready(TARGET)
    assert call(url, "unload_model", model_name=TARGET) == {"value": None}
    assert call(url, "is_model_ready", model_name=TARGET) == {"value": False}
    override = json.dumps(target_config(4))
    assert call(url, "load_model", model_name=TARGET, config=override) == {"value": None}
    assert client.get_model_config(TARGET)["max_batch_size"] == 4
