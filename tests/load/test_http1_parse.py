"""The HTTP/1.1 transport's response parse, held to httptools' response parser (llhttp).

`HttpConn.data_received` parses only what the load generator needs (status and body length) on
the fast path; for every response below and every split of it into reads, it must decide that a
response is complete exactly when httptools does, with the same status (and, for an error, the
message of the JSON body httptools delivers). Chunked bodies are recognised by their last chunk
(`0\\r\\n\\r\\n`), which assumes no chunk carries a raw CRLF after a "0": JSON bodies never do.
"""

from __future__ import annotations

import json

import httptools
import pytest

from perfkit.load.transports.base import LoopState, Timings
from perfkit.load.transports.http1 import HttpConn


def response(status: str, body: bytes, *headers: str) -> bytes:
    head = "".join(f"{h}\r\n" for h in headers)
    return f"HTTP/1.1 {status}\r\n{head}\r\n".encode() + body


def chunked(status: str, *chunks: bytes) -> bytes:
    body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    return response(status, body, "Content-Type: application/json", "Transfer-Encoding: chunked")


OK_JSON = json.dumps({"model_name": "fast", "outputs": [{"name": "OUTPUT0", "data": [1, 2]}]})
ERR_JSON = json.dumps({"error": "unexpected inference input 'X' for model 'fast'"})

RESPONSES = {
    "content-length": response(
        "200 OK",
        OK_JSON.encode(),
        "Content-Type: application/json",
        f"Content-Length: {len(OK_JSON)}",
    ),
    "binary-extension": response(
        "200 OK",
        b'{"outputs":[]}' + bytes(range(256)) * 4,
        "Content-Type: application/octet-stream",
        "Inference-Header-Content-Length: 14",
        f"Content-Length: {14 + 1024}",
    ),
    "lower-case": response(
        "200 OK",
        OK_JSON.encode(),
        "content-type: application/json",
        f"content-length: {len(OK_JSON)}",
    ),
    "no-space": response("200 OK", b"{}", "Content-Length:2"),
    "empty-body": response("200 OK", b"", "Content-Length: 0"),
    "chunked": chunked("200 OK", OK_JSON[:20].encode(), OK_JSON[20:].encode()),
    "400-json": response(
        "400 Bad Request",
        ERR_JSON.encode(),
        "Content-Type: application/json",
        f"Content-Length: {len(ERR_JSON)}",
    ),
    "503-json-lower-case": response(
        "503 Service Unavailable", b'{"error":"model not ready"}', "content-length: 27"
    ),
    "404-text": response("404 Not Found", b"no route", "Content-Length: 8"),
}


class Reference:
    """httptools' view of a byte stream: the responses it completed (status, body)."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.body: list[bytes] = []
        self.done: list[tuple[int, bytes]] = []

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.done.append((self.parser.get_status_code(), b"".join(self.body)))
        self.body = []

    def feed(self, data: bytes) -> None:
        self.parser.feed_data(data)


def new_conn() -> HttpConn:
    # Open loop, not running: a completed request hands the connection back to the free list.
    conn = HttpConn(Timings(), LoopState(), [], [b"GET / HTTP/1.1\r\n\r\n"], closed_loop=False)
    conn.busy = True
    return conn


def outcomes(conn: HttpConn) -> int:
    return len(conn.timings.done) + len(conn.timings.err_done)


def expected_error(status: int, body: bytes) -> str:
    try:
        msg = json.loads(body)["error"]
    except ValueError:
        msg = body.decode()
    return f"HTTP {status}: {msg}"


def check_same(conn: HttpConn, ref: Reference) -> None:
    assert outcomes(conn) == len(ref.done)
    errors = iter(conn.timings.err_msgs)
    for status, body in ref.done:
        if status != 200:
            assert next(errors) == expected_error(status, body)
    assert next(errors, None) is None


@pytest.mark.parametrize("name", RESPONSES)
def test_every_split_completes_when_httptools_does(name):
    data = RESPONSES[name]
    for k in range(1, len(data)):
        conn, ref = new_conn(), Reference()
        for part in (data[:k], data[k:]):
            conn.data_received(part)
            ref.feed(part)
            check_same(conn, ref)
        assert outcomes(conn) == 1


def test_chunked_body_split_over_many_reads():
    data = chunked("200 OK", b'{"a":', b"[1,2,3]", b"}")
    for i in range(1, len(data) - 1):
        for j in range(i + 1, len(data)):
            conn, ref = new_conn(), Reference()
            for part in (data[:i], data[i:j], data[j:]):
                conn.data_received(part)
                ref.feed(part)
                check_same(conn, ref)


def test_byte_by_byte_and_keep_alive():
    # One connection answers every response in turn, fed one byte at a time: the parse state is
    # reset after each response.
    conn, ref = new_conn(), Reference()
    for data in RESPONSES.values():
        for b in range(len(data)):
            conn.data_received(data[b : b + 1])
            ref.feed(data[b : b + 1])
            check_same(conn, ref)
        conn.busy = True
    assert outcomes(conn) == len(RESPONSES)
    assert conn.buf == b""
    assert conn.hlen == -1


def test_status_and_timestamps_recorded():
    conn = new_conn()
    conn.sent, conn.intended = 5, 3
    conn.data_received(RESPONSES["content-length"])
    t = conn.timings
    assert t.intended == [3]
    assert t.sent == [5]
    assert len(t.done) == 1
    assert t.done[0] >= t.sent[0]
    assert conn.state.free == [conn]
    assert not conn.busy
