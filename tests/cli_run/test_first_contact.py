"""A user's first commands, as a perf_analyzer or Model Analyzer user types them: each mistake is
one line that says what is wrong and what to type instead, with exit 3 (bad options)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.triton import write_identity
from tests.tune.conftest import run_perfkit, write_identity_model, write_sweep


def perfkit_run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, COLUMNS="200")
    return subprocess.run(
        [sys.executable, "-m", "perfkit", "run", "--no-live", *args],
        capture_output=True, text=True, timeout=timeout, env=env,
    )  # fmt: skip


def error_line(p: subprocess.CompletedProcess[str]) -> str:
    """The one `Error: ...` line (no traceback, nothing else said about it)."""
    assert "Traceback" not in p.stderr + p.stdout, p.stderr
    errors = [line for line in p.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, p.stderr
    return errors[0]


def test_own_model_without_url_says_how_to_measure_a_running_server():
    # perf_analyzer's first command: -m names the user's model, no -u (the embedded default).
    p = perfkit_run("-m", "my_model", "--concurrency-range", "1:4")
    assert p.returncode == 3, p.stderr
    line = error_line(p)
    assert "'my_model' is not a zoo model" in line
    assert "perfkit run -m my_model -u localhost:8000" in line
    assert "perfkit run -m my_model --model-repository DIR" in line
    p = perfkit_run("-m", "my_model", "-i", "grpc")
    assert p.returncode == 3, p.stderr
    assert "perfkit run -m my_model -u localhost:8001 -i grpc" in error_line(p)


def test_http_port_with_grpc_is_named(run_server):
    p = perfkit_run("-m", "fast", "-u", run_server.http_url, "-i", "grpc", "--request-count", "5")
    assert p.returncode == 3, p.stderr
    line = error_line(p)
    assert f"{run_server.http_url} answers HTTP/1.1; it looks like the HTTP port" in line
    assert "use -i http or the gRPC port (8001" in line


def test_grpc_port_with_http_is_named(run_server):
    p = perfkit_run("-m", "fast", "-u", run_server.grpc_url, "-i", "http", "--request-count", "5")
    assert p.returncode == 3, p.stderr
    line = error_line(p)
    assert f"{run_server.grpc_url} answers HTTP/2 (gRPC); it looks like the gRPC port" in line
    assert "use -i grpc or the HTTP port (8000" in line


def test_unknown_url_scheme_is_refused_not_dropped(run_server):
    for url in (f"grpcs://{run_server.grpc_url}", f"ftp://{run_server.http_url}"):
        p = perfkit_run("-m", "fast", "-u", url, "-i", "grpc", "--request-count", "5")
        assert p.returncode == 3, p.stderr
        line = error_line(p)
        assert f"perfkit does not speak {url.split('://')[0]}://" in line
        assert "https://host:port for TLS" in line


def test_https_is_used_not_dropped(run_server):
    # The server speaks plain HTTP: an https:// URL must fail in the TLS handshake, not measure.
    p = perfkit_run("-m", "fast", "-u", f"https://{run_server.http_url}", "--request-count", "5")
    assert p.returncode == 99, p.stderr
    assert "TLS with" in error_line(p)


def test_tune_url_to_a_server_not_in_explicit_mode_is_a_preflight_error(
    tmp_path: Path, perfkit_server
):
    repo = tmp_path / "repo"
    write_identity_model(repo)
    server = perfkit_server(repo)  # the default model-control mode: none
    sweep = write_sweep(tmp_path / "s.toml", repo, trials=3)
    p = run_perfkit(
        "tune", str(sweep), "-u", server.http_url, "-i", "http", "--output", str(tmp_path / "o")
    )
    assert p.returncode == 3, p.stdout + p.stderr
    line = error_line(p)
    assert f"the server at {server.http_url} is in model-control mode NONE" in line
    assert "start tritonserver with --model-control-mode=explicit" in line
    assert "resume" not in p.stdout + p.stderr
    # No trial was tried (the space printed first says "budget 3 trials": not a trial line).
    assert not re.search(r"^trial +\d", p.stdout + p.stderr, re.MULTILINE)


@pytest.mark.triton
def test_real_triton_wrong_port_and_wrong_mode(triton_server, tmp_path: Path) -> None:
    """The same first contacts against a real tritonserver (its evhtp HTTP/1.1 and grpc++ ports,
    Triton's own 'not allowed if polling is enabled' for a load in mode NONE)."""
    repo = tmp_path / "repo"
    write_identity(repo)
    server = triton_server(repo, model_control_mode="none", load_models=())
    p = perfkit_run("-m", "identity", "-u", server.http_url, "-i", "grpc", "--request-count", "5")
    assert p.returncode == 3, p.stderr
    assert "answers HTTP/1.1; it looks like the HTTP port" in error_line(p)
    p = perfkit_run("-m", "identity", "-u", server.grpc_url, "-i", "http", "--request-count", "5")
    assert p.returncode == 3, p.stderr
    assert "answers HTTP/2 (gRPC); it looks like the gRPC port" in error_line(p)
    sweep = write_sweep(tmp_path / "s.toml", repo, model="identity", trials=2)
    p = run_perfkit(
        "tune", str(sweep), "-u", server.http_url, "-i", "http", "-o", str(tmp_path / "o")
    )
    assert p.returncode == 3, p.stdout + p.stderr
    line = error_line(p)
    assert f"the server at {server.http_url} is not in explicit model-control mode" in line
    assert "--model-control-mode=explicit" in line
