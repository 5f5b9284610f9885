"""--streaming's ModelStreamInfer client driven frame by frame (no server): a request written as a
DATA frame on its open stream (no END_STREAM), responses reassembled across frames and padding,
a decoupled request completed at its final flag with its latency at the last response with
outputs, a non-decoupled one at its response, and the bounds (an oversized or compressed message,
a reset stream) failing the request and losing the slot, never the generator."""

from __future__ import annotations

import pytest
from tritonclient.grpc import service_pb2

from perfkit.http2 import DATA, END_STREAM, HEADERS, PADDED, RST_STREAM, U32, frame
from perfkit.load.transports.base import LoopState, Timings
from perfkit.load.transports.h2stream import MAX_MESSAGE, StreamConn
from tests.load.test_h2_flow import RecordingTransport, frames


def response(rid: str, *, final: bool | None, outputs: bool, error: str = "") -> bytes:
    r = service_pb2.ModelStreamInferResponse(error_message=error)
    r.infer_response.id = rid
    if final is not None:
        r.infer_response.parameters["triton_final_response"].bool_param = final
    if outputs:
        r.infer_response.raw_output_contents.append(b"\x01" * 16)
    body = r.SerializeToString()
    return b"\x00" + U32.pack(len(body)) + body


@pytest.fixture
async def conn():
    c = StreamConn(
        Timings(), LoopState(), [b"REQ"], b"\x83", closed_loop=False, decoupled=True,
        suffix=b"", compression="none",
    )  # fmt: skip
    c.t = RecordingTransport()  # type: ignore[assignment]
    c.ready.set_result(None)
    return c


async def test_decoupled_request_ends_at_its_final_response(conn):
    slot = conn.open_stream()
    slot.fire()
    written = frames(conn.t.data)
    assert written[0][:3] == (HEADERS, 0x4, slot.sid)  # END_HEADERS, stream left open
    ftype, flags, sid, payload = written[1]
    assert (ftype, flags, sid) == (DATA, 0, slot.sid)
    assert payload[5:].startswith(b"REQ")
    msgs = [response("1", final=False, outputs=True) for _ in range(3)]
    msgs.append(response("1", final=True, outputs=False))
    wire = b"".join(msgs)
    # Split mid-message, and the second part padded.
    cut = len(wire) // 2 + 3
    conn.data_received(frame(DATA, 0, slot.sid, wire[:cut]))
    assert conn.timings.done == []
    padded = bytes([4]) + wire[cut:] + bytes(4)
    conn.data_received(frame(DATA, PADDED, slot.sid, padded))
    assert conn.timings.responses == [3]
    assert len(conn.timings.done) == 1
    assert conn.timings.done[0] == slot.last
    assert conn.state.free == [slot]
    assert not slot.lost


async def test_non_decoupled_completes_at_its_response(conn):
    conn.decoupled = False
    slot = conn.open_stream()
    slot.fire()
    conn.data_received(frame(DATA, 0, slot.sid, response("1", final=None, outputs=True)))
    assert conn.timings.responses == [1]
    slot.fire()
    conn.data_received(frame(DATA, 0, slot.sid, response("2", final=True, outputs=True)))
    assert conn.timings.responses == [1, 1]


async def test_error_message_fails_only_its_request(conn):
    slot = conn.open_stream()
    slot.fire()
    conn.data_received(frame(DATA, 0, slot.sid, response("", final=None, outputs=False,
                                                        error="boom")))  # fmt: skip
    assert conn.timings.err_msgs == ["gRPC stream error: boom"]
    assert not slot.lost
    assert conn.state.inflight == 0


@pytest.mark.parametrize(
    "data",
    [b"\x00" + U32.pack(MAX_MESSAGE + 1), b"\x01" + U32.pack(3) + b"abc"],
    ids=["oversized", "compressed"],
)
async def test_bounds_lose_the_stream(conn, data):
    slot = conn.open_stream()
    slot.fire()
    conn.t.data = b""
    conn.data_received(frame(DATA, 0, slot.sid, data))
    assert slot.lost
    assert len(conn.timings.err_msgs) == 1
    assert conn.state.inflight == 0
    # The stream is cancelled, and a send on the lost slot is an error, not a write.
    assert frames(conn.t.data)[0][0] == RST_STREAM
    slot.fire()
    assert len(conn.timings.err_msgs) == 2


async def test_server_ending_the_stream_fails_the_request(conn):
    slot = conn.open_stream()
    slot.fire()
    conn.data_received(frame(HEADERS, END_STREAM | 0x4, slot.sid, b""))
    assert slot.lost
    assert conn.timings.err_msgs == ["the server ended the gRPC stream"]
