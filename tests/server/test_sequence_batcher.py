"""The sequence batcher through real tritonclient calls: per-sequence state under Direct and Oldest,
the control inputs a model sees, implicit state, idle release, the backlog, Triton's refusals.

The model is a tiny ONNX accumulator run by ONNX Runtime: OUTPUT = INPUT + ACC_IN, where ACC_IN
is the implicit state (ACC_OUT, the same sum, is fed back by the server), and SEEN_<control>
echoes each control input, so a test reads what the model was given.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
from onnx import TensorProto, helper
from tritonclient.utils import InferenceServerException

SIZE = 4
_ONNX_TYPES = {
    "INT32": TensorProto.INT32,
    "FP32": TensorProto.FLOAT,
    "BOOL": TensorProto.BOOL,
    "UINT64": TensorProto.UINT64,
    "INT64": TensorProto.INT64,
    "STRING": TensorProto.STRING,
}
_CONTROL_LIST = {"INT32": "int32_false_true: [ 0, 1 ]", "FP32": "fp32_false_true: [ 0, 1 ]",
                 "BOOL": "bool_false_true: [ false, true ]"}  # fmt: skip


def accumulator(
    repo: Path,
    name: str,
    *,
    strategy: str = "direct { }",
    max_batch_size: int = 4,
    instances: int = 1,
    control: str = "INT32",
    corrid: str = "UINT64",
    idle_us: int = 0,
    state_extra: str = "",
) -> None:
    """Write the accumulator model `name` (ONNX, onnxruntime backend) into `repo`."""
    batch = ["batch"] if max_batch_size else []

    def vi(tensor: str, kind: int, dims: list[int]) -> Any:
        return helper.make_tensor_value_info(tensor, kind, [*batch, *dims])

    ctl, cid = _ONNX_TYPES[control], _ONNX_TYPES[corrid]
    nodes = [
        helper.make_node("Add", ["INPUT", "ACC_IN"], ["OUTPUT"]),
        helper.make_node("Identity", ["OUTPUT"], ["ACC_OUT"]),
        *(helper.make_node("Identity", [k], [f"SEEN_{k}"]) for k in ("START", "END", "READY")),
        helper.make_node("Identity", ["CORRID"], ["SEEN_CORRID"]),
    ]
    graph = helper.make_graph(
        nodes,
        name,
        [
            vi("INPUT", TensorProto.FLOAT, [SIZE]),
            vi("ACC_IN", TensorProto.FLOAT, [SIZE]),
            *(vi(k, ctl, [1]) for k in ("START", "END", "READY")),
            vi("CORRID", cid, [1]),
        ],
        [
            vi("OUTPUT", TensorProto.FLOAT, [SIZE]),
            vi("ACC_OUT", TensorProto.FLOAT, [SIZE]),
            *(vi(f"SEEN_{k}", ctl, [1]) for k in ("START", "END", "READY")),
            vi("SEEN_CORRID", cid, [1]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    (repo / name / "1").mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(repo / name / "1" / "model.onnx"))
    ctype = "TYPE_BOOL" if control == "BOOL" else f"TYPE_{control}"
    seen = ", ".join(
        f'{{ name: "SEEN_{k}" data_type: {ctype} dims: [ 1 ] }}' for k in ("START", "END", "READY")
    )
    controls = ",\n    ".join(
        f'{{ name: "{k}" control [ {{ kind: CONTROL_SEQUENCE_{k} {_CONTROL_LIST[control]} }} ] }}'
        for k in ("START", "END", "READY")
    )
    (repo / name / "config.pbtxt").write_text(
        f"""name: "{name}"
backend: "onnxruntime"
max_batch_size: {max_batch_size}
input [ {{ name: "INPUT" data_type: TYPE_FP32 dims: [ {SIZE} ] }} ]
output [
  {{ name: "OUTPUT" data_type: TYPE_FP32 dims: [ {SIZE} ] }},
  {seen},
  {{ name: "SEEN_CORRID" data_type: TYPE_{corrid} dims: [ 1 ] }}
]
instance_group [ {{ count: {instances} kind: KIND_CPU }} ]
sequence_batching {{
  max_sequence_idle_microseconds: {idle_us}
  {strategy}
  control_input [
    {controls},
    {{ name: "CORRID" control [ {{ kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_{corrid} }} ] }}
  ]
  state [ {{ input_name: "ACC_IN" output_name: "ACC_OUT" data_type: TYPE_FP32
            dims: [ {SIZE} ] {state_extra} }} ]
}}
"""
    )


def _input(module: Any, value: float, batched: bool = True) -> Any:
    shape = [1, SIZE] if batched else [SIZE]
    inp = module.InferInput("INPUT", shape, "FP32")
    inp.set_data_from_numpy(np.full(shape, value, dtype=np.float32))
    return inp


async def _sequence(
    client: Any, model: str, sid: int | str, values: list[float]
) -> list[dict[str, Any]]:
    """Send one sequence, each request after the previous response; the outputs of each."""
    seen = []
    for j, value in enumerate(values):
        result = await client.infer(
            model,
            [_input(grpcaio, value)],
            sequence_id=sid,
            sequence_start=j == 0,
            sequence_end=j == len(values) - 1,
        )
        response = result.get_response()
        names = [o.name for o in response.outputs]
        seen.append({n: result.as_numpy(n) for n in names})
    return seen


def _values(k: int, length: int) -> list[float]:
    return [float(10 * k + j + 1) for j in range(length)]


async def _interleaved(url: str, model: str, count: int = 8, length: int = 5) -> None:
    """`count` sequences at once; each one's outputs are its own running sums, and the model saw
    START on its first request, END on its last, READY on all, and its id as CORRID."""
    client = grpcaio.InferenceServerClient(url)
    try:
        ids = [1000 + k for k in range(count)]
        results = await asyncio.gather(
            *(_sequence(client, model, sid, _values(k, length)) for k, sid in enumerate(ids))
        )
    finally:
        await client.close()
    for k, (sid, seen) in enumerate(zip(ids, results, strict=True)):
        sums = np.cumsum(_values(k, length))
        for j, out in enumerate(seen):
            assert set(out) == {"OUTPUT", "SEEN_START", "SEEN_END", "SEEN_READY", "SEEN_CORRID"}
            np.testing.assert_array_equal(out["OUTPUT"], np.full((1, SIZE), sums[j], np.float32))
            assert out["SEEN_START"].tolist() == [[int(j == 0)]]
            assert out["SEEN_END"].tolist() == [[int(j == length - 1)]]
            assert out["SEEN_READY"].tolist() == [[1]]
            assert out["SEEN_CORRID"].tolist() == [[sid]]


def _stats(url: str, model: str) -> dict[str, Any]:
    client = httpclient.InferenceServerClient(url)
    result: dict[str, Any] = client.get_inference_statistics(model)["model_stats"][0]
    return result


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One server with every model of this module's tests."""
    from tests.fixtures.server import start_server

    repo = tmp_path_factory.mktemp("seq-repo")
    accumulator(repo, "direct8", max_batch_size=4, instances=2)  # 8 slots
    accumulator(repo, "direct2", max_batch_size=2)  # 2 slots: 6 of 8 sequences wait
    accumulator(
        repo,
        "oldest",
        strategy="oldest { max_candidate_sequences: 8 preferred_batch_size: [ 4 ] "
        "max_queue_delay_microseconds: 2000 }",
        max_batch_size=4,
    )
    accumulator(repo, "oldest2", strategy="oldest { max_candidate_sequences: 3 }")
    accumulator(repo, "boolctl", control="BOOL", corrid="STRING", max_batch_size=0)
    accumulator(repo, "fp32ctl", control="FP32", corrid="INT64")
    accumulator(repo, "idle", max_batch_size=1, idle_us=50_000)  # one slot
    # Batches that wait (10 s at most) until two sequences have a request each.
    accumulator(
        repo,
        "direct_wait",
        strategy="direct { max_queue_delay_microseconds: 10000000 minimum_slot_utilization: 1.0 }",
        max_batch_size=2,
    )
    accumulator(
        repo,
        "oldest_wait",
        strategy="oldest { max_candidate_sequences: 4 preferred_batch_size: [ 2 ] "
        "max_queue_delay_microseconds: 10000000 }",
    )
    (repo / "initial" / "initial_state").mkdir(parents=True)
    (repo / "initial" / "initial_state" / "acc.bin").write_bytes(
        np.full(SIZE, 100.0, np.float32).tobytes()
    )
    accumulator(
        repo,
        "initial",
        state_extra='initial_state: { name: "acc" data_type: TYPE_FP32 dims: [ 4 ] '
        'data_file: "acc.bin" }',
    )
    handle = start_server(repo)
    try:
        yield handle
    finally:
        handle.stop()


def test_direct_interleaved_sequences_keep_their_own_state(served: Any) -> None:
    asyncio.run(_interleaved(served.grpc_url, "direct8"))
    stats = _stats(served.http_url, "direct8")
    assert stats["inference_stats"]["success"]["count"] == 40
    assert stats["inference_stats"]["fail"]["count"] == 0
    # Padding rows are in batch_stats' batch sizes, not in inference_count (as Triton counts).
    assert stats["inference_count"] == 40
    assert sum(b["compute_infer"]["count"] * b["batch_size"] for b in stats["batch_stats"]) >= 40
    assert 10 <= stats["execution_count"] <= 40


def test_direct_backlog_serves_sequences_beyond_the_slots(served: Any) -> None:
    asyncio.run(_interleaved(served.grpc_url, "direct2"))


def test_oldest_interleaved_sequences_keep_their_own_state(served: Any) -> None:
    asyncio.run(_interleaved(served.grpc_url, "oldest"))
    stats = _stats(served.http_url, "oldest")
    # Oldest batches hold requests only: one row per request, no padding.
    assert stats["inference_count"] == 40
    assert stats["inference_stats"]["success"]["count"] == 40
    assert sum(b["compute_infer"]["count"] * b["batch_size"] for b in stats["batch_stats"]) == 40


def test_oldest_with_fewer_candidates_than_sequences(served: Any) -> None:
    asyncio.run(_interleaved(served.grpc_url, "oldest2"))


@pytest.mark.parametrize("model", ["direct_wait", "oldest_wait"])
def test_queue_delay_waits_for_a_fuller_batch(served: Any, model: str) -> None:
    """Direct's minimum_slot_utilization 1.0 (2 slots) and Oldest's preferred_batch_size 2,
    each with a 10 s queue delay: two sequences' STARTs sent together run as one batch of 2."""

    async def both() -> list[Any]:
        client = grpcaio.InferenceServerClient(served.grpc_url)
        try:
            return await asyncio.gather(
                *(
                    client.infer(model, [_input(grpcaio, v)], sequence_id=sid, sequence_start=True)
                    for sid, v in ((1, 2.0), (2, 3.0))
                )
            )
        finally:
            await client.close()

    a, b = asyncio.run(both())
    assert a.as_numpy("OUTPUT").tolist() == [[2.0] * SIZE]
    assert b.as_numpy("OUTPUT").tolist() == [[3.0] * SIZE]
    stats = _stats(served.http_url, model)
    assert stats["execution_count"] == 1
    assert [(x["batch_size"], x["compute_infer"]["count"]) for x in stats["batch_stats"]] == [
        (2, 1)
    ]


def test_bool_controls_and_string_corrid_without_batching(served: Any) -> None:
    client = httpclient.InferenceServerClient(served.http_url)
    outs = []
    for j, value in enumerate([1.0, 2.0, 3.0]):
        result = client.infer(
            "boolctl",
            [_input(httpclient, value, batched=False)],
            sequence_id="utterance-7",
            sequence_start=j == 0,
            sequence_end=j == 2,
        )
        outs.append(result)
    assert [r.as_numpy("OUTPUT").tolist() for r in outs] == [[1.0] * 4, [3.0] * 4, [6.0] * 4]
    assert [r.as_numpy("SEEN_START").tolist() for r in outs] == [[True], [False], [False]]
    assert [r.as_numpy("SEEN_END").tolist() for r in outs] == [[False], [False], [True]]
    # The CORRID tensor is BYTES b"utterance-7"; the onnxruntime backend hands BYTES tensors to
    # ONNX Runtime as Python bytes, which it stringifies (b"b'utterance-7'"): a backend matter.
    [corrid] = outs[1].as_numpy("SEEN_CORRID").tolist()
    assert corrid in (b"utterance-7", b"b'utterance-7'")


def test_fp32_controls_and_int64_corrid(served: Any) -> None:
    client = httpclient.InferenceServerClient(served.http_url)
    first = client.infer("fp32ctl", [_input(httpclient, 5.0)], sequence_id=9, sequence_start=True)
    last = client.infer("fp32ctl", [_input(httpclient, 5.0)], sequence_id=9, sequence_end=True)
    assert first.as_numpy("SEEN_START").dtype == np.float32
    assert first.as_numpy("SEEN_START").tolist() == [[1.0]]
    assert last.as_numpy("SEEN_END").tolist() == [[1.0]]
    assert last.as_numpy("SEEN_CORRID").tolist() == [[9]]
    assert last.as_numpy("OUTPUT").tolist() == [[10.0] * 4]


def test_implicit_state_starts_from_initial_state_and_stays_server_side(served: Any) -> None:
    client = httpclient.InferenceServerClient(served.http_url)
    a = client.infer("initial", [_input(httpclient, 1.0)], sequence_id=5, sequence_start=True)
    b = client.infer("initial", [_input(httpclient, 2.0)], sequence_id=5)
    # A new START resets the state to initial_state, even for a live sequence id.
    c = client.infer("initial", [_input(httpclient, 3.0)], sequence_id=5, sequence_start=True)
    client.infer("initial", [_input(httpclient, 0.0)], sequence_id=5, sequence_end=True)
    assert a.as_numpy("OUTPUT").tolist() == [[101.0] * 4]
    assert b.as_numpy("OUTPUT").tolist() == [[103.0] * 4]
    assert c.as_numpy("OUTPUT").tolist() == [[103.0] * 4]
    # ACC_OUT, the state, is not an output of the model's config: never sent to the client.
    assert a.as_numpy("ACC_OUT") is None
    with pytest.raises(InferenceServerException, match="unexpected inference output 'ACC_OUT'"):
        client.infer(
            "initial",
            [_input(httpclient, 1.0)],
            sequence_id=6,
            sequence_start=True,
            outputs=[httpclient.InferRequestedOutput("ACC_OUT")],
        )


def test_idle_sequence_is_released_after_max_sequence_idle(served: Any) -> None:
    """One slot: B waits in the backlog until A, idle past 50 ms, is released; then A is
    unknown. B's response is the event waited on (no sleep orders anything)."""

    async def scenario() -> tuple[float, Any]:
        client = grpcaio.InferenceServerClient(served.grpc_url)
        try:
            # A's idle time runs from its arrival (not its response): measure from its send.
            a_last = time.monotonic()
            await client.infer("idle", [_input(grpcaio, 1.0)], sequence_id=1, sequence_start=True)
            b = await asyncio.wait_for(
                client.infer("idle", [_input(grpcaio, 7.0)], sequence_id=2, sequence_start=True),
                timeout=30,
            )
            return time.monotonic() - a_last, b
        finally:
            await client.close()

    waited_s, b = asyncio.run(scenario())
    assert waited_s >= 0.05  # B got the slot only once A had been idle for 50 ms
    assert b.as_numpy("OUTPUT").tolist() == [[7.0] * 4]
    client = httpclient.InferenceServerClient(served.http_url)
    with pytest.raises(InferenceServerException) as exc:
        client.infer("idle", [_input(httpclient, 1.0)], sequence_id=1)
    assert exc.value.status() == "400"
    assert (
        "inference request for sequence 1 to model 'idle' must specify the START flag on the "
        "first request of the sequence" in exc.value.message()
    )
    # The released id starts afresh.
    again = client.infer("idle", [_input(httpclient, 4.0)], sequence_id=1, sequence_start=True)
    assert again.as_numpy("OUTPUT").tolist() == [[4.0] * 4]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {},
            "inference request to model 'direct8' must specify a non-zero or non-empty "
            "correlation ID",
        ),
        (
            {"sequence_id": 77},
            "inference request for sequence 77 to model 'direct8' must specify the START flag "
            "on the first request of the sequence",
        ),
        (
            {"sequence_id": "abc", "sequence_start": True},
            "sequence batching control 'CORRID' data-type is 'BYTES', but model 'direct8' "
            "expects 'UINT64'",
        ),
    ],
)
def test_refusals(served: Any, kwargs: dict[str, Any], message: str) -> None:
    for protocol in ("http", "grpc"):
        if protocol == "http":
            client: Any = httpclient.InferenceServerClient(served.http_url)
            inp = _input(httpclient, 1.0)
        else:
            import tritonclient.grpc as grpcclient

            client = grpcclient.InferenceServerClient(served.grpc_url)
            inp = _input(grpcclient, 1.0)
        with pytest.raises(InferenceServerException) as exc:
            client.infer("direct8", [inp], **kwargs)
        assert message in exc.value.message()
        assert exc.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")


def test_refuses_batch_of_two(served: Any) -> None:
    client = httpclient.InferenceServerClient(served.http_url)
    inp = httpclient.InferInput("INPUT", [2, SIZE], "FP32")
    inp.set_data_from_numpy(np.ones((2, SIZE), np.float32))
    with pytest.raises(InferenceServerException) as exc:
        client.infer("direct8", [inp], sequence_id=3, sequence_start=True)
    assert (
        "inference request to model 'direct8' must specify batch-size 1 due to requirements of "
        "sequence batcher" in exc.value.message()
    )


def test_backlog_is_bounded(perfkit_server: Any, tmp_path: Path) -> None:
    """A one-slot model: past MAX_BACKLOG_SEQUENCES waiting sequences a START is refused; the
    server's shutdown answers the waiting ones."""
    from perfkit_server.sequence import MAX_BACKLOG_SEQUENCES

    accumulator(tmp_path, "oneslot", max_batch_size=1, idle_us=600_000_000)  # never idle here
    served = perfkit_server(tmp_path, "--model-control-mode=explicit", "--load-model=oneslot")
    http = httpclient.InferenceServerClient(served.http_url, network_timeout=30)

    async def scenario() -> str:
        # A connection carries a bounded number of concurrent streams: spread the calls.
        clients = [grpcaio.InferenceServerClient(served.grpc_url) for _ in range(16)]
        waiting: list[asyncio.Future[Any]] = []
        try:
            await clients[0].infer(
                "oneslot", [_input(grpcaio, 1.0)], sequence_id=1, sequence_start=True
            )
            waiting = [
                asyncio.ensure_future(
                    clients[k % 16].infer(
                        "oneslot", [_input(grpcaio, 1.0)], sequence_id=10 + k, sequence_start=True
                    )
                )
                for k in range(MAX_BACKLOG_SEQUENCES)
            ]
            # Wait until the server holds them all (its pending-request gauge says so).
            deadline = time.monotonic() + 60
            while _pending(served.metrics_url, "oneslot") < MAX_BACKLOG_SEQUENCES:
                assert time.monotonic() < deadline, "the backlog never filled"
                await asyncio.sleep(0.05)
            # Over HTTP: the gRPC connections are busy with the waiting calls.
            with pytest.raises(InferenceServerException) as exc:
                http.infer(
                    "oneslot", [_input(httpclient, 1.0)], sequence_id=5000, sequence_start=True
                )
            assert exc.value.status() == "503"
            return str(exc.value.message())
        finally:
            # Unloading refuses what waits in the backlog (cancelling 1024 calls at once would
            # look like a stream-reset flood to the server).
            http.unload_model("oneslot")
            outcomes = await asyncio.gather(*waiting, return_exceptions=True)
            assert all(isinstance(o, InferenceServerException) for o in outcomes)
            for client in clients:
                await client.close()

    message = asyncio.run(scenario())
    assert (
        "all 1 sequence slots are in use and the backlog holds its limit of "
        f"{MAX_BACKLOG_SEQUENCES} sequences" in message
    )


def _pending(metrics_url: str, model: str) -> float:
    import urllib.request

    with urllib.request.urlopen(f"http://{metrics_url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    for line in text.splitlines():
        if line.startswith("nv_inference_pending_request_count") and f'model="{model}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_served_config_has_triton_defaults(served: Any) -> None:
    client = httpclient.InferenceServerClient(served.http_url)
    config = client.get_model_config("direct8")
    assert config["sequence_batching"]["max_sequence_idle_microseconds"] == 1_000_000
    oldest = client.get_model_config("oldest2")["sequence_batching"]["oldest"]
    assert oldest["preferred_batch_size"] == [4]
    assert "sequence" in client.get_server_metadata()["extensions"]


@pytest.mark.parametrize(
    ("block", "message"),
    [
        (
            'control_input [ { name: "S" control [ { kind: CONTROL_SEQUENCE_START '
            "int32_false_true: [ 0, 1, 2 ] } ] } ]",
            "sequence batching control 'int32_false_true' must have exactly 2 entries for "
            "CONTROL_SEQUENCE_START for bad",
        ),
        (
            'control_input [ { name: "C" control [ { kind: CONTROL_SEQUENCE_CORRID '
            "data_type: TYPE_FP32 } ] } ]",
            "unexpected data type for control CONTROL_SEQUENCE_CORRID for bad. Allowed data "
            "types are TYPE_UINT64, TYPE_INT64, TYPE_UINT32, TYPE_INT32 and TYPE_STRING",
        ),
        (
            'control_input [ { name: "S" control [ { kind: CONTROL_SEQUENCE_START } ] } ]',
            "sequence batching must specify either 'int32_false_true', 'fp32_false_true' or "
            "'bool_false_true' for CONTROL_SEQUENCE_START for bad",
        ),
        (
            "oldest { preferred_batch_size: [ 8 ] }",
            "sequence batching preferred batch size must be <= max batch size for bad",
        ),
        ("iterative_sequence: true", "sequence_batching.iterative_sequence"),
    ],
)
def test_bad_sequence_config_fails_its_load(
    perfkit_server: Any, tmp_path: Path, block: str, message: str
) -> None:
    repo = tmp_path / "repo"
    (repo / "bad" / "1").mkdir(parents=True)
    (repo / "bad" / "config.pbtxt").write_text(
        'name: "bad"\nbackend: "perfkit_identity"\nmax_batch_size: 4\n'
        'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
        'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
        f"sequence_batching {{ {block} }}\n"
    )
    server = perfkit_server(repo, "--model-control-mode=explicit")
    client = httpclient.InferenceServerClient(server.http_url)
    with pytest.raises(InferenceServerException) as exc:
        client.load_model("bad")
    assert message in exc.value.message()


# -- in process: what a backend is handed (fakes implement the Backend protocol) ---------------


class _Recorder:
    """A backend that records each execution's inputs; OUTPUT = INPUT + ACC_IN, ACC_OUT = OUTPUT.
    With `takes_requests` it is called as Triton's python backend is: one dict per row."""

    def __init__(self, takes_requests: bool = False, gate: Any = None) -> None:
        self.takes_requests = takes_requests
        self.calls: list[Any] = []
        self._gate = gate
        self.started = threading.Event()

    def _one(self, inputs: dict[str, Any]) -> dict[str, Any]:
        out = inputs["INPUT"] + inputs["ACC_IN"]
        return {"OUTPUT": out, "ACC_OUT": out}

    def infer(self, inputs: dict[str, Any]) -> dict[str, Any]:
        self.started.set()
        if self._gate is not None:
            self._gate.wait(30)
        self.calls.append({k: v.copy() for k, v in inputs.items()})
        return self._one(inputs)

    def execute(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        self.calls.append([{k: v.copy() for k, v in r.items()} for r in requests])
        return [self._one(r) for r in requests]

    def close(self) -> None:
        pass


def _scheduler(tmp_path: Path, backend: Any, strategy: str = "direct { }") -> Any:
    from perfkit_server.sequence import SequenceScheduler
    from perfkit_server.sequence_config import sequence_setup
    from perfkit_server.stats import ModelStats

    from perfkit.model_repo.config import parse_config

    accumulator(tmp_path, "m", strategy=strategy)
    config = parse_config((tmp_path / "m" / "config.pbtxt").read_text())
    setup = sequence_setup(config, tmp_path / "m", "m")
    assert setup is not None
    scheduler = SequenceScheduler(setup[0], [backend], ModelStats("m", "1"), ["OUTPUT"])
    scheduler.start()
    return scheduler


def _row(value: float) -> dict[str, Any]:
    return {"INPUT": np.full((1, SIZE), value, np.float32)}


@pytest.mark.parametrize("takes_requests", [False, True])
def test_direct_padding_rows_are_not_ready(tmp_path: Path, takes_requests: bool) -> None:
    """X holds slot 0, Y slot 1; Y's lone request runs as rows [padding, Y]: the padding row has
    READY, START and END false and CORRID 0, and its output goes nowhere."""
    backend = _Recorder(takes_requests)

    async def run() -> Any:
        sched = _scheduler(tmp_path, backend)
        try:
            await sched.submit(_row(1.0), 1, params={"sequence_id": 5, "sequence_start": True})
            await sched.submit(_row(2.0), 1, params={"sequence_id": 6, "sequence_start": True})
            return await sched.submit(_row(3.0), 1, params={"sequence_id": 6})
        finally:
            await sched.close()

    outputs, _times = asyncio.run(run())
    assert outputs["OUTPUT"].tolist() == [[5.0] * SIZE]
    assert "ACC_OUT" not in outputs  # the state stays in the server
    last = backend.calls[-1]
    rows = last if takes_requests else [{k: v[i : i + 1] for k, v in last.items()} for i in (0, 1)]
    padding, real = rows
    assert [padding[k].tolist() for k in ("READY", "START", "END", "CORRID")] == [[[0]]] * 4
    assert padding["INPUT"].tolist() == [[0.0] * SIZE]
    assert [real[k].tolist() for k in ("READY", "START", "END", "CORRID")] == [
        [[1]], [[0]], [[0]], [[6]]
    ]  # fmt: skip
    assert real["ACC_IN"].tolist() == [[2.0] * SIZE]


def test_a_sequence_cannot_queue_without_bound(tmp_path: Path) -> None:
    """A client that never waits for its responses: past MAX_QUEUED_PER_SEQUENCE requests queued
    for one sequence, the next is refused (UNAVAILABLE) and the server keeps serving."""
    from perfkit_server.errors import Unavailable
    from perfkit_server.sequence import MAX_QUEUED_PER_SEQUENCE

    gate = threading.Event()
    backend = _Recorder(gate=gate)

    async def run() -> str:
        sched = _scheduler(tmp_path, backend)
        try:
            first = sched.submit(_row(1.0), 1, params={"sequence_id": 9, "sequence_start": True})
            await asyncio.to_thread(backend.started.wait, 30)  # it executes, held by the gate
            queued = [
                sched.submit(_row(1.0), 1, params={"sequence_id": 9})
                for _ in range(MAX_QUEUED_PER_SEQUENCE)
            ]
            with pytest.raises(Unavailable) as exc:
                sched.submit(_row(1.0), 1, params={"sequence_id": 9})
            gate.set()
            await asyncio.gather(first, *queued)
            return str(exc.value)
        finally:
            gate.set()
            await sched.close()

    message = asyncio.run(run())
    assert (
        f"sequence 9 of model 'm' already has {MAX_QUEUED_PER_SEQUENCE} requests queued" in message
    )
