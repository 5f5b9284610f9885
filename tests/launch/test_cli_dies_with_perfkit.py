"""SIGKILL of `perfkit run --server local` or of `perfkit tune` with `[server] launch = "local"`
leaves no server process behind: the process table (psutil) is checked with a bounded wait.

The test starts the command on a long measurement, waits (bounded) until the tritonserver it started
answers ready, records every process under perfkit (the watchdog, tritonserver, its python backend
stubs), SIGKILLs perfkit alone, then waits (bounded) until every recorded process is gone and the
server's ports refuse connections. Marked `triton`: the real tritonserver of the nvidia-pytriton wheel.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from perfkit.control import ControlClient, wait_for
from perfkit.launch._probe import port_open
from tests.fixtures.triton import triton_available, write_identity
from tests.tune.test_tune_launch import quick_sweep

pytestmark = pytest.mark.triton

ROOT = Path(__file__).resolve().parents[2]


def _port(cmdline: list[str], name: str) -> int:
    return int(next(a.split("=", 1)[1] for a in cmdline if a.startswith(f"--{name}=")))


def _started_server(
    perfkit: subprocess.Popen[bytes], repo: Path
) -> tuple[psutil.Process, int, int]:
    """Bounded wait until the tritonserver under `perfkit` serving `repo` answers ready."""
    found: list[tuple[psutil.Process, int, int]] = []

    def probe() -> str | None:
        if perfkit.poll() is not None:
            raise AssertionError(f"perfkit exited ({perfkit.returncode}) before its server was up")
        for proc in psutil.Process(perfkit.pid).children(recursive=True):
            try:
                cmdline = proc.cmdline()
            except psutil.NoSuchProcess:
                continue
            if f"--model-repository={repo}" in cmdline and "--" not in cmdline:
                http, grpc = _port(cmdline, "http-port"), _port(cmdline, "grpc-port")
                with ControlClient(f"127.0.0.1:{http}", "http") as control:
                    if control.is_ready():
                        found.append((proc, http, grpc))
                        return None
                return "tritonserver not ready yet"
        return "no tritonserver under perfkit yet"

    reason = wait_for(probe, 120.0, interval_s=0.1)
    assert reason is None, reason
    return found[0]


def _kill_and_check(command: list[str], repo: Path, cache: Path) -> None:
    env = dict(os.environ, COLUMNS="200", PERFKIT_CACHE=str(cache))
    with subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    ) as perfkit:
        try:
            server, http, grpc = _started_server(perfkit, repo)
            under = psutil.Process(perfkit.pid).children(recursive=True)
            assert server in under
            assert len(under) >= 2  # the watchdog and tritonserver, and python backend stubs
            perfkit.kill()
            perfkit.wait(10)
            _, alive = psutil.wait_procs(under, timeout=60)
            alive = [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
            for proc in alive:
                proc.kill()  # clean up after the failure below
            assert alive == [], f"still running 60 s after perfkit was SIGKILLed: {alive}"
            assert not port_open("127.0.0.1", http)
            assert not port_open("127.0.0.1", grpc)
        finally:
            if perfkit.poll() is None:
                perfkit.kill()


@pytest.fixture
def python_repo(tmp_path: Path) -> Path:
    if not triton_available():
        pytest.skip("no tritonserver: neither on PATH nor the nvidia-pytriton wheel")
    repo = (tmp_path / "repo").resolve()
    write_identity(repo, delay_s=0.002)
    return repo


def test_sigkill_of_perfkit_run_leaves_no_server(
    python_repo: Path, tmp_path: Path, triton_cache_dir: Path
) -> None:
    command = [
        sys.executable, "-m", "perfkit", "run", "--no-live", "--server", "local", "-m", "identity",
        "--model-repository", str(python_repo), "-p", "600000", "-f", str(tmp_path / "out.csv"),
    ]  # fmt: skip
    _kill_and_check(command, python_repo, triton_cache_dir)


def test_sigkill_of_perfkit_tune_leaves_no_server(
    python_repo: Path, tmp_path: Path, triton_cache_dir: Path
) -> None:
    sweep = quick_sweep(tmp_path / "s.toml", python_repo, "identity", 'launch = "local"')
    # Ten-minute windows: the kill lands mid-trial.
    sweep.write_text(sweep.read_text().replace("window_ms = 250", "window_ms = 600000"))
    command = [sys.executable, "-m", "perfkit", "tune", str(sweep), "-o", str(tmp_path / "out")]
    _kill_and_check(command, python_repo, triton_cache_dir)
