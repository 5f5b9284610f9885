"""Which protocol answers at a port: tells the HTTP port given with -i grpc (and the gRPC port
given with -i http) from a server that is not there or not ready yet.

One plain TCP connection, an HTTP/1.1 request (GET /v2/health/live) and the first bytes of the
answer: an HTTP/1.1 server answers with a status line ("HTTP/1.1 200 ..."); an HTTP/2 (gRPC)
server with HTTP/2 frames (its SETTINGS, then a GOAWAY: a 9-byte frame header whose fourth byte
is the frame type). (Triton's HTTP port closes an HTTP/2 preface without a byte, so the preface
would not tell.) Anything else (no answer, refused, TLS) says nothing. Standard library only.
"""

from __future__ import annotations

import socket

from perfkit.errors import ConfigError

_H2_SETTINGS, _H2_GOAWAY = 0x4, 0x7
PROBE_TIMEOUT_S = 2.0


def _first_bytes(host: str, port: int, hello: bytes, timeout_s: float) -> bytes:
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.sendall(hello)
        data = b""
        while len(data) < 9:
            chunk = sock.recv(64)
            if not chunk:
                break
            data += chunk
        return data


def answering_protocol(
    host: str, port: int, protocol: str, *, timeout_s: float = PROBE_TIMEOUT_S
) -> str | None:
    """The protocol heard, "HTTP/1.1" or "HTTP/2", when the server at host:port answers the other
    protocol than `protocol` ("http" or "grpc") would speak; None when it cannot tell."""
    hello = f"GET /v2/health/live HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    try:
        data = _first_bytes(host, port, hello, timeout_s)
    except (OSError, UnicodeError):
        return None
    if data.startswith(b"HTTP/1."):
        return "HTTP/1.1" if protocol == "grpc" else None
    if len(data) >= 9 and data[3] in (_H2_SETTINGS, _H2_GOAWAY):
        return "HTTP/2" if protocol == "http" else None
    return None


def check_port(address: str, protocol: str, *, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Raise ConfigError when `address` ("host:port", plain TCP) answers the other protocol than
    `protocol`: the port of the other endpoint was given (-u) for this -i."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return
    host = host.strip("[]") or "localhost"
    heard = answering_protocol(host, int(port), protocol, timeout_s=timeout_s)
    if heard == "HTTP/1.1":
        raise ConfigError(
            f"{address} answers HTTP/1.1; it looks like the HTTP port: use -i http or the gRPC "
            "port (8001 by default)."
        )
    if heard == "HTTP/2":
        raise ConfigError(
            f"{address} answers HTTP/2 (gRPC); it looks like the gRPC port: use -i grpc or the "
            "HTTP port (8000 by default)."
        )
