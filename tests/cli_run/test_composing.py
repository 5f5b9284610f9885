"""`perfkit run` on pipelines against the real tritonserver: an ensemble of python models, a BLS
python model (--bls-composing-models) and the response cache. The "Server:" block lists each
composing model's breakdown as perf_analyzer prints it, -f writes one CSV per composing model
(`<name>_v<version>.<file>`), results.json keeps them, and the cache figures show when the
model enables the response cache.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from perfkit.report.schema import load_result
from tests.cli_run.test_cli import no_traceback, perfkit
from tests.fixtures.triton import write_identity

pytestmark = pytest.mark.triton

COMPOSING_HEADER = (
    "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,"
    "Server Compute Input,Server Compute Infer,Server Compute Output,Client Recv"
)

_ENSEMBLE = """
name: "pipe"
platform: "ensemble"
max_batch_size: 8
input { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] }
output { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] }
ensemble_scheduling {
  step [
    { model_name: "first" model_version: -1
      input_map { key: "INPUT0" value: "INPUT0" } output_map { key: "OUTPUT0" value: "mid" } },
    { model_name: "second" model_version: -1
      input_map { key: "INPUT0" value: "mid" } output_map { key: "OUTPUT0" value: "OUTPUT0" } }
  ]
}
"""

_BLS_MODEL = textwrap.dedent(
    """
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def execute(self, requests):
            responses = []
            for request in requests:
                x = pb_utils.get_input_tensor_by_name(request, "INPUT0")
                out = x
                for name in ("first", "second"):
                    reply = pb_utils.InferenceRequest(
                        model_name=name, requested_output_names=["OUTPUT0"],
                        inputs=[pb_utils.Tensor("INPUT0", out.as_numpy())],
                    ).exec()
                    if reply.has_error():
                        raise pb_utils.TritonModelException(reply.error().message())
                    out = pb_utils.get_output_tensor_by_name(reply, "OUTPUT0")
                responses.append(pb_utils.InferenceResponse(
                    [pb_utils.Tensor("OUTPUT0", out.as_numpy())]))
            return responses
    """
)

_BLS_CONFIG = """
name: "bls"
backend: "python"
max_batch_size: 8
input { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] }
output { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] }
instance_group { count: 1 kind: KIND_CPU }
"""


def write_pipelines(repo: Path) -> None:
    write_identity(repo, "first")
    write_identity(repo, "second")
    (repo / "pipe" / "1").mkdir(parents=True)
    (repo / "pipe" / "config.pbtxt").write_text(_ENSEMBLE)
    (repo / "bls" / "1").mkdir(parents=True)
    (repo / "bls" / "1" / "model.py").write_text(_BLS_MODEL)
    (repo / "bls" / "config.pbtxt").write_text(_BLS_CONFIG)


def composing_block(stdout: str) -> dict[str, dict[str, int]]:
    """name -> {"Inference count": n, ...} from the indented composing blocks."""
    out: dict[str, dict[str, int]] = {}
    current = None
    for line in stdout.splitlines():
        m = re.fullmatch(r"  (\w+), version: (\S+)", line)
        if m:
            current = out.setdefault(m.group(1), {"version": int(m.group(2))})
            continue
        m = re.fullmatch(r"      ([A-Za-z ]+count): (\d+)", line)
        if m and current is not None:
            current[m.group(1)] = int(m.group(2))
    return out


@pytest.fixture
def pipelines(triton_server, tmp_path):
    write_pipelines(tmp_path / "repo")
    return triton_server(tmp_path / "repo")


@pytest.mark.parametrize("proto", ["http", "grpc"])
def test_ensemble_composing_breakdown(pipelines, tmp_path, proto):
    url = pipelines.http_url if proto == "http" else pipelines.grpc_url
    out = tmp_path / "out" / "pipe.csv"
    p = perfkit("-m", "pipe", "-u", url, "-i", proto, "--concurrency-range", "2",
                "--request-count", "60", "-f", str(out), "--output-dir", str(tmp_path / "res"))  # fmt: skip
    assert p.returncode == 0, p.stderr
    no_traceback(p)
    lines = p.stdout.splitlines()
    # perf_analyzer's shape: the ensemble's split is its composing models' sums.
    assert any(
        re.fullmatch(
            r"    Avg request latency: \d+ usec \(overhead \d+ usec \+ queue \d+ usec \+ compute "
            r"\d+ usec\)",
            line,
        )
        for line in lines
    ), p.stdout
    assert "  Composing models: " in lines
    blocks = composing_block(p.stdout)
    assert sorted(blocks) == ["first", "second"]
    for b in blocks.values():
        assert b["version"] == 1
        assert b["Successful request count"] == 60
        assert b["Inference count"] == 60
    assert any(
        re.fullmatch(
            r"      Avg request latency: \d+ usec \(overhead \d+ usec \+ queue \d+ usec \+ compute "
            r"input \d+ usec \+ compute infer \d+ usec \+ compute output \d+ usec\)",
            line,
        )
        for line in lines
    )
    for name in ("first", "second"):
        rows = (out.parent / f"{name}_v1.pipe.csv").read_text().splitlines()
        assert rows[0] == COMPOSING_HEADER
        cells = rows[1].split(",")
        assert cells[0] == "2"
        assert cells[2] == "0"
        assert cells[-1] == "0"
        assert float(cells[1]) > 0
    assert (
        (tmp_path / "res" / "first_v1.perf_analyzer.csv").read_text().startswith(COMPOSING_HEADER)
    )
    result = load_result(tmp_path / "res")
    server = result.measurements[0].server
    assert [(c.name, c.version) for c in server.composing] == [("first", "1"), ("second", "1")]
    assert all(c.server.success_count == 60 for c in server.composing)
    frame = result.to_pandas()
    assert list(frame["composing_first_success_count"]) == [60]
    assert list(frame["composing_second_version"]) == ["1"]


def test_bls_composing_models(pipelines, tmp_path):
    p = perfkit("-m", "bls", "-u", pipelines.grpc_url, "-i", "grpc", "--request-count", "40",
                "--bls-composing-models", "first, second:1")  # fmt: skip
    assert p.returncode == 0, p.stderr
    blocks = composing_block(p.stdout)
    assert sorted(blocks) == ["first", "second"]
    assert all(b["Successful request count"] == 40 for b in blocks.values())
    # Without the flag a BLS model is a plain model: no composing block.
    p = perfkit("-m", "bls", "-u", pipelines.grpc_url, "-i", "grpc", "--request-count", "10")
    assert p.returncode == 0, p.stderr
    assert "Composing models" not in p.stdout
    p = perfkit("-m", "bls", "-u", pipelines.grpc_url, "-i", "grpc", "--request-count", "10",
                "--bls-composing-models", "first:x")  # fmt: skip
    assert p.returncode == 3
    no_traceback(p)


def test_response_cache_figures(triton_server, tmp_path):
    repo = tmp_path / "repo"
    write_identity(repo, "cached")
    cfg = repo / "cached" / "config.pbtxt"
    cfg.write_text(cfg.read_text() + "response_cache { enable: true }\n")
    server = triton_server(repo, extra_args=["--cache-config", "local,size=1048576"])
    out = tmp_path / "c.csv"
    p = perfkit("-m", "cached", "-u", server.http_url, "--input-data", "zero",
                "--request-count", "50", "-f", str(out))  # fmt: skip
    assert p.returncode == 0, p.stderr
    hits = int(re.search(r"    Cache hit count: (\d+)", p.stdout).group(1))
    misses = int(re.search(r"    Cache miss count: (\d+)", p.stdout).group(1))
    # One input, sent 50 times: the first is computed (a miss), the rest answered from the cache.
    assert misses >= 1
    assert hits + misses == 50
    assert hits >= 40
    assert re.search(r"Average Cache Hit Latency: \d+ usec", p.stdout)
    assert re.search(r"Average Cache Miss Latency: \d+ usec \(cache lookup/insertion", p.stdout)
    header = out.read_text().splitlines()[0].split(",")
    assert header[header.index("Server Compute Output") + 1 :][:2] == [
        "Server Cache Hit",
        "Server Cache Miss",
    ]
