"""--streaming: gRPC's bidirectional ModelStreamInfer on perfkit's lean HTTP/2 client.

Each slot is one long-lived HTTP/2 stream (a few dozen streams share a connection), carrying one
request at a time, as perf_analyzer's streaming contexts do under concurrency: a request is a gRPC
message written on the open stream (its ModelInferRequest with an `id`), and the answers come
back as ModelStreamInferResponse messages on the same stream (`perfkit.load.wire.stream_response`
reads the few fields needed without protobuf's runtime).

Every request carries `triton_enable_empty_final_response` (as perf_analyzer sends it), so
Triton marks a request's last response `triton_final_response` (for a decoupled model possibly an
empty one), and the request is complete then; a response without the flag completes a request of
a non-decoupled model (a server that does not mark them). As
perf_analyzer records it, the request's latency ends at its last response with outputs (an empty
final one is not counted), and the responses with outputs are counted (Response Throughput).

Bounded: a response message over `MAX_MESSAGE` bytes ends its stream with an error, and a stream
holds at most one request's responses.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from ssl import SSLContext
from time import perf_counter_ns
from typing import cast

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
)
from perfkit.load.transports.base import LoopState, Timings, complete, start_closed
from perfkit.load.transports.h2 import grpc_message, header_block, secured_block
from perfkit.load.wire import WireError, request_id_field, stream_response

METHOD = "/inference.GRPCInferenceService/ModelStreamInfer"
MAX_MESSAGE = 256 << 20
# Response times kept per request (for the profile export); more responses are only counted.
MAX_TIMES = 4096
_WINDOW_REFILL = 1 << 30


class StreamSlot:
    """One ModelStreamInfer stream: one request in flight at a time."""

    def __init__(self, conn: StreamConn, sid: int) -> None:
        self.conn = conn
        self.sid = sid
        self.timings = conn.timings
        self.state = conn.state
        self.closed_loop = conn.closed_loop
        self.lost = False
        self.buf = bytearray()
        self.next_id = 0
        # The request in flight: its id, send and intended times, the feed's ticket, the time of
        # its last response with outputs, and how many such responses it got.
        self.rid = ""
        self.busy = False
        self.sent = 0
        self.intended = 0
        self.ticket = -1
        self.last = 0
        self.responses = 0
        self.times: list[int] = []
        self.recv_unacked = 0

    def fire(self, intended: int = 0) -> None:
        if self.lost:
            self.timings.error(perf_counter_ns(), "gRPC stream to the server lost")
            if self.closed_loop:
                self.state.idle += 1
            return
        self.intended = intended
        self.state.inflight += 1
        self.resend(0)

    def resend(self, now: int) -> None:
        conn = self.conn
        st = self.state
        if st.feed is not None:
            raw, self.ticket = st.feed.take()
        else:
            reqs = conn.reqs
            if len(reqs) > 1:
                st.seq += 1
                raw = reqs[st.seq % len(reqs)]
            else:
                raw = reqs[0]
        self.next_id += 1
        self.rid = str(self.next_id)
        s = perf_counter_ns()
        msg = grpc_message(raw + request_id_field(self.rid) + conn.suffix, conn.compression)
        self.sent, self.last, self.responses, self.busy = s, 0, 0, True
        self.times = []
        conn.send_data(self.sid, msg)
        self.timings.send_ns += perf_counter_ns() - s

    # -- responses ------------------------------------------------------------------------------

    def received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while len(buf) >= 5:
            if buf[0] != 0:
                self.fail("the server sent a compressed response message (not supported)")
                return
            n = U32.unpack_from(buf, 1)[0]
            if n > MAX_MESSAGE:
                self.fail(f"a response message of {n} bytes is over the {MAX_MESSAGE} limit")
                return
            if len(buf) < 5 + n:
                return
            msg = bytes(buf[5 : 5 + n])
            del buf[: 5 + n]
            self.message(msg)

    def message(self, msg: bytes) -> None:
        now = perf_counter_ns()
        try:
            error, rid, final, outputs = stream_response(msg)
        except WireError as exc:
            self.fail(f"malformed ModelStreamInferResponse: {exc}")
            return
        if not self.busy or (rid and rid != self.rid):
            return  # a late answer of a request already completed (by an error)
        if error:
            self._done(now, f"gRPC stream error: {error}")
            return
        if outputs:
            self.last = now
            self.responses += 1
            if len(self.times) < MAX_TIMES:
                self.times.append(now)
        if final or (final is None and not self.conn.decoupled):
            self._done(self.last or now, None)

    def _done(self, at: int, error: str | None) -> None:
        self.busy = False
        if error is None:
            self.timings.responses.append(self.responses)
            self.timings.response_times.append(self.times)
        complete(self, self.sent, self.intended, at, error, self.ticket)

    def fail(self, why: str) -> None:
        """The stream is unusable: its request (if any) fails and the slot is lost."""
        if self.lost:
            return
        self.lost = True
        self.state.dead += 1
        self.conn.reset(self.sid)
        if self.busy:
            self.busy = False
            st = self.state
            if st.feed is not None:
                st.feed.give_back(self.ticket)
            self.timings.error(perf_counter_ns(), why)
            st.inflight -= 1
            if self.closed_loop:
                st.idle += 1


class StreamConn(asyncio.Protocol):
    """One HTTP/2 connection carrying several ModelStreamInfer streams (`StreamSlot`s)."""

    def __init__(
        self,
        timings: Timings,
        state: LoopState,
        reqs: Sequence[bytes],
        block: bytes,
        closed_loop: bool,
        *,
        decoupled: bool,
        suffix: bytes,
        compression: str,
    ) -> None:
        self.timings = timings
        self.state = state
        self.reqs = reqs
        self.block = block
        self.closed_loop = closed_loop
        self.decoupled = decoupled
        self.suffix = suffix
        self.compression = compression
        self.t: asyncio.Transport | None = None
        self.rbuf = b""
        self.next_sid = 1
        self.streams: dict[int, StreamSlot] = {}
        self.send_window = DEFAULT_WINDOW
        self.peer_init_window = DEFAULT_WINDOW
        self.stream_windows: dict[int, int] = {}
        self.max_frame = 16384
        self.max_streams = 1 << 31
        # DATA waiting for flow-control window: [sid, message, offset].
        self.pending: list[list[object]] = []
        self.recv_unacked = 0
        self.lost = False
        self.ready = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport = cast(asyncio.Transport, transport)
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
        for slot in list(self.streams.values()):
            slot.fail(f"connection closed by the server ({exc or 'EOF'})")

    def close(self) -> None:
        if self.t is not None:
            self.t.close()

    def open_stream(self) -> StreamSlot:
        """A new ModelStreamInfer call: its HEADERS, no END_STREAM (the stream stays open)."""
        sid = self.next_sid
        self.next_sid += 2
        slot = StreamSlot(self, sid)
        self.streams[sid] = slot
        self.stream_windows[sid] = self.peer_init_window
        hb = self.block
        self._w(frame(HEADERS, END_HEADERS, sid, hb))
        return slot

    def reset(self, sid: int) -> None:
        if sid in self.streams and not self.lost and self.t is not None:
            self._w(frame(RST_STREAM, 0, sid, U32.pack(0x8)))  # CANCEL
        self.streams.pop(sid, None)
        self.stream_windows.pop(sid, None)

    # -- sending --------------------------------------------------------------------------------

    def _w(self, data: bytes) -> None:
        if self.t is not None and not self.lost:
            self.t.write(data)

    def send_data(self, sid: int, msg: bytes) -> None:
        self.pending.append([sid, msg, 0])
        self._flush()

    def _flush(self) -> None:
        keep: list[list[object]] = []
        for item in self.pending:
            sid, msg, off = cast(int, item[0]), cast(bytes, item[1]), cast(int, item[2])
            if sid not in self.streams:
                continue
            while off < len(msg):
                avail = min(self.send_window, self.stream_windows.get(sid, 0), self.max_frame)
                if avail <= 0:
                    break
                chunk = msg[off : off + avail]
                off += len(chunk)
                self._w(frame(DATA, 0, sid, chunk))
                self.send_window -= len(chunk)
                self.stream_windows[sid] -= len(chunk)
            if off < len(msg):
                item[2] = off
                keep.append(item)
        self.pending = keep

    # -- receiving ------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        buf = self.rbuf + data if self.rbuf else data
        pos, end = 0, len(buf)
        while end - pos >= 9:
            hi, lo, ftype, flags, sid = FRAME.unpack_from(buf, pos)
            n = (hi << 8) | lo
            if end - pos - 9 < n:
                break
            p = pos + 9
            pos = p + n
            if ftype == DATA:
                self._data(sid, flags, buf, p, pos, n)
            elif ftype == HEADERS:
                if flags & END_STREAM and sid in self.streams:
                    self.streams[sid].fail("the server ended the gRPC stream")
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
                if sid in self.streams:
                    self.streams[sid].fail("gRPC stream reset by the server")
            elif ftype == GOAWAY:
                last = U32.unpack_from(buf, p)[0] & MAX_WINDOW
                for s in [s for s in self.streams if s > last]:
                    self.streams[s].fail("server sent GOAWAY")
                self.lost = True
        self.rbuf = buf[pos:] if pos < end else b""

    def _data(self, sid: int, flags: int, buf: bytes, p: int, end: int, n: int) -> None:
        self.recv_unacked += n
        if self.recv_unacked > _WINDOW_REFILL:
            self._w(frame(WINDOW_UPDATE, 0, 0, U32.pack(self.recv_unacked)))
            self.recv_unacked = 0
        slot = self.streams.get(sid)
        if slot is None:
            return
        t0 = perf_counter_ns()
        slot.recv_unacked += n
        if slot.recv_unacked > _WINDOW_REFILL:
            self._w(frame(WINDOW_UPDATE, 0, sid, U32.pack(slot.recv_unacked)))
            slot.recv_unacked = 0
        # A padded frame: its first byte is the padding length, the padding trails the data.
        body = buf[p + 1 : end - buf[p]] if flags & PADDED and n else buf[p:end]
        slot.received(body)
        self.timings.recv_ns += perf_counter_ns() - t0
        if flags & END_STREAM and sid in self.streams:
            slot.fail("the server ended the gRPC stream")

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


class StreamPool:
    """ModelStreamInfer streams over a few HTTP/2 connections (`streams_per_conn` each)."""

    def __init__(
        self,
        host: str,
        port: int,
        reqs: Sequence[bytes],
        closed_loop: bool,
        *,
        decoupled: bool,
        suffix: bytes = b"",
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
        self.decoupled = decoupled
        self.suffix = suffix
        self.per_conn = streams_per_conn
        self.conns: list[StreamConn] = []
        self.slots: list[StreamSlot] = []
        self.connecting = 0

    async def _connect(self) -> StreamConn:
        loop = asyncio.get_running_loop()
        authority = f"{self.host}:{self.port}"
        block = header_block(authority, METHOD, self.compression)
        if self.tls is not None or self.metadata:
            block = secured_block(block, self.tls is not None, self.metadata)
        transport, proto = await loop.create_connection(
            lambda: StreamConn(
                self.timings,
                self.state,
                self.reqs,
                block,
                self.closed_loop,
                decoupled=self.decoupled,
                suffix=self.suffix,
                compression=self.compression,
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
        async with asyncio.timeout(10.0):
            await proto.ready
        self.per_conn = max(1, min(self.per_conn, proto.max_streams))
        self.conns.append(proto)
        return proto

    async def _slot(self) -> StreamSlot:
        live = [c for c in self.conns if not c.lost and len(c.streams) < self.per_conn]
        conn = live[0] if live else await self._connect()
        slot = conn.open_stream()
        self.slots.append(slot)
        return slot

    async def open(self, n: int) -> None:
        while len(self.slots) < n:
            slot = await self._slot()
            if not self.closed_loop:
                self.state.free.append(slot)

    def start_closed(self) -> None:
        start_closed(self.state, self.slots)

    def slot_count(self) -> int:
        return len(self.slots)

    def alive(self) -> bool:
        return any(not s.lost for s in self.slots)

    async def fire_new(self, intended: int) -> None:
        self.connecting += 1
        try:
            slot = await self._slot()
        except OSError as exc:
            self.timings.error(perf_counter_ns(), f"connect failed: {exc}")
            return
        finally:
            self.connecting -= 1
        slot.fire(intended)

    async def close(self) -> None:
        for c in self.conns:
            c.close()
        self.conns.clear()
        self.state.free.clear()
        await asyncio.sleep(0)
