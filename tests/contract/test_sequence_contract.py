"""The sequence batcher under contract: perfkit_server and the real tritonserver give the same
outputs for interleaved sequences, the same refusals, and release an idle sequence alike.

Triton's runs use a python accumulator (per-CORRID sums kept in the model, from the CORRID, START,
END and READY control inputs; the pytriton wheel's tritonserver has only the python backend).
perfkit_server runs the same model.py when it has a python backend, else the ONNX accumulator of
tests/server/test_sequence_batcher.py, which keeps its sum in the server's implicit state and
has the same control inputs and outputs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.contract._models import PERFKIT, TRITON
from tests.fixtures.triton import triton_available
from tests.server.test_sequence_batcher import SIZE, accumulator

CONTROLS = ("START", "END", "READY")

MODEL_PY = '''"""Accumulator for the sequence contract: OUTPUT = running sum of INPUT per CORRID."""
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.sums = {}

    def execute(self, requests):
        responses = []
        for request in requests:
            def get(name):
                return pb_utils.get_input_tensor_by_name(request, name).as_numpy()

            x = get("INPUT")
            start, end, ready, corrid = get("START"), get("END"), get("READY"), get("CORRID")
            cid = int(corrid.reshape(-1)[0])
            if int(ready.reshape(-1)[0]):
                if int(start.reshape(-1)[0]) or cid not in self.sums:
                    self.sums[cid] = np.zeros_like(x)
                self.sums[cid] = self.sums[cid] + x
                out = self.sums[cid]
                if int(end.reshape(-1)[0]):
                    del self.sums[cid]
            else:  # a padding row: nothing to add
                out = np.zeros_like(x)
            tensors = [pb_utils.Tensor("OUTPUT", out.astype(np.float32))]
            for name, value in (("START", start), ("END", end), ("READY", ready),
                                ("CORRID", corrid)):
                tensors.append(pb_utils.Tensor("SEEN_" + name, value))
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
'''

# name -> (strategy block, max_batch_size, max_sequence_idle_microseconds)
MODELS = {
    "seq_direct": ("direct { }", 4, 0),  # 4 slots for 8 sequences: a backlog on both servers
    "seq_oldest": (
        "oldest { max_candidate_sequences: 4 max_queue_delay_microseconds: 1000 }",
        4,
        0,
    ),
    "seq_idle": ("direct { }", 1, 100_000),  # one slot
}


def _python_config(name: str, strategy: str, max_batch_size: int, idle_us: int) -> str:
    seen = ", ".join(f'{{ name: "SEEN_{k}" data_type: TYPE_INT32 dims: [ 1 ] }}' for k in CONTROLS)
    controls = ",\n    ".join(
        f'{{ name: "{k}" control [ {{ kind: CONTROL_SEQUENCE_{k} int32_false_true: [ 0, 1 ] }} ] }}'
        for k in CONTROLS
    )
    return f"""name: "{name}"
backend: "python"
max_batch_size: {max_batch_size}
input [ {{ name: "INPUT" data_type: TYPE_FP32 dims: [ {SIZE} ] }} ]
output [
  {{ name: "OUTPUT" data_type: TYPE_FP32 dims: [ {SIZE} ] }},
  {seen},
  {{ name: "SEEN_CORRID" data_type: TYPE_UINT64 dims: [ 1 ] }}
]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
sequence_batching {{
  max_sequence_idle_microseconds: {idle_us}
  {strategy}
  control_input [
    {controls},
    {{ name: "CORRID" control [ {{ kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 }} ] }}
  ]
}}
"""


def _perfkit_runs_python() -> bool:
    from perfkit_server.backends import known_backend

    return known_backend("python")


def write_repo(repo: Path, kind: str) -> Path:
    python = kind == TRITON or _perfkit_runs_python()
    for name, (strategy, mbs, idle_us) in MODELS.items():
        if python:
            (repo / name / "1").mkdir(parents=True, exist_ok=True)
            (repo / name / "1" / "model.py").write_text(MODEL_PY)
            (repo / name / "config.pbtxt").write_text(_python_config(name, strategy, mbs, idle_us))
        else:
            accumulator(repo, name, strategy=strategy, max_batch_size=mbs, idle_us=idle_us)
    return repo


@pytest.fixture(scope="module", params=[PERFKIT, pytest.param(TRITON, marks=pytest.mark.triton)])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """(kind, http_url, grpc_url) of a server serving MODELS."""
    kind: str = request.param
    if kind == TRITON and not triton_available():
        pytest.skip("no tritonserver: neither on PATH nor the nvidia-pytriton wheel")
    base = tmp_path_factory.mktemp(f"seq-contract-{kind}")
    repo = write_repo(base / "repo", kind)
    if kind == TRITON:
        from perfkit.launch import LocalTriton

        triton = LocalTriton(
            repo,
            load_models=("*",),
            disable_auto_complete_config=True,
            cache_dir=request.getfixturevalue("triton_cache_dir"),
            log_path=base / "triton.log",
            extra_args=("--exit-timeout-secs=3",),
        )
        triton.start()
        try:
            yield kind, triton.http_url, triton.grpc_url
        finally:
            triton.stop()
    else:
        from tests.fixtures.server import start_server

        handle = start_server(repo, log_path=base / "perfkit.log")
        try:
            yield kind, handle.http_url, handle.grpc_url
        finally:
            handle.stop()


def _input(module: Any, value: float) -> Any:
    inp = module.InferInput("INPUT", [1, SIZE], "FP32")
    inp.set_data_from_numpy(np.full((1, SIZE), value, dtype=np.float32))
    return inp


async def _sequence(client: Any, model: str, sid: int, values: list[float]) -> list[list[Any]]:
    rows = []
    for j, value in enumerate(values):
        result = await client.infer(
            model,
            [_input(grpcaio, value)],
            sequence_id=sid,
            sequence_start=j == 0,
            sequence_end=j == len(values) - 1,
        )
        rows.append(
            [result.as_numpy("OUTPUT").tolist()]
            + [result.as_numpy(f"SEEN_{k}").tolist() for k in (*CONTROLS, "CORRID")]
        )
    return rows


@pytest.mark.parametrize("model", ["seq_direct", "seq_oldest"])
def test_interleaved_sequences_give_running_sums(server: Any, model: str) -> None:
    """8 sequences at once, each request after its previous response: what each gets back is
    its own running sum, and the controls the model saw."""
    _kind, _http, grpc_url = server
    length = 4

    async def run() -> list[list[list[Any]]]:
        client = grpcaio.InferenceServerClient(grpc_url)
        try:
            return await asyncio.gather(
                *(
                    _sequence(client, model, 100 + k, [float(10 * k + j) for j in range(length)])
                    for k in range(8)
                )
            )
        finally:
            await client.close()

    results = asyncio.run(run())
    for k, rows in enumerate(results):
        total = 0.0
        for j, row in enumerate(rows):
            total += 10 * k + j
            assert row == [
                [[total] * SIZE],
                [[int(j == 0)]],
                [[int(j == length - 1)]],
                [[1]],
                [[100 + k]],
            ]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "inference request to model 'seq_direct' must specify a non-zero or non-empty "
             "correlation ID"),
        ({"sequence_id": 4242}, "inference request for sequence 4242 to model 'seq_direct' must "
                                "specify the START flag on the first request of the sequence"),
        ({"sequence_id": "text", "sequence_start": True},
         "sequence batching control 'CORRID' data-type is 'BYTES', but model 'seq_direct' "
         "expects 'UINT64'"),
    ],
)  # fmt: skip
def test_refusals(server: Any, protocol: str, kwargs: dict[str, Any], message: str) -> None:
    kind, http_url, grpc_url = server
    if kind == TRITON and isinstance(kwargs.get("sequence_id"), str):
        pytest.skip(
            "tritonserver 2.51 (the pytriton wheel) takes a string id for a UINT64 CORRID and "
            "feeds the model bytes of the string as the id; Triton core's later "
            "InferenceRequest::ValidateCorrelationId refuses it, as perfkit_server does"
        )
    module: Any = httpclient if protocol == "http" else grpcclient
    client = module.InferenceServerClient(http_url if protocol == "http" else grpc_url)
    try:
        with pytest.raises(InferenceServerException) as exc:
            client.infer("seq_direct", [_input(module, 1.0)], **kwargs)
    finally:
        client.close()
    assert message in exc.value.message()
    assert exc.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")


def test_idle_sequence_is_released(server: Any) -> None:
    """One slot, 100 ms idle: B's START waits until A has been idle that long and is released
    (B's response is the event waited on), then A is an unknown sequence."""
    _kind, http_url, grpc_url = server

    async def run() -> tuple[float, Any]:
        client = grpcaio.InferenceServerClient(grpc_url)
        try:
            # A's idle time runs from its arrival (not its response): measure from its send.
            idle_from = time.monotonic()
            await client.infer(
                "seq_idle", [_input(grpcaio, 1.0)], sequence_id=1, sequence_start=True
            )
            b = await asyncio.wait_for(
                client.infer(
                    "seq_idle", [_input(grpcaio, 5.0)], sequence_id=2, sequence_start=True
                ),
                timeout=30,
            )
            return time.monotonic() - idle_from, b
        finally:
            await client.close()

    waited_s, b = asyncio.run(run())
    assert waited_s >= 0.1
    assert b.as_numpy("OUTPUT").tolist() == [[5.0] * SIZE]
    client = httpclient.InferenceServerClient(http_url)
    try:
        with pytest.raises(InferenceServerException) as exc:
            client.infer("seq_idle", [_input(httpclient, 1.0)], sequence_id=1)
        assert exc.value.status() == "400"
        assert (
            "inference request for sequence 1 to model 'seq_idle' must specify the START flag"
            in exc.value.message()
        )
        client.infer("seq_idle", [_input(httpclient, 0.0)], sequence_id=2, sequence_end=True)
    finally:
        client.close()


def test_direct_statistics_count_padding_rows(server: Any) -> None:
    """Direct batches are rows 0..highest busy slot: a lone request in slot 1 runs in a batch of
    2 whose slot-0 row is padding. batch_stats count that batch as size 2; success and
    inference_count count requests only."""
    _kind, http_url, _grpc = server
    client = httpclient.InferenceServerClient(http_url)
    try:
        before = client.get_inference_statistics("seq_direct")["model_stats"][0]
        steps = [(7001, True, False), (7002, True, False), (7002, False, False),
                 (7001, False, True), (7002, False, True)]  # fmt: skip
        for sid, start, end in steps:
            client.infer(
                "seq_direct",
                [_input(httpclient, 1.0)],
                sequence_id=sid,
                sequence_start=start,
                sequence_end=end,
            )
        after = client.get_inference_statistics("seq_direct")["model_stats"][0]
    finally:
        client.close()

    def delta(key: str) -> int:
        return int(after[key]) - int(before[key])

    def batches(stats: dict[str, Any]) -> dict[int, int]:
        return {
            int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats["batch_stats"]
        }

    success = (
        after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"]
    )
    assert success == 5
    assert delta("execution_count") == 5
    assert delta("inference_count") == 5  # padding rows are not inferences
    grown = {k: v - batches(before).get(k, 0) for k, v in batches(after).items()}
    assert {k: v for k, v in grown.items() if v} == {1: 2, 2: 3}
