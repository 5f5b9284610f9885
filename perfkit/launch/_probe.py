"""The launchers' readiness wait and server metadata, on `perfkit.control.ControlClient`.

URLs are given as tritonclient and perf_analyzer take them: "host:port"; an "http://" or "grpc://"
prefix is accepted.
"""

from __future__ import annotations

import socket

from perfkit.control import PROTOCOLS, ControlClient, ServerProtocol, check_protocol
from perfkit.control import server_info as _server_info
from perfkit.results import ServerInfo

__all__ = [
    "PROTOCOLS",
    "ServerProtocol",
    "check_protocol",
    "port_open",
    "server_info",
    "wait_ready",
]


def port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def wait_ready(url: str, protocol: str = "http", timeout_s: float = 30.0) -> None:
    """Wait until the server at `url` reports ready; raise `ServerUnavailable` after `timeout_s`.

    The error names the URL, the protocol and the last error seen.
    """
    with ControlClient(url, protocol) as control:
        control.wait_ready(timeout_s)


def server_info(
    url: str, protocol: str = "http", *, timeout_s: float = 5.0, embedded: bool = False
) -> ServerInfo:
    """Server metadata (name, version, extensions) as a `ServerInfo`; kind "triton" for Triton.

    `embedded` is recorded as given (True when perfkit started the server itself).
    """
    proto = check_protocol(protocol)
    with ControlClient(url, proto, network_timeout_s=timeout_s) as control:
        metadata = control.server_metadata()  # ServerUnavailable names the URL and protocol
    return _server_info(metadata, url=url, protocol=proto, embedded=embedded)
