"""A lean HTTP/1.1 server on asyncio.Protocol and httptools (the C parser uvicorn uses).

It parses requests, keeps connections alive, answers in order on each connection (pipelining)
and hands every complete request to a `Dispatch` callable, which returns a `Reply` at once (the
common case: no task, no await) or an awaitable of one. Bodies over the size limit are read and
dropped, then answered 413. No logging and no copies on the per-request path beyond joining a
body that arrived in several chunks.

Every peer is bounded (`HttpLimits`): a request head over the size or field-count limit is
answered 431, connections over the cap get a 503 and are closed, and a connection stops being
read while its replies are not being read (asyncio's pause_writing) or while MAX_PIPELINED
requests wait behind one being served. The timeouts cost no timer per request: the hot path
counts the bytes and header fields it is fed, and one timer per server sweeps the connections
(`_Connection.sweep`) to close those idle or stuck in a request head.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from ssl import SSLContext
from typing import cast
from urllib.parse import unquote

import httptools

from perfkit_server.http_limits import HttpLimits
from perfkit_server.writes import Output, WriteBatch, pause_reading, resume_reading

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

# Why a connection is not being read (bits of `_Connection._paused`): its replies are not being
# read (asyncio's pause_writing), or it has pipelined this many requests behind one being served.
_UNREAD_REPLIES, _PIPELINE_FULL = 1, 2
MAX_PIPELINED = 16


def json_reply(obj: object, status: int = 200) -> Reply:
    return Reply(status, json.dumps(obj).encode(), "application/json")


def error_reply(status: int, message: str) -> Reply:
    """Triton's error body: {"error": message}."""
    return json_reply({"error": message}, status)


@functools.lru_cache(maxsize=1024)
def _head(
    status: int, content_type: str, keep_alive: bool, headers: tuple[tuple[str, str], ...] = ()
) -> bytes:
    """A response head up to its blank line, with %d for the Content-Length.

    Cached with its extra headers: a binary infer reply's Inference-Header-Content-Length is the
    same for every request of one shape, so its head is built once, not joined per request.

    Every reply says whether the connection stays open: an HTTP/1.0 client that asked for
    keep-alive waits for the close otherwise (RFC 9112 section 9.3), and saying it to an HTTP/1.1
    client as well (as nginx does) costs no per-request check of the request's version.
    """
    reason = _REASONS.get(status, "Unknown")
    close = "Connection: keep-alive\r\n" if keep_alive else "Connection: close\r\n"
    text = f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
    text += "".join(f"{name}: {value}\r\n" for name, value in headers)
    return (
        text.encode("latin-1").replace(b"%", b"%%")
        + b"Content-Length: %d\r\n"
        + (close.encode() + b"\r\n")
    )


def path_param(segment: str) -> str:
    """A path parameter, percent-decoded."""
    return unquote(segment) if "%" in segment else segment


_REFUSED = (
    _head(503, "application/json", False) % len(b'{"error":"too many connections"}')
    + b'{"error":"too many connections"}'
)


class _Connection(asyncio.Protocol):
    """One client connection: parse, dispatch in order, write."""

    # Slots: attribute reads and writes on the per-request path cost less than a __dict__'s.
    __slots__ = (
        "_active_at",
        "_broken",
        "_busy",
        "_chunks",
        "_fields",
        "_head_bytes",
        "_head_since",
        "_header_length",
        "_max_fields",
        "_max_head",
        "_output",
        "_parser",
        "_paused",
        "_queue",
        "_server",
        "_size",
        "_swept",
        "_too_large",
        "_transport",
        "_url",
    )

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
        self._fields = 0  # header fields in this request
        self._max_fields = server.limits.max_header_count
        self._max_head = server.limits.max_header_bytes
        # Bytes fed since the last complete request (the head, then the body); -1 once `sweep`
        # has seen the connection between requests. Its only per-request cost is `+= len(data)`.
        self._head_bytes = 0
        self._swept: int | None = None  # `_head_bytes` at the last sweep; None: force activity
        self._active_at = 0.0  # loop time of the last activity the sweep saw
        self._head_since: float | None = None  # when the sweep first saw this request's head
        self._transport: asyncio.Transport | None = None
        self._paused = 0  # _UNREAD_REPLIES | _PIPELINE_FULL while reading is paused
        self._output: Output | None = None
        self._broken = False  # the parser failed or a limit was hit: read no more

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transport is not an asyncio.Transport subclass
        tr = cast(asyncio.Transport, transport)
        server = self._server
        if len(server.connections) >= server.connection_cap:
            # Refused: a 503 and the close, before reading anything; the others keep being served.
            self._broken = True
            tr.write(_REFUSED)
            tr.close()
            return
        self._transport = tr
        self._output = Output(server.writes, tr)
        self._active_at = asyncio.get_running_loop().time()
        server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self._transport = None
        if self._output is not None:
            self._output.lost()
            self._output = None

    def pause_writing(self) -> None:
        # The client does not read its replies: read no more requests until it does, so a
        # client that pipelines and never reads holds the transport's buffer, not all replies.
        self._pause(_UNREAD_REPLIES)

    def resume_writing(self) -> None:
        self._swept = None  # the client read: that is activity for the idle timeout
        self._resume(_UNREAD_REPLIES)

    def _pause(self, why: int) -> None:
        self._paused = pause_reading(self._transport, self._paused, why)

    def _resume(self, why: int) -> None:
        self._paused = resume_reading(self._transport, self._paused, why)

    def data_received(self, data: bytes) -> None:
        if self._broken:
            return
        output = self._output
        if output is not None and output._chunks:
            # A second read in one loop iteration (uvloop reads a socket up to 32 times before
            # it runs callbacks): write the replies to the first now, so that pause_writing can
            # stop the reads of a client that is not reading them.
            output.flush()
        self._head_bytes += len(data)
        if self._head_bytes > self._max_head:
            self._feed_in_pieces(data)
            return
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._parse_failed(exc)

    def _feed(self, data: memoryview) -> None:
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._parse_failed(exc)

    def _parse_failed(self, exc: Exception) -> None:
        # Answered after the requests before it (pipelining), then the connection closes.
        if isinstance(exc, httptools.HttpParserUpgrade):
            self._fail(400, "protocol upgrades are not supported")
        elif self._fields > self._max_fields:
            self._too_many_fields()
        else:
            self._fail(400, f"malformed HTTP request: {exc}")

    def _too_many_fields(self) -> None:
        self._fail(
            431,
            f"request has more than {self._max_fields} header fields; raise "
            "--http-max-header-count to accept more",
        )

    def _feed_in_pieces(self, data: bytes) -> None:
        """Feed a read that may hold a head over the limit: a quarter of the limit at a time
        while in a head, the rest of a body at once; 431 as soon as a head passes the limit.

        `_head_bytes` restarts at each complete request and the rest of that piece goes
        uncounted, so a head is refused by the time it is 1.25 x the limit at most, and a head
        within the limit never is.
        """
        self._head_bytes -= len(data)
        view = memoryview(data)
        step = max(1, self._max_head // 4)
        start, end = 0, len(view)
        while start < end and not self._broken:
            stop = end if self._size or self._too_large else min(end, start + step)
            self._head_bytes += stop - start
            self._feed(view[start:stop])
            start = stop
            if self._head_bytes - self._size > self._max_head and not self._broken:
                self._fail(
                    431,
                    f"request header fields larger than {self._max_head} bytes; raise "
                    "--http-max-header-size to accept larger ones",
                )

    def _fail(self, status: int, message: str) -> None:
        """Answer `status` after the replies before it, then close; read nothing more."""
        self._broken = True
        self._enqueue(error_reply(status, message), False)

    def close(self) -> None:
        """Close after writing the replies already made."""
        if self._output is not None:
            self._output.close()

    def sweep(self, now: float, header_timeout: float, idle_timeout: float) -> None:
        """Close this connection if it idled too long or sits in a request head too long.

        Called once per sweep interval by the server's timer, so the timeouts are as precise as
        that interval. A request being served (or queued) is never timed out here; a client
        that does not read its replies is idle until it reads.
        """
        if self._broken or self._output is None:
            return
        head = self._head_bytes
        if self._busy or self._queue or head != self._swept:
            self._active_at = now
        if head == 0:
            head = self._head_bytes = -1  # between requests; the next byte makes it >= 0
        self._swept = head
        if self._busy or self._queue:
            self._head_since = None
            return
        partial = head > 0 or bool(self._url)
        if not partial or self._size:
            self._head_since = None
        elif self._head_since is None:
            self._head_since = now
        if self._head_since is not None and now - self._head_since > header_timeout:
            self._fail(408, f"request head not received within {header_timeout:g} s")
        elif now - self._active_at > idle_timeout:
            if partial:
                self._fail(408, f"request stalled for {idle_timeout:g} s")
            else:
                self._broken = True
                self.close()

    # -- httptools callbacks -------------------------------------------------------------------
    # httptools calls only the callbacks a protocol defines: there is no on_message_begin or
    # on_headers_complete here (the per-message state is reset when a message completes), which
    # saves two Python calls per request.

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        # Counted here, checked once per request (on_message_complete); a head that never
        # ends is bounded by its size instead.
        self._fields += 1
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

    def on_chunk_header(self) -> None:
        # A chunked body: the head is complete; the chunk framing is not head bytes.
        self._head_bytes = self._size

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self._server.max_body:
            self._too_large = True
            self._chunks = []
        elif not self._too_large:
            self._chunks.append(body)

    def on_message_complete(self) -> None:
        if self._fields > self._max_fields:
            raise httptools.HttpParserError("too many header fields")  # answered 431, closed
        keep_alive = self._parser.should_keep_alive()
        chunks, url, header_length = self._chunks, self._url, self._header_length
        size, too_large = self._size, self._too_large
        self._url = b""
        self._chunks = []
        self._size = 0
        self._too_large = False
        self._header_length = None
        self._head_bytes = 0
        self._fields = 0
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
            if len(self._queue) >= MAX_PIPELINED:
                self._pause(_PIPELINE_FULL)  # read on once the requests before are answered
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
        if self._paused & _PIPELINE_FULL and len(self._queue) < MAX_PIPELINED:
            self._resume(_PIPELINE_FULL)

    def _send(self, reply: Reply, keep_alive: bool, head_only: bool = False) -> None:
        output = self._output
        if output is None or output.close_after:  # gone, or closing after an earlier reply
            return
        head = _head(reply.status, reply.content_type, keep_alive, reply.headers)
        output.write(head % len(reply.body))
        if reply.body and not head_only:
            output.write(reply.body)
        if not keep_alive:
            output.close_after = True


class HttpServer:
    """Serves `dispatch` on host:port; `start`, then `stop` (drains in-flight requests)."""

    def __init__(self, dispatch: Dispatch, limits: HttpLimits) -> None:
        self.dispatch = dispatch
        self.limits = limits
        self.max_body = limits.max_body
        self.connection_cap = limits.connection_cap()
        self.connections: set[_Connection] = set()
        self.tasks: set[asyncio.Future[Reply]] = set()
        self.writes = WriteBatch()
        # What each accepted connection is (a test hook may substitute a subclass: header_tap).
        self.connection_class: type[_Connection] = _Connection
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    async def start(self, host: str, port: int, ssl: SSLContext | None = None) -> int:
        """Listen (over TLS with `ssl`); returns the bound port."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: self.connection_class(self), host, port, backlog=1024, ssl=ssl
        )
        self._sweeper = loop.call_later(self.limits.sweep_secs(), self._sweep)
        return int(self._server.sockets[0].getsockname()[1])

    def _sweep(self) -> None:
        """One timer for every connection's timeouts (no timer per request or connection)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        limits = self.limits
        header_timeout, idle_timeout = limits.header_timeout_secs, limits.keepalive_timeout_secs
        for conn in list(self.connections):
            conn.sweep(now, header_timeout, idle_timeout)
        self._sweeper = loop.call_later(limits.sweep_secs(), self._sweep)

    async def stop(self, drain_secs: float) -> None:
        """Stop accepting, wait up to `drain_secs` for requests in flight, close connections."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._server is not None:
            self._server.close()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=drain_secs)
        for conn in list(self.connections):
            conn.close()
        if self._server is not None:
            await self._server.wait_closed()
