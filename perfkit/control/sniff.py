"""Which protocol answers at a port: tells the HTTP port given with -i grpc (and the gRPC port
given with -i http) from a server that is not there or not ready yet.

One plain TCP connection, the request the chosen protocol would start with, and the first bytes
of the answer: an HTTP/1.1 server answers the HTTP/2 connection preface with a status line
("HTTP/1.1 400 ..."); an HTTP/2 (gRPC) server answers an HTTP/1.1 request with HTTP/2 frames
(its SETTINGS, then a GOAWAY: a 9-byte frame header whose fourth byte is the frame type).
Anything else (no answer, refused, TLS) says nothing. Standard library only.
"""

from __future__ import annotations

import socket

from perfkit.errors import ConfigError

# RFC 9113 3.4: the client connection preface, then an empty SETTINGS frame.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
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
    """The protocol heard, "HTTP/1.1" or "HTTP/2", when the server at host:port answers the other protocol than
    `protocol` ("http" or "grpc") would speak; None when it cannot tell."""
    try:
        if protocol == "grpc":
            data = _first_bytes(host, port, _H2_PREFACE, timeout_s)
            return "HTTP/1.1" if data.startswith(b"HTTP/1.") else None
        hello = f"GET /v2/health/live HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
        data = _first_bytes(host, port, hello, timeout_s)
    except (OSError, UnicodeError):
        return None
    if len(data) >= 9 and data[3] in (_H2_SETTINGS, _H2_GOAWAY) and not data.startswith(b"HTTP"):
        return "HTTP/2"
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
