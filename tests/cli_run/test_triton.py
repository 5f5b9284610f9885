"""`perfkit run` against a real tritonserver (python backend, from the nvidia-pytriton wheel)."""

from __future__ import annotations

import pytest

from tests.cli_run.test_cli import flat, no_traceback, perfkit
from tests.fixtures.triton import write_identity
from tests.load.test_pure import PA_DEFAULT

pytestmark = pytest.mark.triton


def test_run_against_real_triton(triton_server, tmp_path):
    write_identity(tmp_path / "repo", stall_every=25, stall_s=0.02)
    server = triton_server(tmp_path / "repo")
    out = tmp_path / "t.csv"
    for proto, url in (("http", server.http_url), ("grpc", server.grpc_url)):
        p = perfkit("-m", "identity", "-u", url, "-i", proto, "--concurrency-range", "1:4:3",
                    "--request-count", "100", "-f", str(out))  # fmt: skip
        assert p.returncode == 0, p.stderr
        lines = out.read_text().splitlines()
        assert lines[0] == PA_DEFAULT
        assert len(lines) == 3
        assert "Avg request latency" in p.stdout
    # System shared memory works with a real Triton.
    p = perfkit(
        "-m",
        "identity",
        "-u",
        server.http_url,
        "--shared-memory",
        "system",
        "--request-count",
        "50",
    )
    assert p.returncode == 0, p.stderr
    # Open loop against the stalling model: corrected latency is reported.
    p = perfkit("-m", "identity", "-u", server.grpc_url, "-i", "grpc", "--request-rate-range", "100",
                "--request-count", "200")  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "Corrected latency" in p.stdout
    p = perfkit("-m", "nope", "-u", server.http_url, "--request-count", "5")
    assert p.returncode == 3
    assert "Model 'nope'" in flat(p.stderr)
    no_traceback(p)
