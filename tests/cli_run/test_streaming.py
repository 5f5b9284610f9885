"""`perfkit run --streaming` (gRPC ModelStreamInfer) against the real tritonserver: a decoupled
python model sending several responses per request, a plain model, and a sequence model over the
stream; a decoupled model without --streaming, and --streaming with HTTP, are refused (exit 3).
"""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest

from perfkit.report import pa_stdout
from perfkit.report.schema import load_result
from tests.cli_run.test_cli import flat, no_traceback, perfkit
from tests.cli_run.test_sequences import check_state, read_log, sequences, write_accumulator
from tests.fixtures.triton import write_identity

pytestmark = pytest.mark.triton

RESPONSES = 3

_DECOUPLED = textwrap.dedent(
    f"""
    import numpy as np
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def execute(self, requests):
            for request in requests:
                x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
                sender = request.get_response_sender()
                for k in range({RESPONSES}):
                    out = pb_utils.Tensor("OUTPUT0", (x + k).astype(np.float32))
                    sender.send(pb_utils.InferenceResponse([out]))
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            return None
    """
)

_DECOUPLED_CONFIG = """
name: "fanout"
backend: "python"
max_batch_size: 0
input { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] }
output { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] }
instance_group { count: 1 kind: KIND_CPU }
model_transaction_policy { decoupled: true }
"""


def write_fanout(repo: Path) -> None:
    d = repo / "fanout"
    (d / "1").mkdir(parents=True, exist_ok=True)
    (d / "1" / "model.py").write_text(_DECOUPLED)
    (d / "config.pbtxt").write_text(_DECOUPLED_CONFIG)


@pytest.fixture
def models(triton_server, tmp_path):
    repo = tmp_path / "repo"
    write_fanout(repo)
    write_identity(repo)
    write_accumulator(repo, tmp_path / "requests.jsonl")
    return triton_server(repo), tmp_path / "requests.jsonl"


def test_decoupled_model_streams_several_responses(models, tmp_path):
    server, _ = models
    out = tmp_path / "f.csv"
    p = perfkit("-m", "fanout", "-u", server.grpc_url, "-i", "grpc", "--streaming",
                "--concurrency-range", "1:2", "--request-count", "30", "-f", str(out),
                "--output-dir", str(tmp_path / "res"),
                "--profile-export-file", str(tmp_path / "export.json"))  # fmt: skip
    assert p.returncode == 0, p.stderr
    no_traceback(p)
    assert re.search(r"    Response Throughput: [\d.]+ infer/sec", p.stdout)
    assert "Avg gRPC time" not in p.stdout  # perf_analyzer keeps none for decoupled models
    header = out.read_text().splitlines()[0].split(",")
    assert header[:3] == ["Concurrency", "Inferences/Second", "Response Throughput"]
    # The profile export has every response's time, as perf_analyzer's does.
    for experiment in json.loads((tmp_path / "export.json").read_text())["experiments"]:
        for r in experiment["requests"]:
            stamps = r["response_timestamps"]
            assert len(stamps) == RESPONSES
            assert r["timestamp"] < stamps[0] <= stamps[1] <= stamps[2]
    result = load_result(tmp_path / "res")
    assert result.settings["decoupled"] is True
    # The full summary (what a terminal run prints at the end) says how latency is measured.
    assert "  Detected decoupled model, using the last response for measuring latency" in (
        pa_stdout.summary(result)
    )
    for m in result.measurements:
        # Every request completed at its final (empty) response, after three with outputs.
        assert m.request_count == 30
        assert m.error_count == 0
        assert m.response_count == RESPONSES * 30
        assert m.response_throughput_per_s == pytest.approx(RESPONSES * m.throughput_infer_per_s)


def test_open_loop_streaming(models):
    server, _ = models
    p = perfkit("-m", "fanout", "-u", server.grpc_url, "-i", "grpc", "--streaming",
                "--request-rate-range", "100", "--request-count", "40")  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "Request count: 40" in p.stdout


def test_plain_model_over_the_stream(models):
    server, _ = models
    p = perfkit("-m", "identity", "-u", server.grpc_url, "-i", "grpc", "--streaming",
                "--concurrency-range", "3", "--request-count", "60")  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "Request count: 60" in p.stdout
    assert "Response Throughput" not in p.stdout


def test_sequences_over_the_stream(models):
    server, log = models
    p = perfkit("-m", "accumulate", "-u", server.grpc_url, "-i", "grpc", "--streaming",
                "--concurrency-range", "3", "--request-count", "50", "--sequence-length", "4")  # fmt: skip
    assert p.returncode == 0, p.stderr
    check_state(sequences(read_log(log)))


def test_refusals(models):
    server, _ = models
    p = perfkit("-m", "fanout", "-u", server.grpc_url, "-i", "grpc", "--request-count", "5")
    assert p.returncode == 3
    assert "decoupled models must be run with --streaming" in flat(p.stderr)
    no_traceback(p)
    p = perfkit("-m", "identity", "-u", server.http_url, "--streaming", "--request-count", "5")
    assert p.returncode == 3
    assert "--streaming is only allowed with gRPC (-i grpc)" in flat(p.stderr)
    no_traceback(p)
