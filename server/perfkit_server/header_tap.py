"""A test hook: the request headers each service receives, written to a file the tests read.

Enabled only when the server's environment names a hook directory (PERFKIT_SERVER_TEST_HOOK_DIR,
the perfkit_identity backend's, see backends/identity.py); requests cannot turn it on and nothing
is sent back to clients. Each distinct header field is appended once, as "http NAME: VALUE" or
"grpc NAME: VALUE" (names lowercased), to `<dir>/request_headers.log`. Without the directory the
servers accept their own connection class: no cost on the request path.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from hpack import Decoder

from perfkit_server import grpc_wire, http_wire

HOOK_ENV = "PERFKIT_SERVER_TEST_HOOK_DIR"
FILE_NAME = "request_headers.log"

logger = logging.getLogger(__name__)


class _Sink:
    """Appends each distinct (service, name, value) once."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._seen: set[str] = set()

    def record(self, service: str, name: bytes, value: bytes) -> None:
        line = f"{service} {name.decode('latin-1').lower()}: {value.decode('latin-1')}"
        if line in self._seen:
            return
        self._seen.add(line)
        with open(self._path, "a", encoding="latin-1") as log:
            log.write(line + "\n")


class _RecordingDecoder(Decoder):
    """An HPACK decoder that also records every field it decodes."""

    def __init__(self, sink: _Sink, max_header_list_size: int) -> None:
        super().__init__(max_header_list_size=max_header_list_size)
        self._sink = sink

    def decode(self, data: bytes, raw: bool = False) -> Any:
        fields = super().decode(data, raw=raw)
        for name, value in fields:
            self._sink.record(
                "grpc",
                name if isinstance(name, bytes) else name.encode("latin-1"),
                value if isinstance(value, bytes) else value.encode("latin-1"),
            )
        return fields


def install_header_tap(server: http_wire.HttpServer | grpc_wire.GrpcServer) -> None:
    """With the hook directory set, make `server` record the headers of its requests."""
    directory = os.environ.get(HOOK_ENV, "")
    if not directory:
        return
    sink = _Sink(os.path.join(directory, FILE_NAME))
    logger.info("test hook: request headers are recorded in %s", os.path.join(directory, FILE_NAME))
    if isinstance(server, http_wire.HttpServer):

        class TappedHttp(http_wire._Connection):
            def on_header(self, name: bytes, value: bytes) -> None:
                sink.record("http", name, value)
                super().on_header(name, value)

        server.connection_class = TappedHttp
    else:

        class TappedGrpc(grpc_wire._Connection):
            def __init__(self, owner: grpc_wire.GrpcServer) -> None:
                super().__init__(owner)
                self._decoder = _RecordingDecoder(sink, owner.limits.max_header_list_bytes)

        server.connection_class = TappedGrpc
