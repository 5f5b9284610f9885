"""`perfkit run` on a sequence model, against the real tritonserver (its sequence batcher fills the
model's CORRID / START / END control inputs from the requests' sequence parameters).

The model is a python accumulator: per correlation id it counts the sequence's steps (reset on
START) and appends one line per request (id, start, end, step, its output) to a log file, which
the tests read: every sequence starts on its first request and ends on its last, the state each
request saw is the sequence's own (step k of a sequence is k), and ids are unique among the
sequences in progress.
"""

from __future__ import annotations

import itertools
import json
import textwrap
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from tests.cli_run.test_cli import flat, no_traceback, perfkit

pytestmark = pytest.mark.triton

_MODEL = textwrap.dedent(
    """
    import json

    import numpy as np
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def initialize(self, args):
            config = json.loads(args["model_config"])
            self.log = config["parameters"]["log"]["string_value"]
            self.steps = {}

        def execute(self, requests):
            responses = []
            with open(self.log, "a") as log:
                for request in requests:
                    def value(name):
                        return pb_utils.get_input_tensor_by_name(request, name).as_numpy()
                    x = value("INPUT0")
                    if not int(value("READY").reshape(-1)[0]):
                        # The sequence batcher's filler for an empty batch slot (Direct).
                        responses.append(pb_utils.InferenceResponse(
                            [pb_utils.Tensor("OUTPUT0", np.zeros(x.shape, np.float32))]))
                        continue
                    corrid = int(value("CORRID").reshape(-1)[0])
                    start = int(value("START").reshape(-1)[0])
                    end = int(value("END").reshape(-1)[0])
                    step = 1 if start else self.steps.get(corrid, 0) + 1
                    self.steps[corrid] = step
                    if end:
                        self.steps.pop(corrid, None)
                    log.write(json.dumps({"id": corrid, "start": start, "end": end,
                                          "step": step, "x": float(x.reshape(-1)[0])}) + "\\n")
                    out = np.full(x.shape, step, dtype=np.float32)
                    responses.append(
                        pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", out)]))
            return responses
    """
)

_CONFIG = """
name: "accumulate"
backend: "python"
max_batch_size: 8
input {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 1 ] }}
output {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 1 ] }}
instance_group {{ count: 1 kind: KIND_CPU }}
sequence_batching {{
  max_sequence_idle_microseconds: 5000000{strategy}
  control_input [
    {{ name: "START" control [ {{ kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] }} ] }},
    {{ name: "END" control [ {{ kind: CONTROL_SEQUENCE_END int32_false_true: [ 0, 1 ] }} ] }},
    {{ name: "READY" control [ {{ kind: CONTROL_SEQUENCE_READY int32_false_true: [ 0, 1 ] }} ] }},
    {{ name: "CORRID" control [ {{ kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 }} ] }}
  ]
}}
parameters {{ key: "log" value {{ string_value: "{log}" }} }}
"""


def write_accumulator(repo: Path, log: Path, strategy: str = "direct") -> None:
    """The accumulator, under the sequence batcher's Direct (default) or Oldest strategy."""
    d = repo / "accumulate"
    (d / "1").mkdir(parents=True, exist_ok=True)
    (d / "1" / "model.py").write_text(_MODEL)
    oldest = "\n  oldest {{ max_candidate_sequences: 8 max_queue_delay_microseconds: 1000 }}"
    (d / "config.pbtxt").write_text(
        _CONFIG.format(log=log, strategy=oldest.format() if strategy == "oldest" else "")
    )


def read_log(log: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def sequences(records: list[dict[str, float]]) -> list[list[dict[str, float]]]:
    """The log split into sequences: per id, from a START to its END, in arrival order; asserts
    that no id starts while its previous sequence is still open."""
    open_: dict[int, list[dict[str, float]]] = {}
    done: list[list[dict[str, float]]] = []
    for r in records:
        sid = int(r["id"])
        if r["start"]:
            assert sid not in open_, f"id {sid} started again before its sequence ended"
            open_[sid] = []
        assert sid in open_, f"a request of id {sid} outside a sequence: {r}"
        open_[sid].append(r)
        if r["end"]:
            done.append(open_.pop(sid))
    assert not open_, f"sequences left open at the end of the run: {sorted(open_)}"
    return done


def check_state(seqs: list[list[dict[str, float]]]) -> None:
    for seq in seqs:
        assert [int(r["step"]) for r in seq] == list(range(1, len(seq) + 1)), seq
        assert seq[0]["start"] == 1
        assert seq[-1]["end"] == 1
        assert all(r["start"] == 0 for r in seq[1:])
        assert all(r["end"] == 0 for r in seq[:-1])


@pytest.fixture
def accumulator(triton_server, tmp_path):
    log = tmp_path / "requests.jsonl"
    write_accumulator(tmp_path / "repo", log)
    return triton_server(tmp_path / "repo"), log


@pytest.mark.parametrize("proto", ["http", "grpc"])
def test_concurrency_runs_one_sequence_per_slot(accumulator, proto, tmp_path):
    server, log = accumulator
    url = server.http_url if proto == "http" else server.grpc_url
    export = tmp_path / "profile.json"
    p = perfkit("-m", "accumulate", "-u", url, "-i", proto, "--concurrency-range", "4",
                "--request-count", "120", "--sequence-length", "6",
                "--sequence-length-variation", "50", "--profile-export-file", str(export))  # fmt: skip
    assert p.returncode == 0, p.stderr
    no_traceback(p)
    seqs = sequences(read_log(log))
    check_state(seqs)
    # Lengths vary within +/- 50% of 6, and the level's end closes the open ones (shorter).
    assert max(len(s) for s in seqs) <= 9
    assert len({len(s) for s in seqs}) > 1
    # Ids count up from 1; each sequence its own id while in progress.
    assert min(int(s[0]["id"]) for s in seqs) == 1
    assert "Sequence count:" in p.stdout
    # The profile export names each measured request's sequence, as perf_analyzer's does.
    (experiment,) = json.loads(export.read_text())["experiments"]
    exported = Counter(r["sequence_id"] for r in experiment["requests"])
    logged = Counter(int(r["id"]) for r in read_log(log))
    assert sum(exported.values()) == 120
    assert all(exported[i] <= logged[i] for i in exported)


@pytest.mark.parametrize("strategy", ["direct", "oldest"])
def test_num_of_sequences_interleaved(triton_server, tmp_path, strategy):
    """Request-rate mode with --num-of-sequences 8: requests of 8 sequences interleave, each
    sequence's state stays its own (under both strategies), ids cycle within
    --sequence-id-range."""
    log = tmp_path / "requests.jsonl"
    write_accumulator(tmp_path / "repo", log, strategy)
    server = triton_server(tmp_path / "repo")
    p = perfkit("-m", "accumulate", "-u", server.grpc_url, "-i", "grpc",
                "--request-rate-range", "400", "--request-count", "240",
                "--num-of-sequences", "8", "--serial-sequences", "--sequence-length", "5",
                "--sequence-length-variation", "0", "--sequence-id-range", "100:110")  # fmt: skip
    assert p.returncode == 0, p.stderr
    records = read_log(log)
    seqs = sequences(records)
    check_state(seqs)
    ids = {int(r["id"]) for r in records}
    assert ids <= set(range(100, 110))
    # Interleaved: some request of another sequence arrived between two steps of one.
    positions: dict[int, list[int]] = defaultdict(list)
    for k, r in enumerate(records):
        positions[int(r["id"])].append(k)
    assert any(b - a > 1 for pos in positions.values() for a, b in itertools.pairwise(pos))
    # At most 8 sequences were ever in progress at once.
    live = 0
    peak = 0
    for r in records:
        live += int(r["start"]) - int(r["end"])
        peak = max(peak, live + int(r["end"]))
    assert peak <= 8


def test_sequence_json_streams(accumulator, tmp_path):
    """The sequence form of --input-data: each sequence plays one stream, step by step."""
    server, log = accumulator
    data = {"data": [[{"INPUT0": [10.0]}, {"INPUT0": [11.0]}, {"INPUT0": [12.0]}],
                     [{"INPUT0": [20.0]}, {"INPUT0": [21.0]}]]}  # fmt: skip
    path = tmp_path / "streams.json"
    path.write_text(json.dumps(data))
    p = perfkit("-m", "accumulate", "-u", server.http_url, "--concurrency-range", "2",
                "--request-count", "40", "--input-data", str(path))  # fmt: skip
    assert p.returncode == 0, p.stderr
    seqs = sequences(read_log(log))
    check_state(seqs)
    for seq in seqs:
        xs = [r["x"] for r in seq]
        assert xs in ([10.0, 11.0, 12.0], [20.0, 21.0]) or xs in (
            [10.0, 11.0][: len(xs)],
            [10.0][: len(xs)],
            [20.0][: len(xs)],
        ), xs


def test_sequence_model_refuses_batching(accumulator):
    server, _ = accumulator
    p = perfkit("-m", "accumulate", "-u", server.http_url, "-b", "2", "--request-count", "5")
    assert p.returncode == 3
    assert "sequence models do not support batching" in flat(p.stderr)
    no_traceback(p)
    p = perfkit("-m", "accumulate", "-u", server.http_url, "--concurrency-range", "4",
                "--sequence-id-range", "1:3", "--request-count", "5")  # fmt: skip
    assert p.returncode == 3
    assert "sequence id collision may occur" in flat(p.stderr)


def test_workers_share_out_the_ids(accumulator):
    """--workers 2: each process runs its slots' sequences with ids from its half of the range,
    so ids stay unique across processes."""
    server, log = accumulator
    p = perfkit("-m", "accumulate", "-u", server.http_url, "--workers", "2",
                "--concurrency-range", "4", "--request-count", "80", "--sequence-length", "5",
                "--sequence-id-range", "1:1001")  # fmt: skip
    assert p.returncode == 0, p.stderr
    seqs = sequences(read_log(log))
    check_state(seqs)
    ids = {int(s[0]["id"]) for s in seqs}
    assert any(i <= 500 for i in ids)
    assert any(i > 500 for i in ids)
