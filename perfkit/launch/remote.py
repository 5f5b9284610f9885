"""`RemoteServer`: a server perfkit did not start (ours, a real Triton, any KServe v2 server) at a URL."""

from __future__ import annotations

from pathlib import Path
from typing import Self

from perfkit.control import ControlClient, ServerProtocol, address, check_protocol
from perfkit.errors import ConfigError
from perfkit.launch._probe import wait_ready

# Triton's default metrics port; perf_analyzer's --metrics-url default is localhost:8002/metrics.
DEFAULT_METRICS_PORT = 8002


def _host(url: str) -> str:
    bare = url.split("://", 1)[-1]
    host = bare.split("/", 1)[0]
    if host.startswith("["):  # [ipv6]:port
        return host[: host.index("]") + 1]
    return host.rsplit(":", 1)[0] if ":" in host else host


class RemoteServer:
    """A running server at `url` spoken to over `protocol`; nothing to start or stop.

    As a context manager it waits (bounded by `startup_timeout_s`) until the server is ready and
    raises `ServerUnavailable` naming the URL otherwise. The other protocol's URL and the metrics URL
    can be given; the metrics URL defaults to "<host>:8002/metrics" as perf_analyzer's does.
    """

    kind = "remote"

    def __init__(
        self,
        url: str,
        protocol: str = "http",
        *,
        http_url: str | None = None,
        grpc_url: str | None = None,
        metrics_url: str | None = None,
        startup_timeout_s: float = 10.0,
    ) -> None:
        self.protocol: ServerProtocol = check_protocol(protocol)
        self._urls: dict[ServerProtocol, str | None] = {"http": http_url, "grpc": grpc_url}
        self._urls[self.protocol] = url if self.protocol == "http" else address(url)
        self._metrics_url = metrics_url or f"{_host(url)}:{DEFAULT_METRICS_PORT}/metrics"
        self.startup_timeout_s = startup_timeout_s

    def url(self, protocol: ServerProtocol) -> str:
        proto = check_protocol(protocol)
        value = self._urls[proto]
        if value is None:
            raise ConfigError(
                f"no {proto} URL known for the server at {self._urls[self.protocol]} "
                f"(given for {self.protocol} only); pass {proto}_url= or use -i {self.protocol}"
            )
        return value

    @property
    def http_url(self) -> str:
        return self.url("http")

    @property
    def grpc_url(self) -> str:
        return self.url("grpc")

    @property
    def metrics_url(self) -> str:
        return self._metrics_url

    @property
    def log_path(self) -> Path | None:
        return None

    def alive(self) -> bool:
        """One readiness probe (1 s timeout) over the main protocol."""
        with ControlClient(self.url(self.protocol), self.protocol) as control:
            return control.is_ready()

    def start(self) -> Self:
        wait_ready(self.url(self.protocol), self.protocol, self.startup_timeout_s)
        return self

    def stop(self) -> None:
        """Nothing to stop: perfkit did not start this server."""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<RemoteServer {self.protocol}={self._urls[self.protocol]}>"
