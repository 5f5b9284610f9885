"""A lean gRPC server: HTTP/2 on asyncio.Protocol, on the server's one event loop.

grpcio's server costs several hundred CPU-µs per call in Python (its completion-queue poller, a
handler thread per call, the GIL handed back and forth, and a hop onto the loop where the models
live). This speaks just the HTTP/2 a gRPC server needs: the connection preface and SETTINGS, PING
answers, flow control both ways (large receive windows, WINDOW_UPDATE as they are consumed; sends
held within the peer's windows), HPACK request headers decoded with `hpack` (a block that leaves
the dynamic table as it was, the steady state of every gRPC client, is looked up in a cache), and
constant response header blocks (literals without indexing: no encoder state). A call runs when
its request message is complete: the handler answers at once (no task) or with an awaitable.

Unary and bidirectional-streaming methods. A streaming method answers each request with one
message (at once or awaited, in request order) or with an async iterator of messages (a "feed":
a decoupled model's responses), sent as they come while the stream's next requests go on.
Messages are length-prefixed, gzip/deflate requests
decompressed within the size limit (`grpc_compression`), answers uncompressed. Errors go
back as trailers (grpc-status, grpc-message), as every gRPC server does. On `stop` each
connection gets a GOAWAY, in-flight calls are drained, then connections close.

What a peer can make a connection hold is bounded as frames arrive (`h2_limits.H2Limits`): a
unary message past its declared length or the size limit ends the call (RESOURCE_EXHAUSTED), a
header block past the header-list limit ends the connection (GOAWAY ENHANCE_YOUR_CALM), streams
past the advertised SETTINGS_MAX_CONCURRENT_STREAMS are refused, a reset stream's queued call is
cancelled and resets past a rate end the connection, and a connection whose replies are not being
read is not read either (pause_writing). A feed takes its next message only once the last one
left (flow control and pause_writing hold it, and so the model behind it), and a connection runs
at most MAX_FEEDS of them: further requests wait in the bounded queue above. Frames RFC 9113
calls errors are answered as such.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import struct
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from ssl import SSLContext
from typing import Any, cast

from hpack import Decoder
from hpack.exceptions import HPACKError, OversizedHeaderListError

from perfkit.http2 import (
    ACK,
    CONTINUATION,
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
    PRIORITY,
    PRIORITY_FRAME,
    PUSH_PROMISE,
    RST_STREAM,
    SETTING,
    SETTINGS,
    SETTINGS_INITIAL_WINDOW_SIZE,
    SETTINGS_MAX_CONCURRENT_STREAMS,
    SETTINGS_MAX_FRAME_SIZE,
    SETTINGS_MAX_HEADER_LIST_SIZE,
    U32,
    WINDOW_UPDATE,
    frame,
    hpack_literal,
    hpack_string,
)
from perfkit_server.grpc_compression import (
    ACCEPT_ENCODING,
    DecompressError,
    check_encoding,
    decompress,
)
from perfkit_server.h2_limits import (
    COMPRESSION_ERROR,
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    NO_ERROR,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    STREAM_CLOSED,
    H2Error,
    H2Limits,
    ResetBudget,
    parse_settings,
)
from perfkit_server.writes import Output, WriteBatch, pause_reading, resume_reading

logger = logging.getLogger(__name__)

# Our receive side: streams and the connection start at the largest window; a window is topped up
# once half of it is used, so a long stream never stalls and a unary call never needs an update.
_RECV_REFILL = 1 << 30
_OUR_MAX_FRAME = (1 << 24) - 1
_CLOSE_GRACE_S = 2.0
# Distinct header blocks remembered per connection (a client sends a few, again and again).
_MAX_CACHED_BLOCKS = 64
_MSG = struct.Struct(">BI")  # gRPC message prefix: compressed flag, length
# `_Stream.need` before a unary message's prefix is in: up to 4 bytes are taken unchecked.
_NO_PREFIX = 4
# Streaming requests parsed and waiting their turn, per connection: past either bound the
# connection is not read until calls finish (back-pressure, not an error; one message of any
# allowed size is always taken).
MAX_QUEUED_MESSAGES = 1024
MAX_QUEUED_BYTES = 16 << 20
# Feeds (requests answered with several messages) running at once, per connection.
MAX_FEEDS = 256
# Why a connection is not being read (bits of `_Connection._paused`).
_UNREAD_REPLIES, _QUEUE_FULL = 1, 2

# gRPC status codes.
OK, CANCELLED, UNKNOWN, INVALID_ARGUMENT, NOT_FOUND = 0, 1, 2, 3, 5
RESOURCE_EXHAUSTED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE = 8, 12, 13, 14
_DECOMPRESS_STATUS = {"RESOURCE_EXHAUSTED": RESOURCE_EXHAUSTED, "INTERNAL": INTERNAL}


class GrpcError(Exception):
    """A call's failure: a gRPC status code and its message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Method:
    """One RPC: parse a request message, answer it (a message or an awaitable of one).

    A streaming method gets `call` once per request message and answers each in order, or
    answers it with an async iterator of messages (a feed, sent as they come; see the module doc).
    """

    parse: Callable[[bytes], Any]
    call: Callable[[Any], Any]
    streaming: bool = False


ErrorStatus = Callable[[Exception], GrpcError | None]


_RESPONSE_HEADERS = (
    b"\x88"
    + b"\x0f\x10"
    + hpack_string(b"application/grpc")
    + hpack_literal(b"grpc-accept-encoding", ACCEPT_ENCODING)
)  # :status 200, content-type, the encodings requests may use (grpc_compression)
_TRAILERS_OK = hpack_literal(b"grpc-status", b"0")
_MAX_MESSAGE_TEXT = 4096


def _percent_encode(text: str) -> bytes:
    """grpc-message's encoding: printable ASCII but '%' as is, every other byte as %XX."""
    out = bytearray()
    for b in text.encode()[:_MAX_MESSAGE_TEXT]:
        if 0x20 <= b <= 0x7E and b != 0x25:
            out.append(b)
        else:
            out += b"%%%02X" % b
    return bytes(out)


def _status_block(code: int, message: str) -> bytes:
    block = hpack_literal(b"grpc-status", str(code).encode())
    if message:
        block += hpack_literal(b"grpc-message", _percent_encode(message))
    return block


def _hpack_int(block: bytes, pos: int, prefix_bits: int) -> tuple[int, int]:
    """An HPACK integer with an N-bit prefix at `pos`: (value, position after it)."""
    mask = (1 << prefix_bits) - 1
    value = block[pos] & mask
    pos += 1
    if value < mask:
        return value, pos
    shift = 0
    while True:
        b = block[pos]
        pos += 1
        value += (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, pos


def _changes_table(block: bytes) -> bool:
    """Whether an HPACK block adds to the dynamic table or resizes it (RFC 7541 section 6):
    indexed fields and literals without indexing or never indexed leave it as it was."""
    pos, end = 0, len(block)
    while pos < end:
        b = block[pos]
        if b & 0x80:  # indexed field
            pos = _hpack_int(block, pos, 7)[1]
            continue
        if b & 0xE0 != 0:  # literal with incremental indexing (01), or a table size update (001)
            return True
        name_index, pos = _hpack_int(block, pos, 4)  # literal without indexing / never indexed
        for _ in range(1 if name_index else 2):  # the name (when not indexed), then the value
            length, pos = _hpack_int(block, pos, 7)
            pos += length
    return False


class _Stream:
    """One call: the request bytes received so far and the response bytes waiting to be sent."""

    __slots__ = (
        "buf",
        "busy",
        "closed",
        "encoding",
        "ended",
        "feeds",
        "method",
        "need",
        "out",
        "pending",
        "pending_bytes",
        "recv_unacked",
        "sid",
        "started",
        "task",
        "trailers",
        "window",
    )

    def __init__(self, sid: int, method: Method | None, window: int) -> None:
        self.sid = sid
        self.method = method
        self.encoding = b""  # the request's grpc-encoding (b"" = identity)
        self.buf = bytearray()
        self.need = _NO_PREFIX  # unary: the message's whole length (prefix included) once known
        self.task: asyncio.Future[Any] | None = None  # the call being awaited, if any
        self.window = window  # what the peer lets us send on this stream
        self.recv_unacked = 0
        self.ended = False  # the client half-closed (END_STREAM received)
        self.closed = False  # our side is done (trailers queued or sent, or reset)
        self.started = False  # response headers sent
        self.busy = False  # a streaming call is being answered
        self.feeds: set[asyncio.Future[None]] | None = None  # streaming: feeds being sent
        self.pending: deque[tuple[Any, int]] = deque()  # streaming: (request, size) in turn
        self.pending_bytes = 0
        self.out: deque[bytes] = deque()  # DATA payload held back by flow control
        self.trailers: bytes | None = None  # sent once `out` is empty


class _Connection(asyncio.Protocol):
    """One client connection: frames in, calls dispatched, frames out."""

    def __init__(self, server: GrpcServer) -> None:
        self._server = server
        limits = self._limits = server.limits
        self._max_message = limits.max_message_bytes
        self._max_block = limits.max_header_list_bytes
        self._max_streams = limits.max_concurrent_streams
        self._resets: ResetBudget | None = None
        self._transport: asyncio.Transport | None = None
        self._output: Output | None = None
        self._buf = bytearray()
        self._preface = False
        self._decoder = Decoder(max_header_list_size=limits.max_header_list_bytes)
        self._paths: dict[bytes, tuple[bytes, bytes]] = {}  # block -> (:path, grpc-encoding)
        self._streams: dict[int, _Stream] = {}
        self._blocked: dict[int, _Stream] = {}
        self._headers: tuple[int, int, bytearray] | None = None  # sid, flags, block (CONTINUATION)
        self._last_sid = 0
        self._send_window = DEFAULT_WINDOW
        self._peer_initial_window = DEFAULT_WINDOW
        self._peer_max_frame = 16384
        self._recv_unacked = 0
        self._goaway = False
        self._paused = 0  # _UNREAD_REPLIES | _QUEUE_FULL while reading is paused
        self._queued = 0  # streaming requests waiting, over all streams
        self._queued_bytes = 0
        self._feeding = 0  # feeds running, over all streams (MAX_FEEDS)
        self._feed_waiting: set[_Stream] = set()  # streams whose requests wait for a feed slot
        self._send_waiters: list[asyncio.Future[None]] = []  # feeds waiting to send more

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        output = self._output = Output(self._server.writes, self._transport)
        self._server.connection_made(self)
        self._resets = ResetBudget(self._limits, asyncio.get_running_loop().time())
        settings = (
            SETTING.pack(SETTINGS_MAX_CONCURRENT_STREAMS, self._max_streams)
            + SETTING.pack(SETTINGS_INITIAL_WINDOW_SIZE, MAX_WINDOW)
            + SETTING.pack(SETTINGS_MAX_FRAME_SIZE, _OUR_MAX_FRAME)
            + SETTING.pack(SETTINGS_MAX_HEADER_LIST_SIZE, self._max_block)
        )
        output.write(
            frame(SETTINGS, 0, 0, settings)
            + frame(WINDOW_UPDATE, 0, 0, U32.pack(MAX_WINDOW - DEFAULT_WINDOW))
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connection_lost(self)
        self._transport = None
        if self._output is not None:
            self._output.lost()
            self._output = None
        for stream in self._streams.values():  # nobody is left to answer: queued calls never run
            if stream.task is not None:
                stream.task.cancel()
            _cancel_feeds(stream)
        self._streams.clear()
        self._feed_waiting.clear()
        self._wake_senders()
        self._blocked.clear()
        self._buf = bytearray()
        self._headers = None

    def pause_writing(self) -> None:
        # The peer is not reading our replies: stop reading what would make more of them.
        self._pause(_UNREAD_REPLIES)

    def resume_writing(self) -> None:
        self._resume(_UNREAD_REPLIES)
        self._wake_senders()

    def _pause(self, why: int) -> None:
        self._paused = pause_reading(self._transport, self._paused, why)

    def _resume(self, why: int) -> None:
        self._paused = resume_reading(self._transport, self._paused, why)

    def _unqueue(self, stream: _Stream) -> None:
        """Forget a stream's waiting requests (it is over) and read again if they held us."""
        if stream.pending:
            self._queued -= len(stream.pending)
            self._queued_bytes -= stream.pending_bytes
            stream.pending.clear()
            stream.pending_bytes = 0
            self._queue_drained()

    def _queue_drained(self) -> None:
        if self._queued < MAX_QUEUED_MESSAGES and self._queued_bytes < MAX_QUEUED_BYTES:
            self._resume(_QUEUE_FULL)

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos = 0
        if not self._preface:
            if len(buf) < len(PREFACE):
                return
            if bytes(buf[: len(PREFACE)]) != PREFACE:
                self._fail(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                return
            self._preface = True
            pos = len(PREFACE)
        end = len(buf)
        while end - pos >= 9 and self._transport is not None:
            hi, lo, ftype, flags, sid = FRAME.unpack_from(buf, pos)
            length = (hi << 8) | lo
            if length > _OUR_MAX_FRAME:
                self._fail(FRAME_SIZE_ERROR, "frame larger than SETTINGS_MAX_FRAME_SIZE")
                return
            if end - pos - 9 < length:
                break
            payload = bytes(buf[pos + 9 : pos + 9 + length])
            pos += 9 + length
            try:
                self._frame(ftype, flags, sid & 0x7FFFFFFF, payload)
            except H2Error as exc:
                self._fail(exc.code, str(exc))
                return
            except (struct.error, IndexError):  # a frame shorter than its type's fixed fields
                self._fail(FRAME_SIZE_ERROR, f"malformed frame of type {ftype}")
                return
        del buf[:pos]

    def close(self) -> None:
        """Close after writing what is queued."""
        if self._output is not None:
            self._output.close()

    def goaway(self) -> None:
        """Tell the client no new calls are taken here; the ones in flight finish."""
        if self._transport is not None and not self._goaway:
            self._goaway = True
            self._write(frame(GOAWAY, 0, 0, U32.pack(self._last_sid) + U32.pack(0)))

    # -- frames in -----------------------------------------------------------------------------

    def _frame(self, ftype: int, flags: int, sid: int, payload: bytes) -> None:
        if self._headers is not None and ftype != CONTINUATION:
            raise H2Error(PROTOCOL_ERROR, "expected a CONTINUATION frame")
        if ftype == DATA:
            self._data(flags, sid, payload)
        elif ftype == HEADERS:
            if flags & PADDED:
                payload = _unpad(payload)
            if flags & PRIORITY:
                payload = payload[5:]
            if len(payload) > self._max_block:
                raise H2Error(ENHANCE_YOUR_CALM, "header block larger than the header list limit")
            if flags & END_HEADERS:
                self._header_block(sid, flags, payload)
            else:
                self._headers = (sid, flags, bytearray(payload))
        elif ftype == CONTINUATION:
            headers = self._headers
            if headers is None or headers[0] != sid:
                raise H2Error(PROTOCOL_ERROR, "unexpected CONTINUATION frame")
            block = headers[2]
            block += payload
            if len(block) > self._max_block:  # bounded as it arrives (CVE-2024-27316)
                raise H2Error(ENHANCE_YOUR_CALM, "header block larger than the header list limit")
            if flags & END_HEADERS:
                self._headers = None
                self._header_block(sid, headers[1], bytes(block))
        elif ftype == SETTINGS:
            pairs = parse_settings(bool(flags & ACK), sid, payload)
            if not flags & ACK:
                self._settings(pairs)
        elif ftype == WINDOW_UPDATE:
            self._window_update(sid, U32.unpack(payload)[0] & 0x7FFFFFFF)
        elif ftype == PING:
            if sid:
                raise H2Error(PROTOCOL_ERROR, "PING on a stream")
            if len(payload) != 8:
                raise H2Error(FRAME_SIZE_ERROR, "PING payload is not 8 bytes")
            if not flags & ACK:
                self._write(frame(PING, ACK, 0, payload))
        elif ftype == RST_STREAM:
            self._peer_reset(sid, payload)
        elif ftype == GOAWAY:
            if sid:
                raise H2Error(PROTOCOL_ERROR, "GOAWAY on a stream")
            self._goaway = True
        elif ftype == PUSH_PROMISE:
            raise H2Error(PROTOCOL_ERROR, "PUSH_PROMISE from a client")
        elif ftype == PRIORITY_FRAME:
            if sid == 0:
                raise H2Error(PROTOCOL_ERROR, "PRIORITY on stream 0")
            if len(payload) != 5:  # a stream error the RFC lets us treat as a connection error
                raise H2Error(FRAME_SIZE_ERROR, "PRIORITY payload is not 5 bytes")
        # Unknown frame types are ignored (RFC 9113 section 5.5).

    def _settings(self, pairs: list[tuple[int, int]]) -> None:
        for key, value in pairs:
            if key == SETTINGS_INITIAL_WINDOW_SIZE:
                delta = value - self._peer_initial_window
                self._peer_initial_window = value
                for stream in self._streams.values():
                    stream.window += delta
                    if stream.window > MAX_WINDOW:
                        raise H2Error(FLOW_CONTROL_ERROR, "a stream window past 2^31-1")
            elif key == SETTINGS_MAX_FRAME_SIZE:
                self._peer_max_frame = value
        self._write(frame(SETTINGS, ACK, 0))
        if self._blocked:
            self._flush_blocked()

    def _window_update(self, sid: int, increment: int) -> None:
        if sid == 0:
            if increment == 0:
                raise H2Error(PROTOCOL_ERROR, "WINDOW_UPDATE with increment 0")
            self._send_window += increment
            if self._send_window > MAX_WINDOW:
                raise H2Error(FLOW_CONTROL_ERROR, "connection window past 2^31-1")
            if self._blocked:
                self._flush_blocked()
            return
        stream = self._streams.get(sid)
        if stream is None:
            if sid > self._last_sid:
                raise H2Error(PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream")
            return  # a stream that is over
        if increment == 0:
            self._stream_error(sid, PROTOCOL_ERROR)
            return
        stream.window += increment
        if stream.window > MAX_WINDOW:
            self._stream_error(sid, FLOW_CONTROL_ERROR)
        elif sid in self._blocked:
            self._flush(stream)

    def _peer_reset(self, sid: int, payload: bytes) -> None:
        """RST_STREAM from the client: its queued call is cancelled before it runs; resets past
        the budget (the rapid-reset pattern, CVE-2023-44487) end the connection."""
        if len(payload) != 4:
            raise H2Error(FRAME_SIZE_ERROR, "RST_STREAM payload is not 4 bytes")
        if sid == 0 or sid > self._last_sid:
            raise H2Error(PROTOCOL_ERROR, "RST_STREAM on an idle stream")
        stream = self._streams.pop(sid, None)
        if stream is not None:
            self._drop(stream)
        assert self._resets is not None
        if not self._resets.take(asyncio.get_running_loop().time()):
            raise H2Error(ENHANCE_YOUR_CALM, "too many stream resets")

    def _drop(self, stream: _Stream) -> None:
        """Forget a stream that is over without an answer: its call, if queued, never runs."""
        stream.closed = True
        stream.buf = bytearray()
        self._unqueue(stream)
        stream.out.clear()
        self._blocked.pop(stream.sid, None)
        if stream.task is not None:
            stream.task.cancel()
        _cancel_feeds(stream)

    def _stream_error(self, sid: int, code: int) -> None:
        """A stream error (RFC 9113 section 5.4.2): RST_STREAM with `code`; the stream is over."""
        stream = self._streams.pop(sid, None)
        if stream is not None:
            self._drop(stream)
        self._write(frame(RST_STREAM, 0, sid, U32.pack(code)))

    def _path(self, block: bytes) -> tuple[bytes, bytes]:
        """The :path and grpc-encoding of a request header block (decoded in order: HPACK state
        is per connection)."""
        known = self._paths.get(block)
        if known is not None:
            return known
        try:
            fields = self._decoder.decode(block, raw=True)
        except OversizedHeaderListError:
            raise H2Error(ENHANCE_YOUR_CALM, "header list larger than the limit") from None
        except HPACKError as exc:
            raise H2Error(COMPRESSION_ERROR, f"bad header block: {exc}") from None
        path = next((bytes(v) for k, v in fields if k == b":path"), b"")
        encoding = next((bytes(v) for k, v in fields if k == b"grpc-encoding"), b"")
        # A block that leaves the dynamic table as it was means the same headers every time it
        # comes again, until some block changes the table: then every cached meaning is stale.
        if _changes_table(block):
            self._paths.clear()
        elif len(self._paths) < _MAX_CACHED_BLOCKS:
            self._paths[block] = (path, encoding)
        return path, encoding

    def _header_block(self, sid: int, flags: int, block: bytes) -> None:
        stream = self._streams.get(sid)
        if stream is not None:  # trailers from the client
            self._path(block)  # decoded all the same: HPACK state is per connection
            if stream.ended:
                self._stream_error(sid, STREAM_CLOSED)
            elif not flags & END_STREAM:
                self._stream_error(sid, PROTOCOL_ERROR)  # trailers must end the stream
            else:
                self._end(stream)
            return
        if not sid & 1:  # stream 0 included
            raise H2Error(PROTOCOL_ERROR, f"HEADERS on an even stream id {sid}")
        if sid <= self._last_sid:
            raise H2Error(PROTOCOL_ERROR, f"HEADERS on stream {sid}, not above {self._last_sid}")
        path, encoding = self._path(block)
        self._last_sid = sid
        if len(self._streams) >= self._max_streams:
            self._write(frame(RST_STREAM, 0, sid, U32.pack(REFUSED_STREAM)))
            return
        method = self._server.methods.get(path.decode("latin-1"))
        stream = _Stream(sid, method, self._peer_initial_window)
        stream.encoding = encoding
        self._streams[sid] = stream
        if self._goaway and self._server.stopping:
            self._finish(stream, GrpcError(UNAVAILABLE, "the server is shutting down"))
        elif method is None:
            self._finish(stream, GrpcError(UNIMPLEMENTED, f"Method not found: {path.decode()}"))
        if flags & END_STREAM:
            self._end(stream)

    def _data(self, flags: int, sid: int, payload: bytes) -> None:
        n = len(payload)
        if flags & PADDED:
            payload = _unpad(payload)
        self._recv_unacked += n
        if self._recv_unacked >= _RECV_REFILL:
            self._write(frame(WINDOW_UPDATE, 0, 0, U32.pack(self._recv_unacked)))
            self._recv_unacked = 0
        stream = self._streams.get(sid)
        if stream is None or stream.closed or stream.ended:
            self._data_elsewhere(sid, stream)
            return
        stream.recv_unacked += n
        if stream.recv_unacked >= _RECV_REFILL and not flags & END_STREAM:
            self._write(frame(WINDOW_UPDATE, 0, sid, U32.pack(stream.recv_unacked)))
            stream.recv_unacked = 0
        buf = stream.buf
        buf += payload
        method = cast(Method, stream.method)  # a stream without one is closed at once
        if method.streaming:
            if len(buf) >= 5:
                self._take_messages(stream)
        elif len(buf) > stream.need and not self._within_message(stream):
            return
        if flags & END_STREAM:
            self._end(stream)

    def _data_elsewhere(self, sid: int, stream: _Stream | None) -> None:
        """DATA that no call takes: on a stream the client ended (STREAM_CLOSED), on a stream
        that is over (ignored: it may have crossed our RST_STREAM), or on an idle one."""
        if stream is not None:
            if stream.ended and not stream.closed:
                self._stream_error(sid, STREAM_CLOSED)
        elif sid == 0 or sid > self._last_sid:
            raise H2Error(PROTOCOL_ERROR, f"DATA on idle stream {sid}")

    def _within_message(self, stream: _Stream) -> bool:
        """A unary call's bytes passed what was known of its message: read the prefix once it
        is in; past the declared length or the size limit the call fails now (its buffer
        dropped) instead of growing with what the client keeps sending."""
        if stream.need == _NO_PREFIX:
            length = self._message_length(stream)
            if length is None:
                return False
            stream.need = 5 + length
            if len(stream.buf) <= stream.need:
                return True
        declared = stream.need - 5
        why = f"Received message larger than declared ({len(stream.buf) - 5} vs. {declared})"
        self._finish(stream, GrpcError(RESOURCE_EXHAUSTED, why))
        return False

    def _message_length(self, stream: _Stream) -> int | None:
        """The length of the message at the start of `stream.buf` (its 5-byte prefix is in); None,
        with the call failed now, before its bytes are all in, when it is over the size limit or
        compressed with an encoding it cannot read."""
        compressed, length = _MSG.unpack_from(stream.buf)
        limit = self._max_message
        if length > limit:
            why = f"Received message larger than max ({length} vs. {limit})"
            self._finish(stream, GrpcError(RESOURCE_EXHAUSTED, why))
            return None
        if compressed:
            bad = check_encoding(stream.encoding)
            if bad is not None:  # gRPC: an unsupported encoding is UNIMPLEMENTED, none INTERNAL
                code = INTERNAL if stream.encoding in (b"", b"identity") else UNIMPLEMENTED
                self._finish(stream, GrpcError(code, bad))
                return None
        return int(length)

    def _end(self, stream: _Stream) -> None:
        """The client half-closed the stream: run a unary call, or close a stream when done."""
        stream.ended = True
        method = stream.method
        if method is None or stream.closed:
            return
        if method.streaming:
            if stream.buf:
                self._finish(stream, GrpcError(INTERNAL, "the stream ended inside a message"))
            elif not stream.busy and not stream.pending and not stream.feeds:
                self._finish(stream, None)
            return
        buf = stream.buf
        if len(buf) < 5 or len(buf) != 5 + _MSG.unpack_from(buf)[1]:
            self._finish(stream, GrpcError(INTERNAL, "a unary call must carry exactly one message"))
            return
        try:
            request = method.parse(self._message(stream, buf, len(buf)))
        except DecompressError as exc:
            self._finish(stream, GrpcError(_DECOMPRESS_STATUS[exc.status], exc.message))
            return
        except Exception as exc:  # protobuf's DecodeError; any parse failure is the client's
            self._finish(stream, GrpcError(INVALID_ARGUMENT, f"cannot parse the request: {exc}"))
            return
        stream.buf = bytearray()
        self._call(stream, method, request)

    def _take_messages(self, stream: _Stream) -> None:
        buf = stream.buf
        method = cast(Method, stream.method)
        while len(buf) >= 5:
            length = self._message_length(stream)
            if length is None:
                return
            if len(buf) < 5 + length:
                break
            try:
                request = method.parse(self._message(stream, buf, 5 + length))
            except DecompressError as exc:
                self._finish(stream, GrpcError(_DECOMPRESS_STATUS[exc.status], exc.message))
                return
            except Exception as exc:  # the client's bytes; the stream fails, the server goes on
                self._finish(
                    stream, GrpcError(INVALID_ARGUMENT, f"cannot parse the request: {exc}")
                )
                return
            del buf[: 5 + length]
            stream.pending.append((request, length))
            stream.pending_bytes += length
            self._queued += 1
            self._queued_bytes += length
        if self._queued >= MAX_QUEUED_MESSAGES or self._queued_bytes >= MAX_QUEUED_BYTES:
            self._pause(_QUEUE_FULL)
        if not stream.busy:
            self._next(stream)

    def _message(self, stream: _Stream, buf: bytearray, end: int) -> bytes:
        """The message at the start of `buf` (prefix included, `end` its end), decompressed
        within the size limit when its prefix says it is compressed."""
        data = bytes(buf[5:end])
        if buf[0]:
            return decompress(stream.encoding, data, self._max_message)
        return data

    def _next(self, stream: _Stream) -> None:
        """Streaming: answer the waiting requests in order, one at a time."""
        method = cast(Method, stream.method)
        while stream.pending and not stream.busy and not stream.closed:
            if self._feeding >= MAX_FEEDS:  # taken up again when a feed ends
                self._feed_waiting.add(stream)
                return
            request, size = stream.pending.popleft()
            stream.pending_bytes -= size
            self._queued -= 1
            self._queued_bytes -= size
            self._queue_drained()
            self._call(stream, method, request)
        if (
            stream.ended
            and not stream.busy
            and not stream.pending
            and not stream.feeds
            and not stream.closed
        ):
            self._finish(stream, None)

    # -- calls ---------------------------------------------------------------------------------

    def _call(self, stream: _Stream, method: Method, request: Any) -> None:
        try:
            result = method.call(request)
        except Exception as exc:
            self._failed(stream, exc)
            return
        if not inspect.isawaitable(result):
            if method.streaming and hasattr(result, "__anext__"):
                self._feed(stream, result)
                return
            self._answer(stream, result)
            return
        stream.busy = True
        task = stream.task = asyncio.ensure_future(result)
        self._server.tasks.add(task)
        task.add_done_callback(lambda t: self._done(t, stream))

    def _done(self, task: asyncio.Future[Any], stream: _Stream) -> None:
        self._server.tasks.discard(task)
        stream.busy = False
        stream.task = None
        if task.cancelled():
            self._finish(stream, GrpcError(CANCELLED, "the call was cancelled"))
            return
        exc = task.exception()
        if exc is not None:
            self._failed(stream, exc)
            return
        self._answer(stream, task.result())
        if cast(Method, stream.method).streaming:
            self._next(stream)

    # -- feeds: several messages for one request ------------------------------------------------

    def _feed(self, stream: _Stream, feed: AsyncIterator[Any]) -> None:
        task = asyncio.ensure_future(self._pump(stream, feed))
        self._server.tasks.add(task)
        if stream.feeds is None:
            stream.feeds = set()
        stream.feeds.add(task)
        self._feeding += 1
        task.add_done_callback(lambda t: self._feed_done(t, stream))

    async def _pump(self, stream: _Stream, feed: AsyncIterator[Any]) -> None:
        """Send the feed's messages as they come, each once the last one has left."""
        try:
            async for message in feed:
                if stream.closed or self._transport is None:
                    return
                self._answer(stream, message)
                while (
                    (stream.out or self._paused & _UNREAD_REPLIES)
                    and not stream.closed
                    and self._transport is not None
                ):
                    waiter = asyncio.get_running_loop().create_future()
                    self._send_waiters.append(waiter)
                    await waiter
        finally:
            close = getattr(feed, "aclose", None)
            if close is not None:
                await close()

    def _feed_done(self, task: asyncio.Future[None], stream: _Stream) -> None:
        self._server.tasks.discard(task)
        self._feeding -= 1
        if stream.feeds is not None:
            stream.feeds.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._failed(stream, cast(BaseException, task.exception()))
        if self._feed_waiting:
            for waiting in list(self._feed_waiting):
                self._feed_waiting.discard(waiting)
                self._next(waiting)
        self._next(stream)

    def _wake_senders(self) -> None:
        """Feeds waiting for their last message to leave look again."""
        waiters, self._send_waiters = self._send_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _failed(self, stream: _Stream, exc: BaseException) -> None:
        status = self._server.error_status(exc) if isinstance(exc, Exception) else None
        if status is None:  # the request boundary: a server bug fails the call and is logged
            logger.error("unhandled error in a gRPC call", exc_info=exc)
            status = GrpcError(INTERNAL, f"internal server error: {exc}")
        self._finish(stream, status)

    def _answer(self, stream: _Stream, message: Any) -> None:
        if stream.closed or self._transport is None:
            return
        body = message.SerializeToString()
        payload = _MSG.pack(0, len(body)) + body
        method = cast(Method, stream.method)
        if not method.streaming:
            stream.closed = True
            stream.trailers = _TRAILERS_OK
        head = b""
        if not stream.started:
            stream.started = True
            head = frame(HEADERS, END_HEADERS, stream.sid, _RESPONSE_HEADERS)
        n = len(payload)
        if (
            not stream.out
            and n <= self._send_window
            and n <= stream.window
            and n <= self._peer_max_frame
        ):
            # The common case: headers, the message and the trailers in one write.
            self._send_window -= n
            stream.window -= n
            out = head + frame(DATA, 0, stream.sid, payload)
            if stream.trailers is not None:
                out += frame(HEADERS, END_HEADERS | END_STREAM, stream.sid, stream.trailers)
                self._close_stream(stream)
            self._write(out)
        else:
            if head:
                self._write(head)
            stream.out.append(payload)
            self._flush(stream)

    def _finish(self, stream: _Stream, error: GrpcError | None) -> None:
        """End our side: OK trailers after any held-back data, or a trailers-only error."""
        if stream.closed:
            return
        stream.closed = True
        self._unqueue(stream)
        stream.buf = bytearray()
        if error is None:
            stream.trailers = _TRAILERS_OK
            if not stream.started:
                stream.started = True
                self._write(frame(HEADERS, END_HEADERS, stream.sid, _RESPONSE_HEADERS))
            self._flush(stream)
            return
        stream.out.clear()
        self._blocked.pop(stream.sid, None)
        block = _status_block(error.code, error.message)
        if not stream.started:
            block = _RESPONSE_HEADERS + block
        stream.started = True
        self._write(frame(HEADERS, END_HEADERS | END_STREAM, stream.sid, block))
        self._close_stream(stream)

    def _close_stream(self, stream: _Stream) -> None:
        """Our side is done; a client still sending is told to stop (RST_STREAM NO_ERROR)."""
        self._streams.pop(stream.sid, None)
        self._blocked.pop(stream.sid, None)
        if not stream.ended:
            self._write(frame(RST_STREAM, 0, stream.sid, U32.pack(NO_ERROR)))

    # -- frames out ----------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        """Queue `data` for the end of this loop iteration (see perfkit_server.writes)."""
        if self._output is not None:
            self._output.write(data)

    def _flush(self, stream: _Stream) -> None:
        """Send what flow control allows of `stream`'s held-back data, then its trailers."""
        if self._transport is None:
            return
        out = stream.out
        while out:
            room = min(self._send_window, stream.window, self._peer_max_frame)
            if room <= 0:
                self._blocked[stream.sid] = stream
                return
            chunk = out[0]
            if len(chunk) > room:
                out[0] = chunk[room:]
                chunk = chunk[:room]
            else:
                out.popleft()
            self._send_window -= len(chunk)
            stream.window -= len(chunk)
            self._write(frame(DATA, 0, stream.sid, chunk))
        self._blocked.pop(stream.sid, None)
        if self._send_waiters:
            self._wake_senders()
        if stream.trailers is not None:
            self._write(frame(HEADERS, END_HEADERS | END_STREAM, stream.sid, stream.trailers))
            self._close_stream(stream)

    def _flush_blocked(self) -> None:
        for stream in list(self._blocked.values()):
            self._flush(stream)
            if self._send_window <= 0:
                return

    def _fail(self, code: int, why: str) -> None:
        """A connection error: GOAWAY with the code, then close."""
        logger.debug("closing a gRPC connection: %s", why)
        self._write(frame(GOAWAY, 0, 0, U32.pack(self._last_sid) + U32.pack(code) + why.encode()))
        self.close()


def _cancel_feeds(stream: _Stream) -> None:
    """The stream is over: its feeds stop (their models' responses are dropped)."""
    if stream.feeds:
        for task in stream.feeds:
            task.cancel()


def _unpad(payload: bytes) -> bytes:
    """A PADDED frame's payload without its pad length byte and padding."""
    if payload[0] >= len(payload):
        raise H2Error(PROTOCOL_ERROR, "padding as long as the frame")
    return payload[1 : len(payload) - payload[0]]


class GrpcServer:
    """Serves `methods` (by path, '/package.Service/Method') on host:port."""

    def __init__(
        self, methods: dict[str, Method], error_status: ErrorStatus, limits: H2Limits
    ) -> None:
        self.methods = methods
        self.error_status = error_status
        self.limits = limits
        self.connections: set[_Connection] = set()
        self.tasks: set[asyncio.Future[Any]] = set()
        self.stopping = False
        self.writes = WriteBatch()
        # What each accepted connection is (a test hook may substitute a subclass: header_tap).
        self.connection_class: type[_Connection] = _Connection
        self._server: asyncio.Server | None = None
        self._all_closed = asyncio.Event()

    def connection_made(self, conn: _Connection) -> None:
        self.connections.add(conn)
        self._all_closed.clear()

    def connection_lost(self, conn: _Connection) -> None:
        self.connections.discard(conn)
        if not self.connections:
            self._all_closed.set()

    async def start(self, host: str, port: int, ssl: SSLContext | None = None) -> int:
        """Listen (over TLS with `ssl`, which must offer ALPN "h2"); returns the bound port."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: self.connection_class(self), host, port, backlog=1024, ssl=ssl
        )
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self, drain_secs: float) -> None:
        """Stop accepting, GOAWAY every connection, wait up to `drain_secs` for calls in flight."""
        self.stopping = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.goaway()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_secs
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=drain_secs)
        # A client closes its connection once it has had GOAWAY and has no call left. Closing it
        # under the client instead can lose the last answers: a socket closed with unread bytes
        # (a PING or WINDOW_UPDATE in flight) is reset, and what was still unsent is dropped.
        grace = min(deadline - loop.time(), _CLOSE_GRACE_S)
        if self.connections and grace > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self._all_closed.wait()
        for conn in list(self.connections):
            conn.close()
        if self._server is not None:
            await self._server.wait_closed()
