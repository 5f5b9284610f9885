"""RemoteServer, wait_ready and server_info: bounded waits and errors that name the URL."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from perfkit.errors import ConfigError, ServerUnavailable
from perfkit.launch import (
    EmbeddedServer,
    RemoteServer,
    ServerHandle,
    free_ports,
    server_info,
    wait_ready,
)


@pytest.fixture(scope="module")
def embedded(zoo_repo: Path) -> Iterator[EmbeddedServer]:
    with EmbeddedServer(zoo_repo, load_models=["identity"]) as server:
        yield server


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_wait_ready_gives_up_on_a_dead_port(protocol: str) -> None:
    (port,) = free_ports(1)
    url = f"127.0.0.1:{port}"
    start = time.monotonic()
    with pytest.raises(
        ServerUnavailable, match=rf"No server ready at 127\.0\.0\.1:{port} \({protocol}\)"
    ):
        wait_ready(url, protocol, timeout_s=0.3)
    assert time.monotonic() - start < 5  # bounded, not a hang


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_server_info_on_a_dead_port(protocol: str) -> None:
    (port,) = free_ports(1)
    with pytest.raises(ServerUnavailable, match=rf"127\.0\.0\.1:{port} \({protocol}\)"):
        server_info(f"127.0.0.1:{port}", protocol, timeout_s=0.5)


def test_unknown_protocol() -> None:
    with pytest.raises(ConfigError, match="'http' or 'grpc'"):
        wait_ready("127.0.0.1:1", "tcp", timeout_s=0.1)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_remote_server_against_a_running_server(embedded: EmbeddedServer, protocol: str) -> None:
    url = embedded.url(protocol)  # type: ignore[arg-type]
    prefixed = f"{protocol}://{url}"
    with RemoteServer(prefixed, protocol, startup_timeout_s=5) as remote:
        assert remote.kind == "remote"
        assert remote.alive()
        assert remote.log_path is None
        assert remote.metrics_url == "127.0.0.1:8002/metrics"
        assert server_info(remote.url(protocol), protocol).kind == "perfkit_server"  # type: ignore[arg-type]
        other = "grpc" if protocol == "http" else "http"
        with pytest.raises(ConfigError, match=f"no {other} URL known"):
            remote.url(other)  # type: ignore[arg-type]
    assert embedded.alive()  # leaving a RemoteServer stops nothing


def test_remote_server_with_both_urls(embedded: EmbeddedServer) -> None:
    remote = RemoteServer(
        embedded.grpc_url, "grpc", http_url=embedded.http_url, metrics_url=embedded.metrics_url
    )
    assert isinstance(remote, ServerHandle)
    assert remote.http_url == embedded.http_url
    assert remote.grpc_url == embedded.grpc_url
    assert remote.metrics_url == embedded.metrics_url


def test_remote_server_not_there() -> None:
    (port,) = free_ports(1)
    remote = RemoteServer(f"127.0.0.1:{port}", "http", startup_timeout_s=0.2)
    assert not remote.alive()
    with pytest.raises(ServerUnavailable, match=f"127.0.0.1:{port}"), remote:
        pass
