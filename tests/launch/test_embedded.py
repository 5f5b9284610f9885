"""EmbeddedServer starts perfkit_server on free loopback ports, serves, stops, and fails clearly."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from perfkit.errors import ConfigError, ServerUnavailable
from perfkit.launch import EmbeddedServer, ServerHandle, server_info
from perfkit.launch._probe import port_open
from tests.fixtures.zoo import ZooRepoFactory


def test_serves_zoo_models_and_stops(zoo_repo: Path) -> None:
    server = EmbeddedServer(zoo_repo, load_models=["identity", "add_sub"])
    with server:
        assert isinstance(server, ServerHandle)
        assert server.kind == "embedded"
        assert server.alive()
        assert server.url("http") == server.http_url
        assert server.url("grpc") == server.grpc_url
        assert server.metrics_url == f"127.0.0.1:{server.metrics_port}/metrics"
        assert len({server.http_port, server.grpc_port, server.metrics_port}) == 3
        log_path = server.log_path
        assert log_path is not None
        assert log_path.is_file()

        info = server_info(server.http_url, "http")
        assert info.kind == "perfkit_server"
        assert server_info(server.grpc_url, "grpc").version == info.version

        x = np.arange(32, dtype=np.float32).reshape(2, 16)
        http = httpclient.InferenceServerClient(server.http_url)
        inp = httpclient.InferInput("INPUT0", [2, 16], "FP32")
        inp.set_data_from_numpy(x)
        np.testing.assert_array_equal(http.infer("identity", [inp]).as_numpy("OUTPUT0"), x)
        assert not http.is_model_ready("mlp")  # explicit mode: only the models asked for
        http.close()
        grpc = grpcclient.InferenceServerClient(server.grpc_url)
        inputs = [grpcclient.InferInput(n, [2, 16], "FP32") for n in ("INPUT0", "INPUT1")]
        for i in inputs:
            i.set_data_from_numpy(x)
        np.testing.assert_array_equal(grpc.infer("add_sub", inputs).as_numpy("OUTPUT1"), x * 0)
        grpc.close()
    assert not server.alive()
    assert not port_open("127.0.0.1", server.http_port)
    assert not log_path.exists()  # a temp log is removed on a clean stop
    server.stop()  # idempotent


def test_mode_none_loads_everything_and_log_path_is_kept(zoo_repo: Path, tmp_path: Path) -> None:
    log = tmp_path / "logs" / "server.log"
    with EmbeddedServer(zoo_repo, model_control_mode="none", log_path=log) as server:
        client = httpclient.InferenceServerClient(server.http_url)
        assert all(client.is_model_ready(m) for m in ("identity", "add_sub", "mlp"))
        client.close()
    assert log.is_file()


def test_port_in_use_is_a_clear_error(zoo_repo: Path, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = EmbeddedServer(
            zoo_repo,
            load_models=(),
            http_port=port,
            startup_timeout_s=20,
            log_path=tmp_path / "server.log",
        )
        with pytest.raises(ServerUnavailable) as info, server:
            pass
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message
    assert "perfkit_server" in message
    assert not server.alive()


def test_server_exiting_at_start_shows_its_log(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-repo"
    with pytest.raises(ServerUnavailable, match=r"exited with code \d+ during start-up") as info:
        EmbeddedServer(missing, log_path=tmp_path / "server.log").start()
    message = str(info.value)
    assert "From its log" in message
    assert str(missing) in message  # the server's own complaint, from the log tail


def test_startup_wait_is_bounded_and_stops_the_server(zoo_repo: Path, tmp_path: Path) -> None:
    server = EmbeddedServer(zoo_repo, startup_timeout_s=0.0, log_path=tmp_path / "server.log")
    with pytest.raises(ServerUnavailable, match=r"not ready at 127\.0\.0\.1:\d+ after 0 s"):
        server.start()
    assert not server.alive()


def test_bad_model_control_mode() -> None:
    with pytest.raises(ConfigError, match="model_control_mode"):
        EmbeddedServer(Path("."), model_control_mode="sometimes")


def test_server_flags_reach_the_server(zoo_repo_factory: ZooRepoFactory, tmp_path: Path) -> None:
    repo = zoo_repo_factory("identity")
    (repo / "identity" / "config.pbtxt").unlink()  # completed from the ONNX graph when not strict
    server = EmbeddedServer(
        repo,
        model_control_mode="poll",
        repository_poll_secs=0.5,
        strict_model_config=False,
        log_verbose=1,
        log_path=tmp_path / "server.log",
    )
    with server:
        client = httpclient.InferenceServerClient(server.http_url)
        assert client.is_model_ready("identity")
        assert client.get_model_config("identity")["input"][0]["name"] == "INPUT0"
        client.close()
    assert (tmp_path / "server.log").stat().st_size > 0
