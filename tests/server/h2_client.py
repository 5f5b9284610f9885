"""A raw HTTP/2 peer for the gRPC server's hardening and fuzz tests: it writes frames as given
(valid or not) on a blocking loopback socket and reads the server's frames back, each read
bounded by the socket's timeout (a wait on a readable socket, never a sleep)."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

import hpack
import psutil
from tritonclient.grpc import service_pb2 as pb

from perfkit.http2 import (
    ACK,
    DATA,
    END_HEADERS,
    END_STREAM,
    FRAME,
    GOAWAY,
    HEADERS,
    PING,
    PREFACE,
    RST_STREAM,
    SETTINGS,
    U32,
    frame,
)

SERVICE = "/inference.GRPCInferenceService"


@dataclass(frozen=True)
class Frame:
    ftype: int
    flags: int
    sid: int
    payload: bytes

    @property
    def error_code(self) -> int:
        """RST_STREAM's code, or GOAWAY's."""
        if self.ftype == GOAWAY:
            return int(U32.unpack_from(self.payload, 4)[0])
        return int(U32.unpack_from(self.payload)[0])


def request_headers(method: str) -> list[tuple[str, str]]:
    """The header list of a gRPC request to `SERVICE/method`."""
    return [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", f"{SERVICE}/{method}"),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]


def message(body: bytes) -> bytes:
    """A gRPC length-prefixed message (uncompressed)."""
    return struct.pack(">BI", 0, len(body)) + body


def infer_request(model: str, dim: int = 16) -> bytes:
    """A serialized ModelInferRequest of one FP32 [1, dim] INPUT0."""
    req = pb.ModelInferRequest(model_name=model)
    tensor = req.inputs.add()
    tensor.name, tensor.datatype = "INPUT0", "FP32"
    tensor.shape.extend([1, dim])
    req.raw_input_contents.append(bytes(4 * dim))
    return bytes(req.SerializeToString())


class RawH2:
    """One connection; `open()` sends the preface and SETTINGS and waits for the server's."""

    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        host, port = url.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout_s)
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self._buf = b""
        self.server_settings: dict[int, int] = {}
        self.eof = False

    def open(self) -> RawH2:
        self.send(PREFACE + frame(SETTINGS, 0, 0))
        first = self.read()
        assert first is not None
        assert first.ftype == SETTINGS, first
        for off in range(0, len(first.payload), 6):
            key, value = struct.unpack_from(">HI", first.payload, off)
            self.server_settings[key] = value
        self.until(lambda f: f.ftype == SETTINGS and bool(f.flags & ACK))
        return self

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawH2:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def headers(self, sid: int, method: str, *, end_stream: bool = False) -> bytes:
        """A request HEADERS frame for `SERVICE/method` (encoded now: HPACK state is ours)."""
        block = self.encoder.encode(request_headers(method))
        return frame(HEADERS, END_HEADERS | (END_STREAM if end_stream else 0), sid, block)

    def call(self, sid: int, method: str, body: bytes) -> bytes:
        """HEADERS + one DATA with END_STREAM: a whole unary call."""
        return self.headers(sid, method) + frame(DATA, END_STREAM, sid, message(body))

    def read(self) -> Frame | None:
        """The next frame, or None at EOF."""
        while True:
            if len(self._buf) >= 9:
                hi, lo, ftype, flags, sid = FRAME.unpack_from(self._buf)
                length = (hi << 8) | lo
                if len(self._buf) >= 9 + length:
                    payload = self._buf[9 : 9 + length]
                    self._buf = self._buf[9 + length :]
                    return Frame(ftype, flags, sid & 0x7FFFFFFF, payload)
            try:
                chunk = self.sock.recv(1 << 16)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                self.eof = True
                return None
            self._buf += chunk

    def until(self, match: object) -> Frame:
        """Read until a frame `match(frame)` accepts; fails at EOF (or the socket's timeout)."""
        seen = []
        while (f := self.read()) is not None:
            if match(f):  # type: ignore[operator]
                return f
            seen.append(f)
        raise AssertionError(f"EOF before the frame expected; got {seen}")

    def goaway(self) -> Frame:
        """Read until the server's GOAWAY (then it closes the connection)."""
        return self.until(lambda f: f.ftype == GOAWAY)

    def trailers_of(self, sid: int) -> dict[str, str]:
        """Read until the HEADERS that end stream `sid`; its fields."""
        f = self.until(lambda f: f.ftype == HEADERS and f.sid == sid and bool(f.flags & END_STREAM))
        return dict(self.decoder.decode(f.payload))

    def reset_of(self, sid: int) -> Frame:
        return self.until(lambda f: f.ftype == RST_STREAM and f.sid == sid)

    def ping(self, data: bytes = b"pingpong") -> None:
        """Send a PING and read until its ACK: every frame sent before it has been processed."""
        self.send(frame(PING, 0, 0, data))
        self.until(lambda f: f.ftype == PING and bool(f.flags & ACK) and f.payload == data)


def rss_bytes(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)
