"""`perfkit run --num-of-sequences 8` against perfkit_server (the embedded server started by
`--model-repository`): the same python accumulator model and checks as `test_sequences.py` runs
on the real tritonserver, here served by perfkit_server's python backend and sequence batcher
(issue 13, acceptance 3: per-sequence state under Direct and Oldest with interleaved sequences)."""

from __future__ import annotations

import itertools
from collections import defaultdict

import pytest

from tests.cli_run.test_cli import perfkit
from tests.cli_run.test_sequences import check_state, read_log, sequences, write_accumulator


@pytest.mark.parametrize("strategy", ["direct", "oldest"])
def test_num_of_sequences_interleaved_on_perfkit_server(tmp_path, strategy):
    log = tmp_path / "requests.jsonl"
    write_accumulator(tmp_path / "repo", log, strategy)
    p = perfkit("-m", "accumulate", "--model-repository", str(tmp_path / "repo"), "-i", "grpc",
                "--request-rate-range", "400", "--request-count", "240",
                "--num-of-sequences", "8", "--serial-sequences", "--sequence-length", "5",
                "--sequence-length-variation", "0", "--sequence-id-range", "100:110")  # fmt: skip
    assert p.returncode == 0, p.stderr
    records = read_log(log)
    check_state(sequences(records))
    assert {int(r["id"]) for r in records} <= set(range(100, 110))
    positions: dict[int, list[int]] = defaultdict(list)
    for k, r in enumerate(records):
        positions[int(r["id"])].append(k)
    assert any(b - a > 1 for pos in positions.values() for a, b in itertools.pairwise(pos))
    live = peak = 0
    for r in records:
        live += int(r["start"]) - int(r["end"])
        peak = max(peak, live + int(r["end"]))
    assert peak <= 8
    assert "Sequence count:" in p.stdout


def test_concurrency_sequences_on_perfkit_server(tmp_path):
    log = tmp_path / "requests.jsonl"
    write_accumulator(tmp_path / "repo", log)
    p = perfkit("-m", "accumulate", "--model-repository", str(tmp_path / "repo"),
                "--concurrency-range", "4", "--request-count", "120", "--sequence-length", "6",
                "--sequence-length-variation", "50")  # fmt: skip
    assert p.returncode == 0, p.stderr
    seqs = sequences(read_log(log))
    check_state(seqs)
    assert max(len(s) for s in seqs) <= 9
