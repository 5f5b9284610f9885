"""A lean gRPC-over-HTTP/2 client for the hot path: unary ModelInfer with pre-encoded bytes.

grpcio costs 150-250 CPU-µs per call in Python (futures, callbacks, its polling threads); this
speaks just enough HTTP/2 for unary calls on an asyncio.Protocol: a constant HPACK header block
(literals only, so no encoder state), DATA frames split to the peer's frame size and sent within
its flow-control windows, and a frame parser that needs no HPACK decoding: a call succeeded when
its stream carried a DATA frame before it ended (a failed unary call is a trailers-only response
or RST_STREAM). Error details are fetched once through tritonclient by the caller.
"""

from __future__ import annotations

import asyncio
import zlib
from collections import deque
from collections.abc import Sequence
from ssl import SSLContext
from time import perf_counter_ns
from typing import Any, cast

from perfkit.http2 import (
    ACK,
    DATA,
    DEFAULT_WINDOW,
    END_HEADERS,
    END_STREAM,
    FRAME,
    GOAWAY,
    HEADERS,
    MAX_WINDOW,
    PADDED,
    PING,
    PREFACE,
    RST_STREAM,
    SETTING,
    SETTINGS,
    U32,
    WINDOW_UPDATE,
    frame,
    hpack_literal,
    hpack_string,
)
from perfkit.load.transports.base import LoopState, Timings, complete, start_closed

METHOD = "/inference.GRPCInferenceService/ModelInfer"
NO_MESSAGE = "gRPC call failed (no response message: an error status)"


def header_block(authority: str, path: str = METHOD, compression: str = "none") -> bytes:
    """HPACK block for a gRPC unary call: static-table indexes and literals without indexing
    (with `compression` gzip or deflate, the grpc-encoding its messages carry)."""
    encoding = (
        hpack_literal(b"grpc-encoding", compression.encode())
        + hpack_literal(b"grpc-accept-encoding", b"identity,deflate,gzip")
        if compression != "none"
        else b""
    )
    return (
        b"\x83"  # :method POST
        + b"\x86"  # :scheme http
        + b"\x04" + hpack_string(path.encode())  # :path (name index 4)
        + b"\x01" + hpack_string(authority.encode())  # :authority (name index 1)
        + b"\x0f\x10" + hpack_string(b"application/grpc")  # content-type (name index 31)
        + hpack_literal(b"te", b"trailers")
        + hpack_literal(b"user-agent", b"perfkit")
        + encoding  # after the pseudo-headers, as HTTP/2 requires
    )  # fmt: skip


def grpc_message(msg: bytes, compression: str = "none") -> bytes:
    """`msg` as a gRPC length-prefixed message, compressed with gzip or deflate (flag 1) as
    gRPC specifies them (gzip: RFC 1952; deflate: the zlib format, RFC 1950), or not ("none")."""
    if compression == "none":
        return b"\x00" + U32.pack(len(msg)) + msg
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}[compression]
    c = zlib.compressobj(wbits=wbits)
    body = c.compress(msg) + c.flush()
    return b"\x01" + U32.pack(len(body)) + body


def secured_block(block: bytes, https: bool, metadata: Sequence[tuple[str, str]]) -> bytes:
    """A `header_block` with `:scheme https` (over TLS) and `metadata` appended (lowercase
    names: -H as gRPC sends it), still literals only."""
    if https:
        if block[1:2] != b"\x86":  # :scheme http, static-table index 6
            raise ValueError("not a header_block: :scheme is not its second field")
        block = block[:1] + b"\x87" + block[2:]  # :scheme https, index 7
    return block + b"".join(hpack_literal(n.encode(), v.encode()) for n, v in metadata)


class H2Conn(asyncio.Protocol):
    """One HTTP/2 connection carrying many concurrent unary calls (one stream each).

    It is the `Slot` of each of its streams: the pool puts it on the free list once per stream.
    """

    def __init__(
        self,
        timings: Timings,
        state: LoopState,
        reqs: Sequence[bytes],
        authority: str,
        closed_loop: bool,
        compression: str = "none",
    ) -> None:
        self.timings = timings
        self.state = state
        self.closed_loop = closed_loop
        self.block = header_block(authority, compression=compression)
        self.compression = compression
        # gRPC length-prefixed messages, one per input set (compressed once, here).
        self.msgs = [grpc_message(r, compression) for r in reqs]
        self.multi = len(self.msgs) > 1
        self.t: asyncio.Transport | None = None
        self.buf = b""
        self.next_sid = 1
        # sid -> [sent_ns, intended_ns, got_data, the feed's ticket (-1: none)]
        self.calls: dict[int, list[int]] = {}
        self.send_window = DEFAULT_WINDOW
        self.peer_init_window = DEFAULT_WINDOW
        self.max_frame = 16384
        self.max_streams = 1 << 31
        # While a chunk is handled: writes collected for one transport.write.
        self.out: list[bytes] | None = None
        self.stream_windows: dict[int, int] = {}
        # Streams whose DATA is not (fully) sent yet: [sid, msg, offset].
        self.pending: deque[list[Any]] = deque()
        self.recv_unacked = 0
        self.lost = False
        self.ready = asyncio.get_running_loop().create_future()

    # -- connection -----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        settings = SETTING.pack(0x2, 0) + SETTING.pack(0x4, MAX_WINDOW)
        transport.write(
            PREFACE
            + frame(SETTINGS, 0, 0, settings)
            + frame(WINDOW_UPDATE, 0, 0, U32.pack(MAX_WINDOW - DEFAULT_WINDOW))
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"HTTP/2 connection closed: {exc or 'EOF'}"))
        st = self.state
        st.dead += 1
        now = perf_counter_ns()
        for call in self.calls.values():
            if st.feed is not None:
                st.feed.give_back(call[3])
            self.timings.error(now, f"connection closed by the server ({exc or 'EOF'})")
            st.inflight -= 1
            if self.closed_loop:
                st.idle += 1
        self.calls.clear()

    def close(self) -> None:
        if self.t is not None:
            self.t.close()

    # -- sending --------------------------------------------------------------------------------

    def fire(self, intended: int = 0) -> None:
        if self.lost:
            self.timings.error(perf_counter_ns(), "connection to the server lost")
            if self.closed_loop:
                self.state.idle += 1
            return
        self.state.inflight += 1
        self.resend(0, intended)

    def resend(self, now: int, intended: int = 0) -> None:
        """Start the next call on a new stream (its send time is taken here, not `now`)."""
        feed = self.state.feed
        ticket = -1
        if feed is not None:
            raw, ticket = feed.take()
            msg = grpc_message(raw, self.compression)
        elif self.multi:
            st = self.state
            st.seq += 1
            msg = self.msgs[st.seq % len(self.msgs)]
        else:
            msg = self.msgs[0]
        sid = self.next_sid
        self.next_sid = sid + 2
        s = perf_counter_ns()
        self.calls[sid] = [s, intended, 0, ticket]
        n = len(msg)
        hb = self.block
        lb = len(hb)
        head = FRAME.pack(lb >> 8, lb & 0xFF, HEADERS, END_HEADERS, sid) + hb
        if (
            n <= self.send_window
            and n <= self.peer_init_window
            and n <= self.max_frame
            and not self.pending
        ):
            self.send_window -= n
            data = head + FRAME.pack(n >> 8, n & 0xFF, DATA, END_STREAM, sid) + msg
            if self.out is not None:
                self.out.append(data)
            else:
                self.t.write(data)  # type: ignore[union-attr]
        else:
            self._w(head)
            self.stream_windows[sid] = self.peer_init_window
            self.pending.append([sid, msg, 0])
            self._flush()
        self.timings.send_ns += perf_counter_ns() - s

    def _flush(self) -> None:
        while self.pending:
            item = self.pending[0]
            sid, msg, off = item
            if sid not in self.calls:  # reset meanwhile
                self.pending.popleft()
                self.stream_windows.pop(sid, None)
                continue
            while off < len(msg):
                avail = min(self.send_window, self.stream_windows.get(sid, 0), self.max_frame)
                if avail <= 0:
                    item[2] = off
                    return
                chunk = msg[off : off + avail]
                off += len(chunk)
                last = off >= len(msg)
                self._w(frame(DATA, END_STREAM if last else 0, sid, chunk))
                self.send_window -= len(chunk)
                self.stream_windows[sid] -= len(chunk)
            self.pending.popleft()
            self.stream_windows.pop(sid, None)

    # -- receiving ------------------------------------------------------------------------------

    def _w(self, data: bytes) -> None:
        if self.out is not None:
            self.out.append(data)
        else:
            self.t.write(data)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        # Everything written while handling this chunk (re-sends, acks) leaves in one write.
        self.out = []
        try:
            self._frames(data)
        finally:
            out, self.out = self.out, None
            if out:
                self.t.write(out[0] if len(out) == 1 else b"".join(out))  # type: ignore[union-attr]

    def _frames(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        pos = 0
        end = len(buf)
        unpack = FRAME.unpack_from
        while end - pos >= 9:
            hi, lo, ftype, flags, sid = unpack(buf, pos)
            n = (hi << 8) | lo
            if end - pos - 9 < n:
                break
            p = pos + 9
            pos = p + n
            if ftype == DATA:
                self.recv_unacked += n
                call = self.calls.get(sid)
                if call is not None and n > (buf[p] + 1 if flags & PADDED else 0):
                    call[2] = 1
                if flags & END_STREAM:
                    self._end(sid, "")
            elif ftype == HEADERS:
                # Trailers end a call: a success when its stream carried a message.
                if flags & END_STREAM and (call := self.calls.pop(sid, None)) is not None:
                    complete(
                        self, call[0], call[1], perf_counter_ns(),
                        None if call[2] else NO_MESSAGE, call[3],
                    )  # fmt: skip
            elif ftype == WINDOW_UPDATE:
                inc = U32.unpack_from(buf, p)[0] & MAX_WINDOW
                if sid == 0:
                    self.send_window += inc
                elif sid in self.stream_windows:
                    self.stream_windows[sid] += inc
                if self.pending:
                    self._flush()
            elif ftype == SETTINGS:
                if not flags & ACK:
                    self._settings(buf[p:pos])
            elif ftype == PING:
                if not flags & ACK:
                    self._w(frame(PING, ACK, 0, buf[p:pos]))
            elif ftype == RST_STREAM:
                self._end(sid, "stream reset by the server")
            elif ftype == GOAWAY:
                last = U32.unpack_from(buf, p)[0] & MAX_WINDOW
                for s in [s for s in self.calls if s > last]:
                    self._end(s, "server sent GOAWAY")
                self.lost = True
        self.buf = buf[pos:] if pos < end else b""
        if self.recv_unacked > (1 << 30):
            self._w(frame(WINDOW_UPDATE, 0, 0, U32.pack(self.recv_unacked)))
            self.recv_unacked = 0

    def _settings(self, payload: bytes) -> None:
        for i in range(0, len(payload) - 5, 6):
            key, val = SETTING.unpack_from(payload, i)
            if key == 0x4:
                delta = val - self.peer_init_window
                self.peer_init_window = val
                for sid in self.stream_windows:
                    self.stream_windows[sid] += delta
            elif key == 0x5:
                self.max_frame = val
            elif key == 0x3:
                self.max_streams = val
        self._w(frame(SETTINGS, ACK, 0))
        if not self.ready.done():
            self.ready.set_result(None)
        if self.pending:
            self._flush()

    def _end(self, sid: int, reset: str) -> None:
        """A stream ended other than by trailers: by DATA with END_STREAM, or reset (`reset` says why)."""
        call = self.calls.pop(sid, None)
        if call is None:
            return
        error = (
            None
            if call[2] and not reset
            else f"gRPC call failed ({reset})"
            if reset
            else NO_MESSAGE
        )
        complete(self, call[0], call[1], perf_counter_ns(), error, call[3])


class H2Pool:
    """gRPC calls over a few HTTP/2 connections (one per `streams_per_conn` slots).

    With `tls` (a context offering ALPN "h2") the connections are TLS, through asyncio's SSL
    transport under the same protocol; `metadata` goes into every call's header block.
    """

    def __init__(
        self,
        host: str,
        port: int,
        reqs: Sequence[bytes],
        closed_loop: bool,
        streams_per_conn: int = 32,
        tls: SSLContext | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        compression: str = "none",
    ) -> None:
        self.host, self.port = host, port
        self.tls = tls
        self.metadata = tuple(metadata)
        self.compression = compression
        self.timings = Timings()
        self.state = LoopState()
        self.reqs = reqs
        self.closed_loop = closed_loop
        self.per_conn = streams_per_conn
        self.conns: list[H2Conn] = []
        self.slots = 0
        self.connecting = 0

    async def _connect(self) -> H2Conn:
        loop = asyncio.get_running_loop()
        authority = f"{self.host}:{self.port}"
        transport, proto = await loop.create_connection(
            lambda: H2Conn(
                self.timings, self.state, self.reqs, authority, self.closed_loop, self.compression
            ),
            self.host,
            self.port,
            ssl=self.tls,
            server_hostname=self.host if self.tls else None,
        )
        if self.tls is not None:
            ssl_object = transport.get_extra_info("ssl_object")
            if ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
                transport.close()
                raise ConnectionError(
                    f"{authority} did not agree to HTTP/2 over TLS (ALPN h2): is it a gRPC port?"
                )
        if self.tls is not None or self.metadata:
            proto.block = secured_block(proto.block, self.tls is not None, self.metadata)
        async with asyncio.timeout(10.0):  # not wait_for: it can swallow a Ctrl-C on 3.11
            await proto.ready
        self.conns.append(proto)
        return proto

    async def open(self, n: int) -> None:
        if not self.conns:
            first = await self._connect()
            # Respect the server's SETTINGS_MAX_CONCURRENT_STREAMS.
            self.per_conn = max(1, min(self.per_conn, first.max_streams))
        need = -(-n // self.per_conn) - len(self.conns)
        if need > 0:
            await asyncio.gather(*(self._connect() for _ in range(need)))
        # Slot i lives on connection i % len(conns); a free slot is an entry naming its conn.
        if not self.closed_loop:
            self.state.free.extend(
                self.conns[i % len(self.conns)] for i in range(self.slots, max(n, self.slots))
            )
        self.slots = max(self.slots, n)

    def start_closed(self) -> None:
        start_closed(self.state, (self.conns[i % len(self.conns)] for i in range(self.slots)))

    def slot_count(self) -> int:
        return self.slots

    def alive(self) -> bool:
        return any(not c.lost for c in self.conns)

    async def fire_new(self, intended: int) -> None:
        # HTTP/2 multiplexes: one more stream on the least busy connection.
        live = [c for c in self.conns if not c.lost] or [await self._connect()]
        self.slots += 1
        min(live, key=lambda c: len(c.calls)).fire(intended)

    async def close(self) -> None:
        for c in self.conns:
            c.close()
        self.conns.clear()
        self.state.free.clear()
        await asyncio.sleep(0)
