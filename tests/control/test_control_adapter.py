"""perfkit.control against a real perfkit_server on loopback: both protocols, sync and async.

Metadata, config, statistics, repository load (with a config override) / unload, readiness waits
that give up naming the URL, and the error mapping (server refusals vs. no server at all).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from perfkit.control import ControlClient, is_unavailable, map_error, wait_for
from perfkit.errors import ModelError, ServerError, ServerUnavailable
from perfkit.launch import free_ports
from tests.contract._models import PERFKIT, SIZE, IdentitySpec, write_repo
from tests.fixtures.server import ServerHandle, start_server

PROTOCOLS = ("http", "grpc")
NAMES = ["ident", *(f"reload_{p}" for p in PROTOCOLS)]

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    repo = write_repo(
        tmp_path_factory.mktemp("control") / "repo",
        [IdentitySpec(name, max_batch_size=8) for name in NAMES],
        PERFKIT,
    )
    with start_server(repo, "--model-control-mode=explicit", "--load-model=*") as handle:
        yield handle


@pytest.fixture(params=PROTOCOLS)
def protocol(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def url_of(server: ServerHandle, protocol: str) -> str:
    return server.http_url if protocol == "http" else server.grpc_url


@pytest.fixture
def control(server: ServerHandle, protocol: str) -> Iterator[ControlClient]:
    with ControlClient(url_of(server, protocol), protocol, model="ident") as client:
        yield client


def dead_url() -> str:
    (port,) = free_ports(1)
    return f"127.0.0.1:{port}"


def one_request(control: ControlClient) -> str:
    data = np.ones((1, SIZE), np.float32)
    return control.infer_error({"INPUT0": data}, {})


# -- metadata, config, statistics ------------------------------------------------------------------


def test_server_metadata(control: ControlClient) -> None:
    control.wait_ready(5.0)
    control.wait_live(5.0)
    md = control.server_metadata()
    assert md["name"] == "perfkit_server"
    assert md["version"]


def test_model_metadata_and_config(control: ControlClient) -> None:
    md = control.model_metadata()
    assert md["name"] == "ident"
    assert md["inputs"] == [{"name": "INPUT0", "datatype": "FP32", "shape": [-1, SIZE]}]
    config = control.model_config()
    assert config["name"] == "ident"
    assert int(config["max_batch_size"]) == 8


async def test_statistics_sync_and_async(control: ControlClient) -> None:
    before = control.statistics()
    assert before is not None
    assert one_request(control) == "the request failed once and then succeeded"
    after = await control.statistics_async()
    assert after is not None
    assert after["success_count"] == before["success_count"] + 1
    assert after["inference_count"] == before["inference_count"] + 1
    assert sum(after["batch"].values()) >= 1


def test_repository_index(control: ControlClient) -> None:
    entries = {m["name"]: m for m in control.repository_index()}
    assert set(NAMES) <= set(entries)
    assert entries["ident"]["state"] == "READY"


# -- repository load / unload ---------------------------------------------------------------------


def test_load_with_override_then_back_to_disk(server: ServerHandle, protocol: str) -> None:
    with ControlClient(url_of(server, protocol), protocol, model=f"reload_{protocol}") as c:
        override = {**c.model_config(), "max_batch_size": 4}
        c.load_model(json.dumps(override))
        assert int(c.model_config()["max_batch_size"]) == 4
        assert c.is_model_ready()
        c.reload_from_disk()  # an override is sticky: only an unload brings the file back
        assert int(c.model_config()["max_batch_size"]) == 8
        c.unload_model()
        assert not c.is_model_ready()
        c.load_model()
        assert c.is_model_ready()


def test_refused_load_is_a_server_error(server: ServerHandle, protocol: str) -> None:
    with ControlClient(url_of(server, protocol), protocol, model=f"reload_{protocol}") as c:
        bad = json.dumps({**c.model_config(), "input": [], "output": []})
        with pytest.raises(ServerError, match=f"loading 'reload_{protocol}' failed: .+"):
            c.load_model(bad)
        c.load_model()  # the file on disk still loads
        assert c.is_model_ready()


# -- errors ---------------------------------------------------------------------------------------


def test_unknown_model_is_a_model_error(server: ServerHandle, protocol: str) -> None:
    with (
        ControlClient(url_of(server, protocol), protocol, model="nope") as c,
        pytest.raises(
            ModelError, match=r"Model 'nope' is not available on .*unknown model"
        ) as info,
    ):
        c.model_metadata()
    assert "Models on the server: " in str(info.value)
    assert "ident" in str(info.value)


async def test_unknown_model_async(server: ServerHandle, protocol: str) -> None:
    c = ControlClient(url_of(server, protocol), protocol, model="nope")
    assert await c.statistics_async() is None  # statistics are optional: None, not an error


def test_infer_error_returns_the_servers_message(control: ControlClient) -> None:
    message = control.infer_error({"INPUT0": np.ones((1, SIZE + 1), np.float32)}, {})
    assert "INPUT0" in message


def test_shared_memory_refused(control: ControlClient) -> None:
    # Client shared memory is off unless the server is started with --allow-client-shm=true (as in
    # Triton since 26.04): the server's advice comes through.
    with pytest.raises(ServerError, match="Start the server with '--allow-client-shm=true'"):
        control.register_system_shm("region", "/perfkit_test_region", 64)
    control.unregister_system_shm("region")  # best effort: no error


@pytest.mark.parametrize("live", [False, True])
def test_wait_gives_up_naming_the_url(protocol: str, live: bool) -> None:
    url = dead_url()
    with ControlClient(url, protocol) as c:
        wait = c.wait_live if live else c.wait_ready
        word = "answered" if live else "ready"
        with pytest.raises(
            ServerUnavailable, match=rf"No server {word} at {url} \({protocol}\) within 0.2 s"
        ):
            wait(0.2)


async def test_no_server_is_unavailable(protocol: str) -> None:
    url = dead_url()
    with ControlClient(url, protocol, model="m") as c:
        with pytest.raises(ServerUnavailable, match=rf"no answer from {url} \({protocol}\)"):
            c.model_metadata()
        assert await c.statistics_async() is None
        assert c.statistics() is None
        assert not c.is_ready()


def test_server_refusal_with_unavailable_status_is_not_unavailable(tmp_path: Path) -> None:
    """gRPC UNAVAILABLE from the server itself (explicit load refused in mode "none") is the
    server's answer, not a missing server."""
    repo = write_repo(tmp_path / "repo", [IdentitySpec("ident")], PERFKIT)
    with (
        start_server(repo) as handle,
        ControlClient(handle.grpc_url, "grpc", model="ident") as c,
        pytest.raises(ServerError, match="model-control-mode") as info,
    ):
        c.load_model()
    assert not isinstance(info.value, ServerUnavailable)


def test_map_error() -> None:
    refused = ConnectionRefusedError(111, "Connection refused")
    assert is_unavailable(refused)
    err = map_error(refused, "metadata", url="h:1", protocol="http", kind=ModelError)
    assert isinstance(err, ServerUnavailable)
    assert str(err) == "metadata: no answer from h:1 (http): [Errno 111] Connection refused"
    answered = InferenceServerException(
        "Request for\n unknown model", status="StatusCode.NOT_FOUND"
    )
    err = map_error(answered, "metadata", url="h:1", protocol="grpc", kind=ModelError)
    assert type(err) is ModelError
    assert str(err) == "metadata: Request for unknown model"
    no_route = InferenceServerException(
        "failed to connect to all addresses", status="StatusCode.UNAVAILABLE"
    )
    assert isinstance(map_error(no_route, "x", url="h:1", protocol="grpc"), ServerUnavailable)


def test_wait_for_returns_the_last_reason() -> None:
    answers = iter(["starting", "loading", None])
    assert wait_for(lambda: next(answers), 10.0, interval_s=0.0) is None
    calls: list[int] = []

    def never() -> str:
        calls.append(1)
        return f"attempt {len(calls)}"

    assert wait_for(never, 0.0) == "attempt 1"  # always probed once, even with no time left
