"""The lean gRPC server (HTTP/2 on the event loop) as gRPC clients see it: unknown methods,
unparsable messages, a stream answered in order through the dynamic batcher, and a connection
that does not speak HTTP/2, none of which disturbs the calls around them."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.fixtures.server import ServerHandle, start_server
from tests.server import models
from tests.server.helpers import fp32_input

SERVICE = "/inference.GRPCInferenceService"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    repo = tmp_path_factory.mktemp("repo")
    models.add_sub(repo)
    # Queued (not answered inline): a dynamic batcher with a queue delay, two instances.
    models.slow_identity(
        repo,
        "batched",
        delay_us=2000,
        instances=2,
        batching="dynamic_batching { max_queue_delay_microseconds: 2000 }",
    )
    with start_server(repo, log_path=tmp_path_factory.mktemp("log") / "server.log") as handle:
        yield handle


def _unary(server: ServerHandle, method: str, payload: bytes) -> grpc.RpcError:
    with grpc.insecure_channel(server.grpc_url) as channel:
        call = channel.unary_unary(f"{SERVICE}/{method}")
        with pytest.raises(grpc.RpcError) as info:
            call(payload, timeout=10)
    err: Any = info.value
    return err  # type: ignore[no-any-return]


def _ready(server: ServerHandle) -> bool:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        return bool(client.is_model_ready("add_sub"))
    finally:
        client.close()


def test_unknown_method_is_unimplemented(server: ServerHandle) -> None:
    err: Any = _unary(server, "NoSuchMethod", b"")
    assert err.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "NoSuchMethod" in err.details()
    assert _ready(server)


def test_unparsable_request_is_invalid_argument(server: ServerHandle) -> None:
    err: Any = _unary(server, "ModelInfer", b"\xff\xff\xff\xff")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "cannot parse the request" in err.details()
    assert _ready(server)


def test_stream_through_the_batcher_answers_in_order(server: ServerHandle) -> None:
    results: list[tuple[Any, Any]] = []
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: results.append((result, error)))
    arrays = [np.full((1, 16), i, np.float32) for i in range(12)]
    try:
        for i, a in enumerate(arrays):
            client.async_stream_infer(
                "batched", [fp32_input(grpcclient, "INPUT0", a)], request_id=str(i)
            )
    finally:
        client.stop_stream()
        client.close()
    assert [e for _, e in results] == [None] * len(arrays)
    for i, ((result, _), a) in enumerate(zip(results, arrays, strict=True)):
        assert result.get_response().id == str(i)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a)


def test_a_connection_that_is_not_http2_is_closed_alone(server: ServerHandle) -> None:
    host, port = server.grpc_url.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):  # the server's SETTINGS, then GOAWAY, then EOF
            data += chunk
    assert data[3] == 0x4  # the first frame is the server's SETTINGS
    assert b"not an HTTP/2 connection preface" in data
    assert _ready(server)


def test_a_malformed_frame_closes_that_connection_alone(server: ServerHandle) -> None:
    from perfkit.http2 import PREFACE, SETTINGS, WINDOW_UPDATE, frame

    host, port = server.grpc_url.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        # A WINDOW_UPDATE must carry 4 bytes; this one carries 3.
        sock.sendall(PREFACE + frame(SETTINGS, 0, 0) + frame(WINDOW_UPDATE, 0, 0, b"\x00\x00\x01"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert b"malformed frame of type 8" in data  # in the GOAWAY's debug data
    assert _ready(server)


def test_many_calls_past_the_initial_flow_control_window(server: ServerHandle) -> None:
    # 200 answers of about 1 KB on one connection: well past HTTP/2's initial 64 KB window, so
    # the server must follow the client's WINDOW_UPDATEs (or stall).
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        a = np.arange(8 * 16, dtype=np.float32).reshape(8, 16)
        b = np.ones((8, 16), np.float32)
        inputs = [fp32_input(grpcclient, "INPUT0", a), fp32_input(grpcclient, "INPUT1", b)]
        for _ in range(200):
            out = client.infer("add_sub", inputs)
            np.testing.assert_array_equal(out.as_numpy("OUTPUT0"), a + b)
            np.testing.assert_array_equal(out.as_numpy("OUTPUT1"), a - b)
    finally:
        client.close()


def test_which_header_blocks_change_the_hpack_table() -> None:
    from hpack import Encoder
    from hpack.struct import NeverIndexedHeaderTuple
    from perfkit_server.grpc_wire import _changes_table

    headers = [(":method", "POST"), (":path", f"{SERVICE}/ModelInfer"), ("te", "trailers")]
    encoder = Encoder()
    assert _changes_table(encoder.encode(headers))  # first time: literals added to the table
    assert not _changes_table(encoder.encode(headers))  # then: indexed fields only
    secret = [NeverIndexedHeaderTuple("authorization", "x" * 200)]
    assert not _changes_table(encoder.encode(secret))  # never indexed, a long (2-byte) length
    encoder.header_table_size = 256
    assert _changes_table(encoder.encode(headers))  # a table size update
