"""The gRPC server's HTTP/2 under random frame sequences: hypothesis draws a mix of valid client
actions (made by `h2`, python-hyper's HTTP/2 state machine: calls, DATA, resets, PINGs, window
updates, SETTINGS) and raw frames of any type, flags, stream and payload, then cuts the bytes at
random points into separate writes. A PING ends each example: its ACK (or the connection's end)
says every frame before it was handled, so each example is bounded by one socket timeout (5 s).

Invariants: the server stays up; a real gRPC call on a new connection succeeds after every
example; a sequence of valid actions only never gets a connection error, and the server's replies
pass `h2`'s own checks (it is the oracle); the server's RSS stays within 64 MiB of its start.

Budget: `make test` runs 50 examples with no per-example deadline (a few seconds in all);
`make fuzz` loads the `fuzz` hypothesis profile (tests/conftest.py: 2,000 examples).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import pytest
import tritonclient.grpc as grpcclient
from h2.stream import StreamState
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perfkit.http2 import ACK, GOAWAY, PING, frame
from tests.fixtures.server import ServerHandle, start_server
from tests.server import models
from tests.server.h2_client import (
    RawH2,
    infer_request,
    message,
    request_headers,
    rss_bytes,
)

_EXAMPLES = (
    settings.get_profile("fuzz").max_examples
    if os.environ.get("HYPOTHESIS_PROFILE") == "fuzz"
    else 50
)
_RSS_BOUND = 64 << 20
_DONE = b"fuzzdone"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    repo = tmp_path_factory.mktemp("repo")
    models.add_sub(repo)
    with start_server(
        repo, "--http-max-input-size=1048576", log_path=tmp_path_factory.mktemp("log") / "log"
    ) as handle:
        handle.rss0 = rss_bytes(handle.process.pid)  # type: ignore[attr-defined]
        yield handle


@pytest.fixture(scope="module")
def grpc_client(server: ServerHandle) -> Iterator[Any]:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    yield client
    client.close()


_METHODS = st.sampled_from(
    [
        ("ServerLive", b""),
        ("ModelInfer", infer_request("add_sub")),
        ("ModelInfer", b"\xff\xfe not a message"),
        ("ModelReady", b""),
        ("NoSuchMethod", b""),
    ]
)
VALID = st.one_of(
    st.tuples(st.just("call"), _METHODS, st.booleans()),
    st.tuples(st.just("data"), st.integers(0, 70_000), st.booleans()),
    st.tuples(st.just("end")),
    st.tuples(st.just("reset")),
    st.tuples(st.just("ping")),
    st.tuples(st.just("window"), st.integers(1, 1 << 20)),
    st.tuples(
        st.just("settings"),
        st.sampled_from([0, 1, 65535, (1 << 31) - 1]),
        st.sampled_from([16384, (1 << 24) - 1]),
    ),
)
RAW = st.tuples(
    st.just("raw"),
    st.integers(0, 10),  # every frame type and one unknown
    st.integers(0, 255),
    st.sampled_from([0, 1, 2, 3, 5, 7, 99, (1 << 31) - 1]),
    st.binary(max_size=48),
)


def _valid(conn: h2.connection.H2Connection, op: tuple[Any, ...], sid: int | None) -> int | None:
    """Apply one client action through h2 on the last stream opened, when its state allows it
    (h2 refuses the rest, but closes the stream on its side when it does)."""
    kind = op[0]
    stream = conn.streams.get(sid) if sid is not None else None
    sending = stream is not None and stream.state_machine.state in (StreamState.OPEN,)
    try:
        if kind == "call":
            (method, body), end = op[1], op[2]
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, request_headers(method))
            conn.send_data(sid, message(body), end_stream=end)
        elif kind == "data" and sending:
            conn.send_data(sid, bytes(op[1]), end_stream=op[2])
        elif kind == "end" and sending:
            conn.end_stream(sid)
        elif kind == "reset" and sending:
            conn.reset_stream(sid)
        elif kind == "ping":
            conn.ping(b"12345678")
        elif kind == "window":
            conn.increment_flow_control_window(op[1])
        elif kind == "settings":
            conn.update_settings({0x4: op[1], 0x5: op[2]})
    except h2.exceptions.H2Error:
        pass  # an action h2 will not take in this state (e.g. DATA past the window)
    return sid


def _exchange(url: str, chunks: list[bytes]) -> tuple[list[bytes], bool]:
    """Write `chunks` then the closing PING; the server's frames, and whether it answered it."""
    with RawH2(url, timeout_s=5) as peer:
        for chunk in chunks:
            try:
                peer.send(chunk)
            except (BrokenPipeError, ConnectionResetError):
                return [], False  # closed on a connection error before all was written
        try:
            peer.send(frame(PING, 0, 0, _DONE))
        except (BrokenPipeError, ConnectionResetError):
            return [], False
        frames: list[bytes] = []
        while (f := peer.read()) is not None:
            frames.append(frame(f.ftype, f.flags, f.sid, f.payload))
            if f.ftype == PING and f.flags & ACK and f.payload == _DONE:
                return frames, True
        return frames, False


@settings(
    max_examples=_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    ops=st.lists(st.one_of(VALID, RAW), min_size=1, max_size=12),
    cuts=st.lists(st.integers(1, 300), max_size=8),
)
def test_random_frame_sequences(
    server: ServerHandle, grpc_client: Any, ops: list[tuple[Any, ...]], cuts: list[int]
) -> None:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    data = b""
    sid: int | None = None
    for op in ops:
        if op[0] == "raw":
            data += conn.data_to_send() + frame(op[1], op[2], op[3], op[4])
        else:
            sid = _valid(conn, op, sid)
    data += conn.data_to_send()
    chunks = []
    for cut in cuts:
        chunks.append(data[:cut])
        data = data[cut:]
    chunks.append(data)

    frames, answered = _exchange(server.grpc_url, [c for c in chunks if c])

    if all(op[0] != "raw" for op in ops):
        assert answered, "a valid sequence lost its connection"
        for event in conn.receive_data(b"".join(frames)):  # h2 checks every frame we got
            if isinstance(event, h2.events.ConnectionTerminated):
                assert event.error_code == 0, event
    else:
        # Either it went on, or it ended the connection with a GOAWAY (never just dropped it).
        assert answered or not frames or frames[-1][3] == GOAWAY, frames[-3:]
    assert server.process.poll() is None, "the server died"
    assert grpc_client.is_server_live()
    assert rss_bytes(server.process.pid) - server.rss0 < _RSS_BOUND  # type: ignore[attr-defined]
