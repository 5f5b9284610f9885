"""Readiness probes and server metadata over KServe v2 HTTP (stdlib urllib) and gRPC (tritonclient, lazily).

URLs are given as tritonclient and perf_analyzer take them: "host:port"; an "http://" or "grpc://"
prefix is accepted and stripped where the client needs it.
"""

from __future__ import annotations

import json
import logging
import socket
import time
import urllib.error
import urllib.request
from typing import Any, Literal

from perfkit.errors import ConfigError, MissingDependency, ServerUnavailable
from perfkit.results import ServerInfo

logger = logging.getLogger(__name__)

ServerProtocol = Literal["http", "grpc"]
PROTOCOLS: tuple[ServerProtocol, ...] = ("http", "grpc")

# Loopback servers must not be reached through an http_proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ProbeError(Exception):
    """One failed probe attempt (internal; `wait_ready` turns the last one into ServerUnavailable)."""


def check_protocol(protocol: str) -> ServerProtocol:
    if protocol == "http":
        return "http"
    if protocol == "grpc":
        return "grpc"
    raise ConfigError(f"unknown protocol {protocol!r}; expected 'http' or 'grpc' (-i http|grpc)")


def http_base(url: str) -> str:
    """Base URL for urllib: "host:port" -> "http://host:port" (an http(s):// prefix is kept)."""
    url = url.rstrip("/")
    return url if url.startswith(("http://", "https://")) else f"http://{url}"


def grpc_target(url: str) -> str:
    """Target for a gRPC channel: "grpc://host:port" -> "host:port"."""
    return url.removeprefix("grpc://").rstrip("/")


def _http_get(url: str, path: str, timeout_s: float) -> tuple[int, bytes]:
    try:
        with _OPENER.open(f"{http_base(url)}{path}", timeout=timeout_s) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ProbeError(f"GET {http_base(url)}{path}: {reason}") from exc


def _grpc_client(url: str, timeout_s: float) -> Any:
    try:
        import tritonclient.grpc as grpcclient
    except ImportError as exc:
        raise MissingDependency(
            "gRPC needs tritonclient[grpc]: pip install 'tritonclient[grpc]'"
        ) from exc
    return grpcclient.InferenceServerClient(grpc_target(url))


def probe_ready(url: str, protocol: ServerProtocol, timeout_s: float = 1.0) -> None:
    """One readiness check; raises ProbeError saying why the server is not ready."""
    if protocol == "http":
        status, body = _http_get(url, "/v2/health/ready", timeout_s)
        if status != 200:
            raise ProbeError(f"GET {http_base(url)}/v2/health/ready: HTTP {status} {body[:200]!r}")
        return
    from tritonclient.utils import InferenceServerException

    client = _grpc_client(url, timeout_s)
    try:
        if not client.is_server_ready(client_timeout=timeout_s):
            raise ProbeError(f"gRPC ServerReady at {grpc_target(url)}: not ready")
    except InferenceServerException as exc:
        raise ProbeError(f"gRPC ServerReady at {grpc_target(url)}: {exc.message()}") from exc
    finally:
        client.close()


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
    proto = check_protocol(protocol)
    deadline = time.monotonic() + timeout_s
    last = "no attempt made"
    while True:
        remaining = deadline - time.monotonic()
        try:
            probe_ready(url, proto, timeout_s=max(0.1, min(1.0, remaining)))
            return
        except ProbeError as exc:
            last = str(exc)
        if time.monotonic() >= deadline:
            break
        time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
    raise ServerUnavailable(
        f"no server ready at {url} ({proto}) after {timeout_s:g} s: {last}. Check that the server "
        f"is running and that the URL and protocol (-u/-i) are right."
    )


def server_info(
    url: str, protocol: str = "http", *, timeout_s: float = 5.0, embedded: bool = False
) -> ServerInfo:
    """Server metadata (name, version, extensions) as a `ServerInfo`; kind "triton" for Triton.

    `embedded` is recorded as given (True when perfkit started the server itself).
    """
    proto = check_protocol(protocol)
    try:
        if proto == "http":
            status, body = _http_get(url, "/v2", timeout_s)
            if status != 200:
                raise ProbeError(f"GET {http_base(url)}/v2: HTTP {status} {body[:200]!r}")
            try:
                meta = json.loads(body)
            except ValueError as exc:
                raise ProbeError(f"GET {http_base(url)}/v2: not JSON: {body[:200]!r}") from exc
            name, version = str(meta.get("name", "")), str(meta.get("version", ""))
            extensions = tuple(str(e) for e in meta.get("extensions", ()))
        else:
            from tritonclient.utils import InferenceServerException

            client = _grpc_client(url, timeout_s)
            try:
                meta = client.get_server_metadata(client_timeout=timeout_s)
            except InferenceServerException as exc:
                raise ProbeError(
                    f"gRPC ServerMetadata at {grpc_target(url)}: {exc.message()}"
                ) from exc
            finally:
                client.close()
            name, version, extensions = meta.name, meta.version, tuple(meta.extensions)
    except ProbeError as exc:
        raise ServerUnavailable(f"cannot read server metadata from {url} ({proto}): {exc}") from exc
    return ServerInfo(
        url=url,
        protocol=proto,
        kind="triton" if name == "triton" else (name or "unknown"),
        version=version,
        extensions=extensions,
        embedded=embedded,
    )
