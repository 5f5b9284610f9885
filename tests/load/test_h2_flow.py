"""The lean gRPC client's HTTP/2 flow control, driven frame by frame.

Bytes from a pretend server go straight into `H2Conn.data_received`; a fake transport records
what the client writes. Covers the connection and stream send windows, DATA split to the peer's
SETTINGS_MAX_FRAME_SIZE, sends resumed on WINDOW_UPDATE, and SETTINGS changes of the initial
window (which move the windows of open streams, below zero too).
"""

from __future__ import annotations

from perfkit.http2 import (
    ACK,
    DATA,
    DEFAULT_WINDOW,
    END_HEADERS,
    END_STREAM,
    FRAME,
    HEADERS,
    PREFACE,
    SETTING,
    SETTINGS,
    U32,
    WINDOW_UPDATE,
    frame,
)
from perfkit.load.transports.base import LoopState, Timings
from perfkit.load.transports.h2 import H2Conn

INITIAL_WINDOW, MAX_FRAME = 0x4, 0x5


class RecordingTransport:
    """Fake transport: keeps every write."""

    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += bytes(data)

    def close(self) -> None:
        pass


def frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """(type, flags, stream id, payload) of every frame in `data`."""
    out = []
    pos = 0
    while pos < len(data):
        hi, lo, ftype, flags, sid = FRAME.unpack_from(data, pos)
        n = (hi << 8) | lo
        out.append((ftype, flags, sid, data[pos + 9 : pos + 9 + n]))
        pos += 9 + n
    assert pos == len(data)
    return out


class Peer:
    """One H2Conn and what it wrote since the last look."""

    def __init__(self, *settings: tuple[int, int]) -> None:
        self.timings, self.state = Timings(), LoopState()
        self.conn = H2Conn(self.timings, self.state, [b""], "127.0.0.1:1", closed_loop=False)
        self.t = RecordingTransport()
        self.conn.connection_made(self.t)  # type: ignore[arg-type]
        assert self.t.data.startswith(PREFACE)
        self.t.data = self.t.data[len(PREFACE) :]
        self.written()
        self.settings(*settings)

    def written(self) -> list[tuple[int, int, int, bytes]]:
        out = frames(self.t.data)
        self.t.data = b""
        return out

    def feed(self, data: bytes) -> list[tuple[int, int, int, bytes]]:
        self.conn.data_received(data)
        return self.written()

    def settings(self, *pairs: tuple[int, int]) -> list[tuple[int, int, int, bytes]]:
        out = self.feed(frame(SETTINGS, 0, 0, b"".join(SETTING.pack(k, v) for k, v in pairs)))
        assert (SETTINGS, ACK, 0, b"") in out
        return [f for f in out if f[0] != SETTINGS]

    def window_update(self, sid: int, inc: int) -> list[tuple[int, int, int, bytes]]:
        return self.feed(frame(WINDOW_UPDATE, 0, sid, U32.pack(inc)))

    def call(self, size: int) -> list[tuple[int, int, int, bytes]]:
        """Start a call whose request message is `size` bytes (5 more with gRPC's prefix)."""
        self.conn.msgs = [b"\x00" + U32.pack(size) + bytes(size)]
        self.conn.fire(0)
        return self.written()


def data_of(fs: list[tuple[int, int, int, bytes]], sid: int = 1) -> list[tuple[int, bool]]:
    return [(len(p), bool(fl & END_STREAM)) for t, fl, s, p in fs if t == DATA and s == sid]


async def test_small_request_is_one_headers_and_one_data_frame():
    p = Peer()
    fs = p.call(100)
    assert [(t, fl) for t, fl, _, _ in fs] == [(HEADERS, END_HEADERS), (DATA, END_STREAM)]
    assert data_of(fs) == [(105, True)]
    assert p.conn.send_window == DEFAULT_WINDOW - 105


async def test_data_split_to_the_peers_max_frame_size():
    p = Peer((INITIAL_WINDOW, 1 << 20), (MAX_FRAME, 16384))
    p.window_update(0, 1 << 20)
    assert data_of(p.call(40000)) == [(16384, False), (16384, False), (40005 - 32768, True)]
    p.settings((MAX_FRAME, 20000))
    assert data_of(p.call(40000), sid=3) == [(20000, False), (20000, False), (5, True)]


async def test_connection_window_stops_sends_until_window_update():
    p = Peer((INITIAL_WINDOW, 1 << 20), (MAX_FRAME, 1 << 16))
    assert sum(n for n, _ in data_of(p.call(100_000))) == DEFAULT_WINDOW
    assert p.conn.send_window == 0
    assert p.window_update(1, 10) == []  # a stream's window does not open the connection's
    fs = p.window_update(0, 20_000)
    assert data_of(fs) == [(20_000, False)]
    fs = p.window_update(0, 1 << 20)
    assert data_of(fs) == [(100_005 - DEFAULT_WINDOW - 20_000, True)]


async def test_stream_window_and_initial_window_settings():
    p = Peer((INITIAL_WINDOW, 1000))
    assert data_of(p.call(2995)) == [(1000, False)]  # 3000 bytes to send
    assert data_of(p.window_update(1, 1500)) == [(1500, False)]
    # A larger initial window grows the open stream's window by the difference (RFC 9113 6.9.2).
    assert data_of(p.settings((INITIAL_WINDOW, 1200))) == [(200, False)]
    # A smaller one can take it below zero: sends wait until updates bring it above.
    assert data_of(p.settings((INITIAL_WINDOW, 200))) == []
    assert p.conn.stream_windows[1] == -1000
    assert data_of(p.window_update(1, 1000)) == []
    assert data_of(p.window_update(1, 300)) == [(300, True)]
    assert 1 not in p.conn.stream_windows


async def test_streams_wait_in_order_and_resume_together():
    p = Peer((INITIAL_WINDOW, 1 << 20), (MAX_FRAME, 1 << 16))
    p.call(DEFAULT_WINDOW - 5)  # uses the connection window up
    assert data_of(p.call(10), sid=3) == []  # queued behind it: HEADERS only
    fs = p.window_update(0, 100)
    assert data_of(fs, sid=3) == [(15, True)]


async def test_answer_after_flow_controlled_request_counts_once():
    p = Peer((INITIAL_WINDOW, 10))
    p.call(20)
    p.window_update(1, 15)
    msg = b"\x00" + U32.pack(3) + b"abc"
    p.feed(
        frame(HEADERS, END_HEADERS, 1, b"\x88")
        + frame(DATA, 0, 1, msg)
        + frame(HEADERS, END_HEADERS | END_STREAM, 1, b"\x88")
    )
    assert len(p.timings.done) == 1
    assert p.timings.err_done == []
    assert p.state.free == [p.conn]
