"""What one HTTP/2 peer can make the gRPC server hold or do (issue #10: findings 1, 2, 4, 6, 8),
each on a raw loopback connection that writes the frames as given: a unary message is bounded as
its DATA arrives, a header block as its frames arrive, streams by the advertised
MAX_CONCURRENT_STREAMS, a reset call never runs and fast resets end the connection, an unread
connection is not read, and the frames RFC 9113 calls errors are answered as errors. After each,
a real gRPC call on a new connection still succeeds."""

from __future__ import annotations

import asyncio
import select
from collections.abc import Callable, Iterator

import pytest
import tritonclient.grpc as grpcclient

from perfkit.http2 import (
    ACK,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    HEADERS,
    PING,
    PUSH_PROMISE,
    RST_STREAM,
    SETTING,
    SETTINGS,
    U32,
    WINDOW_UPDATE,
    frame,
    hpack_string,
)
from tests.fixtures.server import ServerHandle, start_server
from tests.server import models
from tests.server.h2_client import RawH2, infer_request, message, rss_bytes
from tests.server.helpers import concurrent_singles, metrics

MAX_INPUT = 1 << 20
MAX_STREAMS = 8
RESET_BURST = 100
HEADER_LIST = 16 * 1024
NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, STREAM_CLOSED = 0x0, 0x1, 0x3, 0x5
FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, ENHANCE_YOUR_CALM = 0x6, 0x7, 0x8, 0xB


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    repo = tmp_path_factory.mktemp("repo")
    models.add_sub(repo)
    # A request here waits in the batcher until 8 have come (the delay is never reached).
    models.slow_identity(
        repo,
        "held",
        delay_us=0,
        max_batch_size=8,
        batching="dynamic_batching { max_queue_delay_microseconds: 60000000 }",
    )
    with start_server(
        repo,
        f"--http-max-input-size={MAX_INPUT}",
        f"--grpc-http2-max-concurrent-streams={MAX_STREAMS}",
        f"--grpc-http2-max-reset-burst={RESET_BURST}",
        log_path=tmp_path_factory.mktemp("log") / "server.log",
    ) as handle:
        yield handle


def _still_serves(server: ServerHandle) -> None:
    assert server.process.poll() is None
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        assert client.is_server_live()
        assert client.is_model_ready("add_sub")
    finally:
        client.close()


def test_the_limits_are_advertised(server: ServerHandle) -> None:
    with RawH2(server.grpc_url).open() as h2:
        assert h2.server_settings[0x3] == MAX_STREAMS  # SETTINGS_MAX_CONCURRENT_STREAMS
        assert h2.server_settings[0x6] == HEADER_LIST  # SETTINGS_MAX_HEADER_LIST_SIZE


def test_a_unary_message_past_its_declared_length_fails_at_once(server: ServerHandle) -> None:
    # Finding 1: DATA past the message's declared length was kept until END_STREAM.
    with RawH2(server.grpc_url, timeout_s=5).open() as h2:
        rss0 = rss_bytes(server.process.pid)
        declared = message(bytes(100))[:5]
        h2.send(h2.headers(1, "ModelInfer") + frame(DATA, 0, 1, declared + bytes(300)))
        trailers = h2.trailers_of(1)  # before END_STREAM: the call is over now
        assert trailers["grpc-status"] == "8"  # RESOURCE_EXHAUSTED
        assert "larger than declared" in trailers["grpc-message"]
        assert h2.reset_of(1).error_code == NO_ERROR
        chunk = frame(DATA, 0, 1, bytes(1 << 20))
        for _ in range(64):  # 64 MiB more on the stream: dropped, not kept
            h2.send(chunk)
        h2.ping()
        assert rss_bytes(server.process.pid) - rss0 < 32 << 20
    _still_serves(server)


def test_a_message_over_the_max_input_size_fails_before_it_arrives(server: ServerHandle) -> None:
    with RawH2(server.grpc_url, timeout_s=5).open() as h2:
        prefix = message(bytes(2 * MAX_INPUT))[:5]
        h2.send(h2.headers(1, "ModelInfer") + frame(DATA, 0, 1, prefix + bytes(1000)))
        trailers = h2.trailers_of(1)
        assert trailers["grpc-status"] == "8"
        assert f"vs. {MAX_INPUT}" in trailers["grpc-message"]
    _still_serves(server)


def test_a_continuation_flood_ends_the_connection(server: ServerHandle) -> None:
    # Finding 2 (CVE-2024-27316): the header block was only measured once it ended.
    with RawH2(server.grpc_url, timeout_s=5).open() as h2:
        block = h2.headers(1, "ModelInfer")[9:]
        flood = frame(HEADERS, 0, 1, block) + b"".join(
            frame(CONTINUATION, 0, 1, bytes(4096)) for _ in range(16)
        )
        h2.send(flood)  # 64 KiB, no END_HEADERS
        assert h2.goaway().error_code == ENHANCE_YOUR_CALM
    _still_serves(server)


def test_a_header_list_over_the_limit_when_decoded_ends_the_connection(
    server: ServerHandle,
) -> None:
    # 1 KB into the HPACK table (a literal with incremental indexing), then the entry named
    # 40 times (index 62, one byte each): a 1 KB block, a 40 KB header list.
    with RawH2(server.grpc_url, timeout_s=5).open() as h2:
        block = b"\x40" + hpack_string(b"x-big") + hpack_string(b"v" * 1000) + b"\xbe" * 40
        h2.send(frame(HEADERS, END_HEADERS, 1, block))
        assert h2.goaway().error_code == ENHANCE_YOUR_CALM
    _still_serves(server)


def test_streams_past_the_advertised_limit_are_refused(server: ServerHandle) -> None:
    # Finding 4: no SETTINGS_MAX_CONCURRENT_STREAMS; 20,000 half-open streams were taken.
    with RawH2(server.grpc_url, timeout_s=5).open() as h2:
        sids = [1 + 2 * i for i in range(MAX_STREAMS + 1)]
        h2.send(b"".join(h2.headers(sid, "ModelInfer") for sid in sids))  # all left open
        assert h2.reset_of(sids[-1]).error_code == REFUSED_STREAM
        h2.send(b"".join(frame(RST_STREAM, 0, sid, U32.pack(CANCEL)) for sid in sids[:-1]))
        h2.send(h2.call(sids[-1] + 2, "ServerLive", b""))  # the slots are free again
        assert h2.trailers_of(sids[-1] + 2)["grpc-status"] == "0"
    _still_serves(server)


def _canceled(server: ServerHandle, model: str) -> float:
    return sum(
        v
        for k, v in metrics(server.metrics_url).items()
        if k.startswith("nv_inference_request_failure")
        and f'model="{model}"' in k
        and 'reason="CANCELED"' in k
    )


def test_a_reset_call_that_is_queued_never_runs(server: ServerHandle) -> None:
    # Finding 4 (CVE-2023-44487): a reset stream's request still ran.
    before = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        count0 = before.get_inference_statistics("held").model_stats[0].inference_count
    finally:
        before.close()
    with RawH2(server.grpc_url, timeout_s=10).open() as h2:
        h2.send(h2.call(1, "ModelInfer", infer_request("held")))
        h2.ping()  # the call is queued in the batcher now, waiting for 7 more
        h2.send(frame(RST_STREAM, 0, 1, U32.pack(CANCEL)))
        h2.ping()
        # 7 more fill the batch the reset request was counted in; only they run.
        asyncio.run(concurrent_singles(server.grpc_url, "held", 7))
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        stats = client.get_inference_statistics("held").model_stats[0]
    finally:
        client.close()
    assert stats.inference_count - count0 == 7
    assert _canceled(server, "held") == 1


def test_resets_faster_than_the_budget_get_enhance_your_calm(server: ServerHandle) -> None:
    with RawH2(server.grpc_url, timeout_s=5).open() as h2:
        flood = b"".join(
            h2.headers(sid, "ServerLive", end_stream=False)
            + frame(RST_STREAM, 0, sid, U32.pack(CANCEL))
            for sid in range(1, 2 * (RESET_BURST + 50), 2)
        )
        h2.send(flood)
        assert h2.goaway().error_code == ENHANCE_YOUR_CALM
    _still_serves(server)


def test_a_client_that_does_not_read_is_not_read(server: ServerHandle) -> None:
    # Finding 6: an unread PING flood made the server buffer every PING ACK (+48 MB).
    cap = 96 << 20
    with RawH2(server.grpc_url, timeout_s=5).open() as h2:
        rss0 = rss_bytes(server.process.pid)
        chunk = frame(PING, 0, 0, bytes(8)) * 4096  # 68 KiB
        sock = h2.sock
        sock.setblocking(False)
        sent = 0
        while sent < cap:
            _, writable, _ = select.select([], [sock], [], 2.0)
            if not writable:
                break  # the server stopped reading: its replies are not being read
            try:
                sent += sock.send(chunk)
            except BlockingIOError:
                continue
        grown = rss_bytes(server.process.pid) - rss0
        sock.setblocking(True)
    assert sent < cap, "the server kept reading a client that does not read"
    assert grown < 16 << 20
    _still_serves(server)


def test_a_stream_whose_requests_queue_is_not_read_past_its_bound(server: ServerHandle) -> None:
    # ModelStreamInfer answers its requests in turn; the requests behind a call that does not
    # finish were parsed and queued without limit. Past the queue's bound the server stops
    # reading the connection instead.
    cap = 32 << 20
    with RawH2(server.grpc_url, timeout_s=5).open() as h2:
        rss0 = rss_bytes(server.process.pid)
        # The first request waits in "held"'s batcher: every later one queues behind it.
        h2.send(h2.headers(1, "ModelStreamInfer"))
        chunk = frame(DATA, 0, 1, message(infer_request("held")) * 256)
        sock = h2.sock
        sock.setblocking(False)
        sent = 0
        while sent < cap:
            _, writable, _ = select.select([], [sock], [], 2.0)
            if not writable:
                break  # the server stopped reading: its queue is full
            try:
                sent += sock.send(chunk)
            except BlockingIOError:
                continue
        grown = rss_bytes(server.process.pid) - rss0
        sock.setblocking(True)
    assert sent < cap, "the server kept queueing a stream's requests"
    assert grown < 16 << 20
    _still_serves(server)


def _sends(make: Callable[[RawH2], bytes]) -> Callable[[RawH2], None]:
    return lambda h2: h2.send(make(h2))


def _reuse(h2: RawH2) -> None:
    h2.send(h2.call(1, "ServerLive", b""))
    assert h2.trailers_of(1)["grpc-status"] == "0"
    h2.send(h2.headers(1, "ServerLive", end_stream=True))


def _settings(*pairs: tuple[int, int]) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(SETTING.pack(k, v) for k, v in pairs))


# (what the peer sends, and either ("goaway", code) or ("rst", stream, code)).
RFC_CASES: dict[str, tuple[Callable[[RawH2], None], tuple[str, int] | tuple[str, int, int]]] = {
    "settings-length-5": (_sends(lambda h: frame(SETTINGS, 0, 0, bytes(5))), ("goaway", 0x6)),
    "settings-on-a-stream": (_sends(lambda h: frame(SETTINGS, 0, 1)), ("goaway", 0x1)),
    "settings-ack-with-payload": (
        _sends(lambda h: frame(SETTINGS, ACK, 0, SETTING.pack(4, 1))),
        ("goaway", 0x6),
    ),
    "enable-push-7": (_sends(lambda h: _settings((0x2, 7))), ("goaway", 0x1)),
    "initial-window-2^31": (_sends(lambda h: _settings((0x4, 1 << 31))), ("goaway", 0x3)),
    "max-frame-size-0": (_sends(lambda h: _settings((0x5, 0))), ("goaway", 0x1)),
    "max-frame-size-2^24": (_sends(lambda h: _settings((0x5, 1 << 24))), ("goaway", 0x1)),
    "window-update-0-on-the-connection": (
        _sends(lambda h: frame(WINDOW_UPDATE, 0, 0, U32.pack(0))),
        ("goaway", 0x1),
    ),
    "window-update-0-on-a-stream": (
        _sends(lambda h: h.headers(1, "ModelInfer") + frame(WINDOW_UPDATE, 0, 1, U32.pack(0))),
        ("rst", 1, 0x1),
    ),
    "connection-window-past-2^31-1": (
        _sends(lambda h: frame(WINDOW_UPDATE, 0, 0, U32.pack((1 << 31) - 1))),
        ("goaway", 0x3),
    ),
    "stream-window-past-2^31-1": (
        _sends(
            lambda h: (
                h.headers(1, "ModelInfer") + frame(WINDOW_UPDATE, 0, 1, U32.pack((1 << 31) - 1))
            )
        ),
        ("rst", 1, 0x3),
    ),
    "headers-on-stream-0": (_sends(lambda h: h.headers(0, "ServerLive")), ("goaway", 0x1)),
    "headers-on-an-even-stream": (_sends(lambda h: h.headers(2, "ServerLive")), ("goaway", 0x1)),
    "headers-below-the-last-stream": (
        _sends(lambda h: h.headers(5, "ModelInfer") + h.headers(3, "ModelInfer")),
        ("goaway", 0x1),
    ),
    "stream-id-reuse": (_reuse, ("goaway", 0x1)),
    "data-after-end-stream": (
        _sends(
            lambda h: (
                h.headers(1, "ServerLive")
                + frame(DATA, END_STREAM, 1, message(b""))
                + frame(DATA, 0, 1, b"more")
            )
        ),
        ("rst", 1, 0x5),
    ),
    "data-on-an-idle-stream": (_sends(lambda h: frame(DATA, 0, 7, b"x")), ("goaway", 0x1)),
    "push-promise-from-a-client": (
        _sends(lambda h: frame(PUSH_PROMISE, 0x4, 1, U32.pack(2))),
        ("goaway", 0x1),
    ),
}


@pytest.mark.parametrize("case", list(RFC_CASES))
def test_rfc9113_frame_and_stream_rules(server: ServerHandle, case: str) -> None:
    # Finding 8: each of these was ignored; MAX_FRAME_SIZE=0 made the next call hang.
    send, expected = RFC_CASES[case]
    with RawH2(server.grpc_url, timeout_s=5).open() as h2:
        send(h2)
        if expected[0] == "goaway":
            assert h2.goaway().error_code == expected[1]
        else:
            assert h2.reset_of(expected[1]).error_code == expected[2]  # type: ignore[misc]
            h2.ping()  # a stream error: the connection goes on
    _still_serves(server)


def test_the_connection_stays_usable_after_a_refused_message(server: ServerHandle) -> None:
    with RawH2(server.grpc_url, timeout_s=5).open() as h2:
        h2.send(h2.headers(1, "ModelInfer") + frame(DATA, 0, 1, message(bytes(10)) + b"!"))
        assert h2.trailers_of(1)["grpc-status"] == "8"
        h2.send(h2.call(3, "ServerLive", b""))
        assert h2.trailers_of(3)["grpc-status"] == "0"
