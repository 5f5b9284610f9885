"""Decoupled models and gRPC streaming with several responses per request, and the scheduler's
execution modes (takes_requests, decoupled) on their own.

End to end: perfkit_server serves Triton's `repeat_int32` test model (backend perfkit_repeat);
tritonclient's gRPC stream (start_stream / async_stream_infer) collects every response in a
callback, and the test waits on a queue with a deadline, never on a sleep. In process: the
scheduler with tiny fake backends defined here (the Backend seam), and the ResponseStream bound.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from perfkit_server import decoupled
from perfkit_server.decoupled import MAX_UNDELIVERED, ResponseStream
from perfkit_server.errors import InferenceFailed, InvalidInput
from perfkit_server.scheduler import BatcherSpec, Scheduler
from perfkit_server.stats import ModelStats
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import InferenceServerException

from perfkit.http2 import DATA, RST_STREAM, U32, frame
from tests.fixtures.server import ServerHandle, start_server
from tests.server import models
from tests.server.h2_client import RawH2, message
from tests.server.helpers import stats

WAIT_S = 30.0
_CANCEL = 8  # RST_STREAM error code

REPEAT = """name: "{name}"
backend: "perfkit_repeat"
max_batch_size: 0
model_transaction_policy {{ decoupled: true }}
input [
  {{ name: "IN" data_type: TYPE_INT32 dims: [ -1 ] }},
  {{ name: "DELAY" data_type: TYPE_UINT32 dims: [ -1 ] }},
  {{ name: "WAIT" data_type: TYPE_UINT32 dims: [ 1 ] }}
]
output [
  {{ name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] }},
  {{ name: "IDX" data_type: TYPE_UINT32 dims: [ 1 ] }}
]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
"""
REPEAT_MODELS = ("repeat_int32", "repeat_stats", "repeat_cancel", "repeat_bound")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    repo = tmp_path_factory.mktemp("repo")
    for name in REPEAT_MODELS:
        models.write_config(repo, name, REPEAT.format(name=name))
        (repo / name / "1").mkdir()
    models.slow_identity(repo, "plain", delay_us=0)
    log = tmp_path_factory.mktemp("log") / "server.log"
    with start_server(repo, log_path=log) as handle:
        yield handle


def _inputs(values: list[int], delays: list[int] | None = None, wait: int = 0) -> list[Any]:
    delays = delays if delays is not None else [0] * len(values)
    arrays = (
        ("IN", np.array(values, dtype=np.int32), "INT32"),
        ("DELAY", np.array(delays, dtype=np.uint32), "UINT32"),
        ("WAIT", np.array([wait], dtype=np.uint32), "UINT32"),
    )
    inputs = []
    for name, array, datatype in arrays:
        inp = grpcclient.InferInput(name, list(array.shape), datatype)
        inp.set_data_from_numpy(array)
        inputs.append(inp)
    return inputs


class Stream:
    """A tritonclient gRPC stream whose callback queues (result, error) pairs."""

    def __init__(self, url: str) -> None:
        self.client = grpcclient.InferenceServerClient(url)
        self.results: queue.Queue[tuple[Any, Any]] = queue.Queue()
        self.client.start_stream(lambda result, error: self.results.put((result, error)))

    def send(
        self, model: str, inputs: list[Any], request_id: str, empty_final: bool = True
    ) -> None:
        self.client.async_stream_infer(
            model, inputs, request_id=request_id, enable_empty_final_response=empty_final
        )

    def take(self, n: int) -> list[tuple[Any, Any]]:
        """The next `n` stream messages (bounded wait)."""
        deadline = time.monotonic() + WAIT_S
        return [self.results.get(timeout=max(0.0, deadline - time.monotonic())) for _ in range(n)]

    def close(self, cancel: bool = False) -> None:
        self.client.stop_stream(cancel_requests=cancel)
        self.client.close()


def _final(result: Any) -> bool:
    return bool(result.get_response().parameters["triton_final_response"].bool_param)


def _row(result: Any) -> tuple[str, int | None, int | None, bool]:
    """(id, OUT, IDX, final) of a response (OUT/IDX None in an empty final response)."""
    out, idx = result.as_numpy("OUT"), result.as_numpy("IDX")
    return (
        result.get_response().id,
        None if out is None else int(out[0]),
        None if idx is None else int(idx[0]),
        _final(result),
    )


@pytest.fixture
def stream(server: ServerHandle) -> Iterator[Stream]:
    s = Stream(server.grpc_url)
    yield s
    s.close(cancel=True)  # what a test left in flight (a minute-long delay) is cancelled


def test_n_responses_in_order_with_ids_and_final_flag(stream: Stream) -> None:
    stream.send("repeat_int32", _inputs([10, 11, 12]), "r1")
    rows = [_row(result) for result, error in stream.take(4) if error is None]
    assert rows == [
        ("r1", 10, 0, False),
        ("r1", 11, 1, False),
        ("r1", 12, 2, False),
        ("r1", None, None, True),  # FINAL without outputs: sent because the client asked
    ]


def test_no_empty_final_response_unless_asked(server: ServerHandle, stream: Stream) -> None:
    done = _count(server, "repeat_int32", "success")
    stream.send("repeat_int32", _inputs([1, 2]), "quiet", empty_final=False)
    assert [_row(result) for result, _ in stream.take(2)] == [
        ("quiet", 1, 0, False),
        ("quiet", 2, 1, False),
    ]
    # Its FINAL is in once the request counts as a success; anything sent for it went before.
    _until_count(server, "repeat_int32", "success", done + 1)
    stream.send("repeat_int32", _inputs([]), "marker")  # no responses, then its empty final
    assert [_row(result) for result, _ in stream.take(1)] == [("marker", None, None, True)]
    assert stream.results.empty()


def _count(server: ServerHandle, model: str, key: str) -> int:
    entry = stats(server.http_url, model)
    return int(entry[key] if key.endswith("_count") else entry["inference_stats"][key]["count"])


def _until_count(server: ServerHandle, model: str, key: str, at_least: int) -> None:
    """Poll (bounded) until the model's statistics count `key` reaches `at_least`."""
    deadline = time.monotonic() + WAIT_S
    while _count(server, model, key) < at_least:
        assert time.monotonic() < deadline, f"{model}: {key} never reached {at_least}"
        time.sleep(0.01)


def test_several_requests_interleave_on_one_stream(stream: Stream) -> None:
    # "slow" holds its second response for a minute: the other requests on the stream are
    # answered meanwhile, so they are not queued behind it.
    stream.send("repeat_int32", _inputs([7, 8], [0, 60_000]), "slow")
    for i in range(4):
        stream.send("repeat_int32", _inputs([100 * i + j for j in range(3)]), f"q{i}")
    rows = [_row(result) for result, _ in stream.take(1 + 4 * 4)]
    by_id: dict[str, list[tuple[int | None, int | None, bool]]] = {}
    for rid, out, idx, final in rows:
        by_id.setdefault(rid, []).append((out, idx, final))
    assert by_id.pop("slow") == [(7, 0, False)]
    for i in range(4):
        values = [100 * i + j for j in range(3)]
        assert by_id[f"q{i}"] == [(v, j, False) for j, v in enumerate(values)] + [
            (None, None, True)
        ]


def test_an_error_is_a_message_and_the_stream_goes_on(stream: Stream) -> None:
    stream.send("repeat_int32", _inputs([1]), "before")
    bad = _inputs([1, 2], [0, 0, 0])
    stream.send("repeat_int32", bad, "bad")
    stream.send("repeat_int32", [_inputs([1])[0]], "missing")  # fails validation
    stream.send("repeat_int32", _inputs([2]), "after")
    messages = stream.take(2 + 2 + 2)
    errors = [str(error) for _, error in messages if error is not None]
    assert len(errors) == 2
    assert any("expected IN and DELAY shape to match, got [2] and [3]" in e for e in errors)
    assert any("expected 3 inputs but got 1 inputs" in e for e in errors)
    rows = [_row(result) for result, error in messages if error is None]
    assert [r for r in rows if r[0] == "before"] == [
        ("before", 1, 0, False),
        ("before", None, None, True),
    ]
    assert [r for r in rows if r[0] == "after"] == [
        ("after", 2, 0, False),
        ("after", None, None, True),
    ]


def test_an_error_after_responses_ends_the_request_alone(
    perfkit_server: Any, tmp_path: Path
) -> None:
    """A request answered in part, then failed (its model unloads mid-request): the error is a
    stream message flagged final, after the responses already sent."""
    models.write_config(tmp_path, "repeat_int32", REPEAT.format(name="repeat_int32"))
    (tmp_path / "repeat_int32" / "1").mkdir()
    server = perfkit_server(tmp_path, "--model-control-mode=explicit", "--load-model=*")
    s = Stream(server.grpc_url)
    try:
        s.send("repeat_int32", _inputs([1, 2], [0, 60_000]), "cut")
        [(first, _)] = s.take(1)
        assert _row(first) == ("cut", 1, 0, False)
        grpcclient.InferenceServerClient(server.grpc_url).unload_model("repeat_int32")
        [(result, error)] = s.take(1)
        assert result is None
        assert "model 'repeat_int32' is unloading" in str(error)
    finally:
        s.close(cancel=True)


def test_error_messages_carry_the_request_id(server: ServerHandle) -> None:
    """As Triton: a request refused before it runs names its id; a model's error response also
    its model and the triton_final_response flag."""
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    bad_shape = pb.ModelInferRequest()
    bad_shape.ParseFromString(_repeat_request("repeat_int32", 2))
    bad_shape.id = "shape"
    bad_shape.inputs[1].shape[:] = [3]
    bad_shape.raw_input_contents[1] = bytes(12)
    unknown = pb.ModelInferRequest(model_name="no_such_model", id="unknown")
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        replies = list(stub.ModelStreamInfer(iter([unknown, bad_shape]), timeout=WAIT_S))
    assert [(r.infer_response.id, bool(r.error_message)) for r in replies] == [
        ("unknown", True),
        ("shape", True),
    ]
    failed = replies[1].infer_response
    assert failed.model_name == "repeat_int32"
    assert failed.parameters["triton_final_response"].bool_param
    assert "triton_final_response" not in replies[0].infer_response.parameters


def test_a_model_that_is_not_decoupled_answers_once_and_final(stream: Stream) -> None:
    x = np.arange(16, dtype=np.float32).reshape(1, 16)
    inp = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
    inp.set_data_from_numpy(x)
    stream.client.async_stream_infer("plain", [inp], request_id="p")
    [(result, error)] = stream.take(1)
    assert error is None
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x)
    assert result.get_response().id == "p"
    assert _final(result)


def test_unary_inference_is_refused_as_triton_refuses_it(server: ServerHandle) -> None:
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    with pytest.raises(InferenceServerException) as grpc_error:
        grpc.infer("repeat_int32", _inputs([1]))
    assert "ModelInfer RPC doesn't support models with decoupled transaction policy" in str(
        grpc_error.value
    )
    assert grpc_error.value.status() == "StatusCode.UNIMPLEMENTED"
    http = httpclient.InferenceServerClient(server.http_url)
    inputs = []
    for inp in _inputs([1]):
        shape = [int(d) for d in inp.shape()]
        h = httpclient.InferInput(inp.name(), shape, inp.datatype())
        h.set_data_from_numpy(
            np.zeros(shape, dtype=np.int32 if inp.datatype() == "INT32" else np.uint32)
        )
        inputs.append(h)
    with pytest.raises(InferenceServerException) as http_error:
        http.infer("repeat_int32", inputs)
    assert "HTTP end point doesn't support models with decoupled transaction policy" in str(
        http_error.value
    )
    assert http_error.value.status() == "501"


def test_a_client_that_cancels_mid_stream_leaves_the_server_healthy(server: ServerHandle) -> None:
    s = Stream(server.grpc_url)
    # Thousands of responses, far more than the client reads before it goes away.
    s.send("repeat_cancel", _inputs(list(range(20_000))), "big")
    first = s.take(3)
    assert [_row(r)[2] for r, _ in first] == [0, 1, 2]
    s.close(cancel=True)
    # The request is counted as a failure once the server sees the stream go (Triton: CANCELED).
    _until_count(server, "repeat_cancel", "fail", 1)
    # The model's responder let go and the server serves the next stream as before.
    after = Stream(server.grpc_url)
    try:
        after.send("repeat_cancel", _inputs([5]), "next")
        assert [_row(r) for r, _ in after.take(2)] == [
            ("next", 5, 0, False),
            ("next", None, None, True),
        ]
    finally:
        after.close()


def _repeat_request(model: str, n: int) -> bytes:
    req = pb.ModelInferRequest(model_name=model, id="many")
    for name, datatype, array in (
        ("IN", "INT32", np.arange(n, dtype=np.int32)),
        ("DELAY", "UINT32", np.zeros(n, dtype=np.uint32)),
        ("WAIT", "UINT32", np.zeros(1, dtype=np.uint32)),
    ):
        tensor = req.inputs.add()
        tensor.name, tensor.datatype = name, datatype
        tensor.shape.extend(array.shape)
        req.raw_input_contents.append(array.tobytes())
    return bytes(req.SerializeToString())


def test_a_client_that_does_not_read_holds_the_model_back(server: ServerHandle) -> None:
    """Flow control holds a decoupled request's responses: with the client's 64 KiB window used
    up, the server takes no more responses from the model (it blocks at its bound) instead of
    queueing the 200,000 the request asks for."""
    with RawH2(server.grpc_url).open() as h2:  # never sends WINDOW_UPDATE: a 65,535-byte window
        request = message(_repeat_request("repeat_bound", 200_000))
        h2.send(h2.headers(1, "ModelStreamInfer") + frame(DATA, 0, 1, request))
        received = 0
        while received < 65_535:
            f = h2.until(lambda f: f.ftype == DATA and f.sid == 1)
            received += len(f.payload)
        h2.ping()
        # Other work goes through meanwhile (the loop is not spinning on the held stream) ...
        for _ in range(20):
            assert stats(server.http_url, "repeat_bound")["name"] == "repeat_bound"
        taken = len(stats(server.http_url, "repeat_bound")["response_stats"])
        # ... and the model's responses were taken only as far as the window let them go.
        one = pb.ModelStreamInferResponse(
            infer_response=pb.ModelInferResponse(
                model_name="repeat_bound", model_version="1", id="many"
            )
        )
        for name, datatype in (("OUT", "INT32"), ("IDX", "UINT32")):
            out = one.infer_response.outputs.add()
            out.name, out.datatype = name, datatype
            out.shape.append(1)
            one.infer_response.raw_output_contents.append(bytes(4))
        one.infer_response.parameters["triton_final_response"].bool_param = False
        assert taken <= 65_535 // (len(one.SerializeToString()) + 5) + 2
        h2.send(frame(RST_STREAM, 0, 1, U32.pack(_CANCEL)))  # the client goes: the model lets go
    _until_count(server, "repeat_bound", "fail", 1)  # the reset request: CANCELED


def test_response_stats_per_response_index(server: ServerHandle) -> None:
    s = Stream(server.grpc_url)
    try:
        for values in ([1, 2, 3], [4]):
            s.send("repeat_stats", _inputs(values), f"n{len(values)}")
            s.take(len(values) + 1)
    finally:
        s.close()
    # An execution is counted when it returns, which may be after its responses reached us.
    _until_count(server, "repeat_stats", "execution_count", 2)
    model = stats(server.http_url, "repeat_stats")
    responses = model["response_stats"]
    counts = {
        index: {kind: value["count"] for kind, value in entry.items()}
        for index, entry in responses.items()
    }
    success = {"compute_infer": 1, "compute_output": 1, "success": 1}
    empty = {"compute_infer": 1, "empty_response": 1}
    blank = dict.fromkeys(
        ("compute_infer", "compute_output", "success", "fail", "empty_response", "cancel"), 0
    )
    assert counts == {
        "0": blank | {"compute_infer": 2, "compute_output": 2, "success": 2},
        "1": blank | {"compute_infer": 2, "compute_output": 1, "success": 1, "empty_response": 1},
        "2": blank | success,
        "3": blank | empty,
    }
    assert model["inference_stats"]["success"]["count"] == 2
    assert model["execution_count"] == 2
    # gRPC's statistics carry the same map.
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    by_grpc = grpc.get_inference_statistics("repeat_stats", as_json=True)["model_stats"][0]
    assert set(by_grpc["response_stats"]) == {"0", "1", "2", "3"}


# -- the scheduler's execution modes, in process ---------------------------------------------


class PerRequestBackend:
    """takes_requests: one input dict per request; a request whose value is negative fails."""

    takes_requests = True
    may_block = True

    def __init__(self) -> None:
        self.calls: list[list[tuple[int, ...]]] = []

    def infer(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        raise AssertionError("a takes_requests backend is never called with a whole batch")

    def execute(self, requests: list[dict[str, Any]]) -> list[dict[str, Any] | Exception]:
        self.calls.append([r["INPUT0"].shape for r in requests])
        return [
            InvalidInput("negative input")
            if r["INPUT0"][0, 0] < 0
            else {"OUTPUT0": r["INPUT0"] * 2}
            for r in requests
        ]

    def close(self) -> None:
        pass


async def test_takes_requests_gets_each_request_and_fails_only_its_own() -> None:
    backend = PerRequestBackend()
    spec = BatcherSpec(max_batch_size=8, dynamic=True, preferred=(4,), max_queue_delay_ns=10**12)
    scheduler = Scheduler(spec, [backend], ModelStats("m", "1"))
    scheduler.start()
    try:
        values = [(1.0, 1), (-1.0, 2), (3.0, 1)]
        futures = [
            scheduler.submit({"INPUT0": np.full((n, 2), v, dtype=np.float32)}, n) for v, n in values
        ]
        done = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), WAIT_S)
    finally:
        await scheduler.close()
    assert backend.calls == [[(1, 2), (2, 2), (1, 2)]]  # one batch, each request its own dims
    first, failed, third = done
    assert isinstance(first, tuple)
    assert isinstance(third, tuple)
    np.testing.assert_array_equal(first[0]["OUTPUT0"], np.full((1, 2), 2.0))
    assert isinstance(failed, InvalidInput)
    assert str(failed) == "negative input"
    np.testing.assert_array_equal(third[0]["OUTPUT0"], np.full((1, 2), 6.0))


class FastPerRequestBackend(PerRequestBackend):
    may_block = False  # may run on the loop: the inline and direct paths


async def test_takes_requests_on_the_inline_and_direct_paths() -> None:
    backend = FastPerRequestBackend()
    scheduler = Scheduler(
        BatcherSpec(max_batch_size=8, dynamic=False), [backend], ModelStats("m", "1")
    )
    scheduler.start()
    x = np.ones((1, 2), dtype=np.float32)
    try:
        direct = None
        for _ in range(1000):  # until its executions are measured short enough to run inline
            outputs, _times = await asyncio.wait_for(scheduler.submit({"INPUT0": x}, 1), WAIT_S)
            np.testing.assert_array_equal(outputs["OUTPUT0"], x * 2)
            direct = scheduler.try_direct({"INPUT0": x}, 1)
            if direct is not None:
                break
        assert direct is not None, "the direct path never took a request"
        np.testing.assert_array_equal(direct[0]["OUTPUT0"], x * 2)
        with pytest.raises(InvalidInput, match=r"^negative input$"):
            scheduler.try_direct({"INPUT0": -x}, 1)
    finally:
        await scheduler.close()
    assert all(len(call) == 1 for call in backend.calls)


class CountingDecoupled:
    """Decoupled: answers each request with `n` responses from a thread, then FINAL; a request
    whose value is negative raises from execute_decoupled."""

    may_block = True

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []

    def infer(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        raise AssertionError("decoupled")

    def execute_decoupled(self, requests: list[dict[str, Any]], send: Any) -> None:
        for index, r in enumerate(requests):
            n = int(r["N"][0])
            if n < 0:
                raise RuntimeError("bad count")

            def respond(index: int = index, n: int = n) -> None:
                for i in range(n):
                    send(index, {"I": np.array([i])}, None, False)
                send(index, None, None, True)

            thread = threading.Thread(target=respond)
            self.threads.append(thread)
            thread.start()

    def close(self) -> None:
        for thread in self.threads:
            thread.join()


async def test_decoupled_responses_arrive_in_order_and_final_ends_the_stream() -> None:
    backend = CountingDecoupled()
    scheduler = Scheduler(BatcherSpec(0, False, decoupled=True), [backend], ModelStats("d", "1"))
    scheduler.start()
    try:
        async with asyncio.timeout(WAIT_S):
            got = [
                (None if r.outputs is None else int(r.outputs["I"][0]), r.final)
                async for r in scheduler.submit_stream({"N": np.array([500])}, 1)
            ]
        failing = scheduler.submit_stream({"N": np.array([-1])}, 1)
        async with asyncio.timeout(WAIT_S):
            [error] = [r async for r in failing]
        with pytest.raises(InvalidInput, match="not decoupled"):
            Scheduler(BatcherSpec(0, False), [backend], ModelStats("x", "1")).submit_stream({}, 1)
    finally:
        await scheduler.close()
    assert got == [(i, False) for i in range(500)] + [(None, True)]
    assert isinstance(error.error, InferenceFailed)
    assert "bad count" in str(error.error)
    assert error.final


async def test_unloading_lets_a_sender_held_by_a_client_that_does_not_read_go() -> None:
    backend = CountingDecoupled()
    scheduler = Scheduler(BatcherSpec(0, False, decoupled=True), [backend], ModelStats("d", "1"))
    scheduler.start()
    stream = scheduler.submit_stream({"N": np.array([10 * MAX_UNDELIVERED])}, 1)
    async with asyncio.timeout(WAIT_S):
        while stream.undelivered < MAX_UNDELIVERED:  # noqa: ASYNC110 (the sender's progress)
            await asyncio.sleep(0.001)
    assert backend.threads[0].is_alive()  # held at the bound: nobody reads
    async with asyncio.timeout(WAIT_S):
        await scheduler.close()  # closes the backend, which joins its sender
    assert not backend.threads[0].is_alive()


async def test_undelivered_responses_are_bounded_and_a_closed_stream_lets_the_sender_go() -> None:
    stream = ResponseStream("m", asyncio.get_running_loop())
    sent = []

    def produce() -> None:
        for i in range(10 * MAX_UNDELIVERED):
            stream.send({"I": np.array([i])}, None, False)
            sent.append(i)

    producer = threading.Thread(target=produce)
    producer.start()
    async with asyncio.timeout(WAIT_S):
        while len(sent) < MAX_UNDELIVERED:  # noqa: ASYNC110 (the producer's progress)
            await asyncio.sleep(0.001)
    # The producer is held at the bound until the consumer takes one.
    assert stream.undelivered == MAX_UNDELIVERED
    first = await anext(stream)
    assert first.outputs is not None
    assert int(first.outputs["I"][0]) == 0
    async with asyncio.timeout(WAIT_S):
        while len(sent) < MAX_UNDELIVERED + 1:  # noqa: ASYNC110
            await asyncio.sleep(0.001)
    assert stream.undelivered <= MAX_UNDELIVERED
    stream.close()  # the consumer goes: the held producer returns, the rest is dropped
    await asyncio.to_thread(producer.join, WAIT_S)
    assert not producer.is_alive()
    assert stream.undelivered == 0


async def test_sending_past_the_bound_from_the_loop_fails_the_request() -> None:
    stream = ResponseStream("m", asyncio.get_running_loop())
    for i in range(MAX_UNDELIVERED + 1):
        stream.send({"I": np.array([i])}, None, False)
    stream.send({"I": np.array([0])}, None, False)  # the request is over: dropped
    items = [r async for r in stream]
    assert len(items) == MAX_UNDELIVERED + 1
    assert items[-1].final
    assert "has not read yet" in str(items[-1].error)
    assert decoupled.MAX_UNDELIVERED == MAX_UNDELIVERED


async def test_a_send_after_final_is_the_models_bug() -> None:
    stream = ResponseStream("m", asyncio.get_running_loop())
    stream.send(None, None, True)
    with pytest.raises(RuntimeError, match="after the FINAL"):
        stream.send({"I": np.array([1])}, None, False)


def test_a_decoupled_config_for_a_backend_that_cannot_is_refused_at_load(
    perfkit_server: Any, tmp_path: Path
) -> None:
    models.slow_identity(tmp_path, "plain", delay_us=0)
    server = perfkit_server(tmp_path, "--model-control-mode=explicit")
    client = grpcclient.InferenceServerClient(server.grpc_url)
    override = (
        '{"backend": "perfkit_identity", "max_batch_size": 8,'
        ' "model_transaction_policy": {"decoupled": true},'
        ' "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [16]}],'
        ' "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [16]}]}'
    )
    with pytest.raises(InferenceServerException) as refused:
        client.load_model("plain", config=override)
    assert "model_transaction_policy.decoupled: backend 'perfkit_identity'" in str(refused.value)


def test_decoupled_needs_a_backend_that_can(tmp_path: Path) -> None:
    from perfkit_server.backends import check_decoupled

    from perfkit.model_repo.config import parse_config

    config = parse_config('name: "m"\nmodel_transaction_policy { decoupled: true }\n')
    with pytest.raises(ValueError, match=r"model_transaction_policy\.decoupled: backend 'onnx"):
        check_decoupled(config, "onnxruntime", "m")
    check_decoupled(config, "perfkit_repeat", "m")
