"""HTTP/1.1 keep-alive transport: one request in flight per connection (asyncio.Protocol).

Per request the Python work is a write (queued, and written with the other requests of the loop
iteration), a minimal response parse (status and length; `tests/load/test_http1_parse.py` holds it
to httptools' parser) and a few list appends. Nothing here decodes tensors.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from ssl import SSLContext
from time import perf_counter_ns
from typing import cast

from perfkit.load.transports.base import LoopState, Timings, complete, start_closed


class HttpConn(asyncio.Protocol):
    """One keep-alive connection, one request in flight at a time."""

    def __init__(
        self,
        timings: Timings,
        state: LoopState,
        unsent: list[HttpConn],
        reqs: Sequence[bytes],
        closed_loop: bool,
    ) -> None:
        self.timings = timings
        self.state = state
        self.unsent = unsent
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
        # The feed's ticket of the request in flight (-1: a pre-encoded request).
        self.ticket = -1
        self.busy = False
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        st = self.state
        st.dead += 1
        if self.busy:
            self.busy = False
            if st.feed is not None:
                st.feed.give_back(self.ticket)
            st.inflight -= 1
            self.timings.error(
                perf_counter_ns(), f"connection closed by the server ({exc or 'EOF'})"
            )
            if self.closed_loop:
                st.idle += 1

    def fire(self, intended: int = 0) -> None:
        st = self.state
        if self.lost:
            self.timings.error(perf_counter_ns(), "connection to the server lost")
            if self.closed_loop:
                st.idle += 1
            return
        self.intended = intended
        st.inflight += 1
        self.resend(perf_counter_ns())

    def resend(self, now: int) -> None:
        """Queue this connection's next request for the end of this loop iteration."""
        feed = self.state.feed
        if feed is not None:
            self.req, self.ticket = feed.take()
        elif self.multi:
            st = self.state
            st.seq += 1
            self.req = self.reqs[st.seq % len(self.reqs)]
        self.busy = True
        self.sent = now
        unsent = self.unsent
        if not unsent:
            asyncio.get_running_loop().call_soon(_write_unsent, unsent, self.timings)
        unsent.append(self)

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
        self.timings.recv_ns += now - self.first
        self.buf = b""
        self.hlen = -1
        self.busy = False
        complete(
            self,
            self.sent,
            self.intended,
            now,
            None if buf[9:12] == b"200" else http_error(buf, hlen),
            self.ticket,
        )

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

    def close(self) -> None:
        if self.t is not None:
            self.t.close()


def _write_unsent(unsent: list[HttpConn], timings: Timings) -> None:
    """Write the requests queued in this loop iteration, one write per connection.

    Sending each request the moment its connection frees up costs a wake-up of the server per
    request (on loopback, most of a write's cost is waking the reader); written together at the
    end of the iteration, a burst wakes it once. A request's send time stays the moment it was
    ready, so its latency includes the wait, and send_ns counts the writes.
    """
    s = perf_counter_ns()
    for conn in unsent:
        if not conn.lost:
            conn.t.write(conn.req)  # type: ignore[union-attr]
    # Cleared in place: the pool's connections share this list (a write never re-enters them).
    unsent.clear()
    timings.send_ns += perf_counter_ns() - s


def http_error(buf: bytes, hlen: int) -> str:
    """The error of a non-200 response: its status and the JSON body's "error" (else the body)."""
    status = buf[9:12].decode(errors="replace")
    body = buf[hlen:] if hlen > 0 else b""
    try:
        msg = str(json.loads(body).get("error", body.decode(errors="replace")))
    except (ValueError, AttributeError):
        msg = body[:200].decode(errors="replace")
    return f"HTTP {status}: {msg}".strip()


def with_headers(req: bytes, headers: Sequence[tuple[str, str]]) -> bytes:
    """`req` (a complete HTTP/1.1 request) with `headers` added after its request line."""
    line_end = req.index(b"\r\n") + 2
    extra = "".join(f"{name}: {value}\r\n" for name, value in headers).encode("latin-1")
    return req[:line_end] + extra + req[line_end:]


class HttpPool:
    """Keep-alive connections to one server; grows on demand in open loop.

    With `tls` the connections are TLS (asyncio's SSL transport: the same protocol above it);
    `headers` are written into every request once, here.
    """

    def __init__(
        self,
        host: str,
        port: int,
        reqs: Sequence[bytes],
        closed_loop: bool,
        *,
        tls: SSLContext | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.host, self.port = host, port
        self.tls = tls
        self.timings = Timings()
        self.state = LoopState()
        self.reqs = [with_headers(r, headers) for r in reqs] if headers else reqs
        self.closed_loop = closed_loop
        self.conns: list[HttpConn] = []
        # Connections whose next request waits for the end of this loop iteration.
        self.unsent: list[HttpConn] = []
        self.connecting = 0

    async def _connect(self) -> HttpConn:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(
            lambda: HttpConn(self.timings, self.state, self.unsent, self.reqs, self.closed_loop),
            self.host,
            self.port,
            ssl=self.tls,
            server_hostname=self.host if self.tls else None,
        )
        self.conns.append(conn)
        return conn

    async def open(self, n: int) -> None:
        need = n - len([c for c in self.conns if not c.lost])
        if need > 0:
            new = await asyncio.gather(*(self._connect() for _ in range(need)))
            if not self.closed_loop:
                self.state.free.extend(new)

    def start_closed(self) -> None:
        start_closed(self.state, self.conns)

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
            self.timings.error(perf_counter_ns(), f"connect failed: {exc}")
            return
        finally:
            self.connecting -= 1
        conn.fire(intended)

    async def close(self) -> None:
        for c in self.conns:
            c.close()
        self.conns.clear()
        self.state.free.clear()
        await asyncio.sleep(0)
