"""The hot path: keep-alive HTTP/1.1 connections (asyncio.Protocol) and gRPC calls that send
pre-encoded request bytes and record perf_counter_ns timestamps into a `Recorder`.

Per request the Python work is a write (HTTP: queued, and written with the other requests of the
loop iteration), a minimal response parse (status + length) and a few list appends. Closed loop
re-sends from the completion callback itself (no task, no future); open loop takes a free slot
from a list. Nothing here decodes tensors.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import deque
from collections.abc import Sequence
from time import perf_counter_ns
from typing import Any, cast

MAX_ERROR_MESSAGES = 20


class Recorder:
    """Timestamps of completed requests, appended in completion order (ns, perf_counter)."""

    __slots__ = (
        "dead",
        "done",
        "err_done",
        "err_msgs",
        "free",
        "idle",
        "inflight",
        "intended",
        "left",
        "lock",
        "recv_ns",
        "running",
        "send_ns",
        "sent",
        "seq",
        "unsent",
        "waiting",
    )

    def __init__(self) -> None:
        self.sent: list[int] = []
        self.done: list[int] = []
        self.intended: list[int] = []
        self.err_done: list[int] = []
        self.err_msgs: list[str] = []
        # Closed loop: keep re-sending while running and left > 0; idle counts stopped slots.
        self.running = False
        self.left = 0
        self.idle = 0
        self.inflight = 0
        self.dead = 0
        self.seq = 0
        self.send_ns = 0
        self.recv_ns = 0
        self.free: list[Any] = []
        # Open loop: intended send times waiting for a free slot (in-flight cap reached); they
        # are sent, late, as slots free up, and their corrected latency includes the wait.
        self.waiting: deque[int] = deque()
        self.lock = threading.Lock()
        # HTTP connections whose next request waits for the end of this loop iteration.
        self.unsent: list[HttpConn] = []

    def error(self, done: int, msg: str) -> None:
        self.err_done.append(done)
        if len(self.err_msgs) < MAX_ERROR_MESSAGES:
            self.err_msgs.append(msg)


class HttpConn(asyncio.Protocol):
    """One keep-alive connection, one request in flight at a time."""

    def __init__(self, rec: Recorder, reqs: Sequence[bytes], closed_loop: bool) -> None:
        self.rec = rec
        self.reqs = reqs
        self.req = reqs[0]
        self.multi = len(reqs) > 1
        self.closed_loop = closed_loop
        self.t: asyncio.Transport | None = None
        self.buf = b""
        self.hlen = -1
        self.clen = 0
        self.sent = 0
        self.first = 0
        self.intended = 0
        self.busy = False
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        r = self.rec
        r.dead += 1
        if self.busy:
            self.busy = False
            r.inflight -= 1
            r.error(perf_counter_ns(), f"connection closed by the server ({exc or 'EOF'})")
            if self.closed_loop:
                r.idle += 1

    def fire(self, intended: int = 0) -> None:
        r = self.rec
        if self.lost:
            r.error(perf_counter_ns(), "connection to the server lost")
            if self.closed_loop:
                r.idle += 1
            return
        if self.multi:
            r.seq += 1
            self.req = self.reqs[r.seq % len(self.reqs)]
        self.intended = intended
        self.busy = True
        r.inflight += 1
        self.sent = perf_counter_ns()
        self._send(r)

    def _send(self, r: Recorder) -> None:
        """Queue this connection's request for the end of this loop iteration (`_write_unsent`)."""
        if not r.unsent:
            asyncio.get_running_loop().call_soon(_write_unsent, r)
        r.unsent.append(self)

    def data_received(self, data: bytes) -> None:
        now = perf_counter_ns()
        if self.buf:
            buf = self.buf + data
        else:
            buf = data
            self.first = now
        hlen = self.hlen
        if hlen < 0:
            i = buf.find(b"\r\n\r\n")
            if i < 0:
                self.buf = buf
                return
            j = buf.find(b"\r\nContent-Length: ", 0, i)
            if j >= 0:
                self.clen = int(buf[j + 18 : buf.find(b"\r", j + 18)])
            elif not self._other_length(buf, i):
                return
            hlen = self.hlen = i + 4
        if len(buf) < hlen + self.clen:
            self.buf = buf
            return
        self._complete(buf[9:12] == b"200", buf, now)

    def _other_length(self, buf: bytes, i: int) -> bool:
        # Rare path: a header spelled differently, or a chunked body (wait for the last chunk).
        head = buf[:i].lower()
        j = head.find(b"\r\ncontent-length:")
        if j >= 0:
            k = head.find(b"\r\n", j + 17)
            self.clen = int(head[j + 17 : k if k > 0 else None])
            return True
        if b"chunked" in head and not buf.endswith(b"0\r\n\r\n"):
            self.buf = buf
            return False
        self.clen = len(buf) - i - 4
        return True

    def _complete(self, ok: bool, buf: bytes, d: int) -> None:
        r = self.rec
        r.recv_ns += d - self.first
        if ok:
            # intended, sent, done in this order: readers slice by len(done).
            if not self.closed_loop:
                r.intended.append(self.intended)
            r.sent.append(self.sent)
            r.done.append(d)
        else:
            r.error(d, _http_error(buf, self.hlen))
        self.buf = b""
        self.hlen = -1
        if self.closed_loop:
            if r.running and r.left > 0:
                # Re-send at once from here: no task, no future (the in-flight count is unchanged).
                r.left -= 1
                if self.multi:
                    r.seq += 1
                    self.req = self.reqs[r.seq % len(self.reqs)]
                self.sent = d
                self._send(r)
                return
            self.busy = False
            r.inflight -= 1
            r.idle += 1
        else:
            self.busy = False
            r.inflight -= 1
            if r.waiting and r.running:
                self.fire(r.waiting.popleft())
            else:
                r.free.append(self)

    def close(self) -> None:
        if self.t is not None:
            self.t.close()


def _write_unsent(r: Recorder) -> None:
    """Write the requests queued in this loop iteration, one write per connection.

    Sending each request the moment its connection frees up costs a wake-up of the server per
    request (on loopback, most of a write's cost is waking the reader); written together at the
    end of the iteration, a burst wakes it once. A request's send time stays the moment it was
    ready, so its latency includes the wait, and send_ns counts the writes.
    """
    conns, r.unsent = r.unsent, []
    s = perf_counter_ns()
    for conn in conns:
        if not conn.lost:
            conn.t.write(conn.req)  # type: ignore[union-attr]
    r.send_ns += perf_counter_ns() - s


def _http_error(buf: bytes, hlen: int) -> str:
    status = buf[9:12].decode(errors="replace")
    body = buf[hlen:] if hlen > 0 else b""
    try:
        msg = str(json.loads(body).get("error", body.decode(errors="replace")))
    except (ValueError, AttributeError):
        msg = body[:200].decode(errors="replace")
    return f"HTTP {status}: {msg}".strip()


class HttpPool:
    """Keep-alive connections to one server; grows on demand in open loop."""

    def __init__(
        self, host: str, port: int, rec: Recorder, reqs: Sequence[bytes], closed_loop: bool
    ):
        self.host, self.port = host, port
        self.rec = rec
        self.reqs = reqs
        self.closed_loop = closed_loop
        self.conns: list[HttpConn] = []
        self.connecting = 0

    async def _connect(self) -> HttpConn:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(
            lambda: HttpConn(self.rec, self.reqs, self.closed_loop), self.host, self.port
        )
        conn = proto
        assert isinstance(conn, HttpConn)
        self.conns.append(conn)
        return conn

    async def open(self, n: int) -> None:
        need = n - len([c for c in self.conns if not c.lost])
        if need > 0:
            new = await asyncio.gather(*(self._connect() for _ in range(need)))
            if not self.closed_loop:
                self.rec.free.extend(new)

    def start_closed(self) -> None:
        """Closed loop: one request on every connection (each re-sends on completion)."""
        r = self.rec
        r.idle = 0
        for c in self.conns:
            if c.lost:
                r.idle += 1
                continue
            if r.running and r.left > 0:
                r.left -= 1
                c.fire()
            else:
                r.idle += 1

    def slot_count(self) -> int:
        return len(self.conns)

    def alive(self) -> bool:
        return any(not c.lost for c in self.conns)

    async def fire_new(self, intended: int) -> None:
        """Open loop with no free connection: connect one more and send on it (counted late)."""
        self.connecting += 1
        try:
            conn = await self._connect()
        except OSError as exc:
            self.rec.error(perf_counter_ns(), f"connect failed: {exc}")
            return
        finally:
            self.connecting -= 1
        conn.fire(intended)

    async def close(self) -> None:
        for c in self.conns:
            c.close()
        self.conns.clear()
        self.rec.free.clear()
        await asyncio.sleep(0)


class GrpcSlot:
    """One in-flight gRPC call slot on a shared channel (grpc's sync API: futures + callbacks).

    Callbacks run on grpc's polling thread; closed loop re-sends from there.
    """

    __slots__ = ("closed_loop", "intended", "mc", "rec", "req", "reqs", "sent")

    def __init__(self, rec: Recorder, mc: Any, reqs: Sequence[bytes], closed_loop: bool) -> None:
        self.rec = rec
        self.mc = mc
        self.reqs = reqs
        self.req = reqs[0]
        self.closed_loop = closed_loop
        self.sent = 0
        self.intended = 0

    def fire(self, intended: int = 0) -> None:
        r = self.rec
        if len(self.reqs) > 1:
            r.seq += 1
            self.req = self.reqs[r.seq % len(self.reqs)]
        self.intended = intended
        r.inflight += 1
        s = perf_counter_ns()
        self.sent = s
        f = self.mc.future(self.req)
        r.send_ns += perf_counter_ns() - s
        f.add_done_callback(self._done)

    def _done(self, f: Any) -> None:
        d = perf_counter_ns()
        r = self.rec
        exc = f.exception()
        if exc is None:
            if not self.closed_loop:
                r.intended.append(self.intended)
            r.sent.append(self.sent)
            r.done.append(d)
        else:
            details = exc.details() if hasattr(exc, "details") else str(exc)
            code = exc.code().name if hasattr(exc, "code") else "ERROR"
            r.error(d, f"gRPC {code}: {details}")
            if code == "UNAVAILABLE":
                r.dead += 1
        with r.lock:
            r.inflight -= 1
            if self.closed_loop:
                if r.running and r.left > 0:
                    r.left -= 1
                    again = True
                else:
                    r.idle += 1
                    again = False
            else:
                again = False
                if r.waiting and r.running:
                    queued = r.waiting.popleft()
                    self.fire(queued)
                else:
                    r.free.append(self)
        if again:
            self.fire()


class GrpcPool:
    """A grpc channel with `n` call slots (one channel; grpc multiplexes the streams)."""

    def __init__(self, url: str, rec: Recorder, reqs: Sequence[bytes], closed_loop: bool):
        import grpc

        self.rec = rec
        self.reqs = reqs
        self.closed_loop = closed_loop
        opts = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        self.channel = grpc.insecure_channel(url, options=opts)
        self.mc = self.channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=None,
            response_deserializer=None,
        )
        self.slots: list[GrpcSlot] = []
        self.connecting = 0

    async def open(self, n: int) -> None:
        while len(self.slots) < n:
            s = GrpcSlot(self.rec, self.mc, self.reqs, self.closed_loop)
            self.slots.append(s)
            if not self.closed_loop:
                self.rec.free.append(s)

    def start_closed(self) -> None:
        r = self.rec
        r.idle = 0
        for s in self.slots:
            with r.lock:
                go = r.running and r.left > 0
                if go:
                    r.left -= 1
                else:
                    r.idle += 1
            if go:
                s.fire()

    def slot_count(self) -> int:
        return len(self.slots)

    def alive(self) -> bool:
        return self.rec.dead < max(1, len(self.slots))

    async def fire_new(self, intended: int) -> None:
        s = GrpcSlot(self.rec, self.mc, self.reqs, self.closed_loop)
        self.slots.append(s)
        s.fire(intended)

    async def close(self) -> None:
        self.rec.free.clear()
        self.channel.close()
