"""A lean HTTP/1.1 server on asyncio.Protocol and httptools (the C parser uvicorn uses).

It parses requests, keeps connections alive, answers in order on each connection (pipelining)
and hands every complete request to a `Dispatch` callable, which returns a `Reply` at once (the
common case: no task, no await) or an awaitable of one. Bodies over the size limit are read and
dropped, then answered 413. No logging and no copies on the per-request path beyond joining a
body that arrived in several chunks.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import cast
from urllib.parse import unquote

import httptools

from perfkit_server.writes import Output, WriteBatch

_REASONS = {s.value: s.phrase for s in HTTPStatus}


@dataclass(slots=True)
class Request:
    """One parsed request: method, path (percent-encoded, no query), body, Triton's header."""

    method: str
    path: str
    body: bytes
    header_length: str | None


@dataclass(frozen=True, slots=True)
class Reply:
    """A response: status, body, content type and extra headers."""

    status: int
    body: bytes = b""
    content_type: str = "application/octet-stream"
    headers: tuple[tuple[str, str], ...] = ()


Dispatch = Callable[[Request], Reply | Awaitable[Reply]]


def json_reply(obj: object, status: int = 200) -> Reply:
    return Reply(status, json.dumps(obj).encode(), "application/json")


def error_reply(status: int, message: str) -> Reply:
    """Triton's error body: {"error": message}."""
    return json_reply({"error": message}, status)


@functools.lru_cache(maxsize=256)
def _head(status: int, content_type: str, keep_alive: bool) -> bytes:
    """A response head up to its blank line, with %d for the Content-Length."""
    reason = _REASONS.get(status, "Unknown")
    close = "" if keep_alive else "Connection: close\r\n"
    text = f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
    return (
        text.encode("latin-1").replace(b"%", b"%%")
        + b"Content-Length: %d\r\n"
        + (close.encode() + b"\r\n")
    )


def path_param(segment: str) -> str:
    """A path parameter, percent-decoded."""
    return unquote(segment) if "%" in segment else segment


class _Connection(asyncio.Protocol):
    """One client connection: parse, dispatch in order, write."""

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._parser = httptools.HttpRequestParser(self)
        self._queue: deque[tuple[Request | Reply, bool]] = deque()
        self._busy = False
        self._url = b""
        self._chunks: list[bytes] = []
        self._size = 0
        self._too_large = False
        self._header_length: str | None = None
        self._output: Output | None = None
        self._broken = False  # the parser failed: the rest of the stream is not HTTP

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transport is not an asyncio.Transport subclass
        self._output = Output(self._server.writes, cast(asyncio.Transport, transport))
        self._server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        if self._output is not None:
            self._output.lost()
            self._output = None

    def data_received(self, data: bytes) -> None:
        if self._broken:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._broken = True
            self._enqueue(error_reply(400, "protocol upgrades are not supported"), False)
        except httptools.HttpParserError as exc:
            # Answered after the requests before it (pipelining), then the connection closes.
            self._broken = True
            self._enqueue(error_reply(400, f"malformed HTTP request: {exc}"), False)

    def close(self) -> None:
        """Close after writing the replies already made."""
        if self._output is not None:
            self._output.close()

    # -- httptools callbacks -------------------------------------------------------------------
    # httptools calls only the callbacks a protocol defines: there is no on_message_begin or
    # on_headers_complete here (the per-message state is reset when a message completes), which
    # saves two Python calls per request.

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        size = len(name)
        if size == 31 and name.lower() == b"inference-header-content-length":
            self._header_length = value.decode("latin-1")
        elif (
            size == 6
            and name.lower() == b"expect"
            and value.lower() == b"100-continue"
            and self._output is not None
        ):
            # A server may send 100 Continue before it has read the remaining headers.
            self._output.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self._server.max_body:
            self._too_large = True
            self._chunks = []
        elif not self._too_large:
            self._chunks.append(body)

    def on_message_complete(self) -> None:
        keep_alive = bool(self._parser.should_keep_alive())
        chunks, url, header_length = self._chunks, self._url, self._header_length
        size, too_large = self._size, self._too_large
        self._url = b""
        self._chunks = []
        self._size = 0
        self._too_large = False
        self._header_length = None
        if too_large:
            limit = self._server.max_body
            reply = error_reply(
                413,
                f"Maximum request body size {limit} exceeded, actual body size {size}. "
                "Raise --http-max-input-size to accept larger bodies.",
            )
            self._enqueue(reply, keep_alive)
            return
        path = url.decode("latin-1")
        query = path.find("?")
        if query >= 0:
            path = path[:query]
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        request = Request(self._parser.get_method().decode("latin-1"), path, body, header_length)
        self._enqueue(request, keep_alive)

    # -- dispatch and write --------------------------------------------------------------------

    def _enqueue(self, item: Request | Reply, keep_alive: bool) -> None:
        """Handle a request (or send a ready reply) now, or after the ones before it."""
        if self._busy:
            self._queue.append((item, keep_alive))
        else:
            self._handle(item, keep_alive)

    def _handle(self, request: Request | Reply, keep_alive: bool) -> None:
        if isinstance(request, Reply):
            self._send(request, keep_alive)
            return
        result = self._server.dispatch(request)
        if isinstance(result, Reply):
            self._send(result, keep_alive, request.method == "HEAD")
            return
        self._busy = True
        task = asyncio.ensure_future(result)
        self._server.tasks.add(task)
        task.add_done_callback(lambda t: self._done(t, request, keep_alive))

    def _done(self, task: asyncio.Future[Reply], request: Request, keep_alive: bool) -> None:
        self._server.tasks.discard(task)
        self._busy = False
        if task.cancelled():
            self.close()
            return
        self._send(task.result(), keep_alive, request.method == "HEAD")
        while self._queue and not self._busy:
            self._handle(*self._queue.popleft())

    def _send(self, reply: Reply, keep_alive: bool, head_only: bool = False) -> None:
        output = self._output
        if output is None or output.close_after:  # gone, or closing after an earlier reply
            return
        head = _head(reply.status, reply.content_type, keep_alive) % len(reply.body)
        if reply.headers:
            extra = "".join(f"{name}: {value}\r\n" for name, value in reply.headers)
            head = head[:-2] + extra.encode("latin-1") + b"\r\n"
        output.write(head)
        if reply.body and not head_only:
            output.write(reply.body)
        if not keep_alive:
            output.close_after = True


class HttpServer:
    """Serves `dispatch` on host:port; `start`, then `stop` (drains in-flight requests)."""

    def __init__(self, dispatch: Dispatch, max_body: int) -> None:
        self.dispatch = dispatch
        self.max_body = max_body
        self.connections: set[_Connection] = set()
        self.tasks: set[asyncio.Future[Reply]] = set()
        self.writes = WriteBatch()
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen; returns the bound port."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), host, port, backlog=1024)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self, drain_secs: float) -> None:
        """Stop accepting, wait up to `drain_secs` for requests in flight, close connections."""
        if self._server is not None:
            self._server.close()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=drain_secs)
        for conn in list(self.connections):
            conn.close()
        if self._server is not None:
            await self._server.wait_closed()
