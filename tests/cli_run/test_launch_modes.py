"""`perfkit run --server embedded|local|docker`: the server perfkit starts, its settings, its log.

local runs the real tritonserver of the nvidia-pytriton wheel (marked `triton`); docker runs the
CLI in this process against the FAKE docker engine (tests/launch/fake_docker.py), whose container
serves with perfkit_server on the ports of the tritonserver command line it is given.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from perfkit.cli import cli
from perfkit.launch import DEFAULT_IMAGE
from perfkit.launch import docker as docker_launch
from perfkit.launch.docker import lifeline_command, owner_token
from tests.cli_run.test_cli import flat, no_traceback, perfkit
from tests.fixtures.triton import triton_available, write_identity
from tests.launch.fake_docker import FakeDockerClient, flag
from tests.tune.test_tune_launch import leftover_servers


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["-u", "localhost:8000", "--server", "local"],
         "--server starts a server, and -u/--url names a running one: drop one of them."),
        (["-u", "localhost:8000", "--triton-docker-image", "x"],
         "--image starts a server, and -u/--url names a running one"),
        (["--image", "x"], "--image applies to the docker launch mode only, and --server is 'embedded'"),
        (["--server", "local", "--gpus", "all"], "--gpus applies to the docker launch mode only"),
        (["--server", "docker", "--gpus", "many"], "--gpus: must be all, a GPU count, or device ids"),
        (["--server-env", "NOVALUE"], "--server-env: expected NAME=VALUE, got 'NOVALUE'"),
    ],
)  # fmt: skip
def test_launch_flags_refused_before_a_server_starts(args: list[str], error: str) -> None:
    p = perfkit("-m", "identity", *args, timeout=60)
    assert p.returncode == 3, p.stderr
    assert error in flat(p.stderr)
    no_traceback(p)


@pytest.mark.triton
def test_run_starts_and_stops_a_local_tritonserver(tmp_path: Path, triton_cache_dir: Path) -> None:
    if not triton_available():
        pytest.skip("no tritonserver: neither on PATH nor the nvidia-pytriton wheel")
    repo = tmp_path / "repo"
    write_identity(repo)
    out = tmp_path / "out.csv"
    env = dict(os.environ, COLUMNS="200", PERFKIT_CACHE=str(triton_cache_dir))
    p = subprocess.run(
        [sys.executable, "-m", "perfkit", "run", "--no-live", "-m", "identity", "--server", "local",
         "--model-repository", str(repo), "-i", "grpc", "--request-count", "40", "-f", str(out)],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "Starting a local tritonserver for model identity" in flat(p.stderr)
    assert len(out.read_text().splitlines()) == 2
    assert "Avg request latency" in p.stdout  # the server-side breakdown: Triton's statistics
    log = (tmp_path / "out.server.log").read_text()
    assert "Started GRPCInferenceService" in log
    assert "successfully loaded 'identity'" in log
    assert leftover_servers(repo.resolve()) == []  # stopped at the end


def test_run_in_docker_through_the_sdk(
    zoo_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = FakeDockerClient()
    monkeypatch.setattr(docker_launch, "docker_client", lambda: engine)
    out = tmp_path / "run"
    result = CliRunner().invoke(
        cli,
        ["run", "--no-live", "-m", "identity", "--model-repository", str(zoo_repo), "-i", "grpc",
         "--server", "docker", "--gpus", "device=1", "--shm-size", "2g",
         "--server-arg=--log-verbose=1", "--server-env", "OMP_NUM_THREADS=2",
         "--request-count", "30", "--output-dir", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, (result.output, result.exception)
    (container,) = engine.containers.started
    spec = container.kwargs
    assert container.image == DEFAULT_IMAGE
    repo = str(zoo_repo.resolve())
    assert spec["volumes"] == {repo: {"bind": repo, "mode": "rw"}}  # write-back lands in your files
    assert spec["device_requests"] == [{"device_ids": ["1"], "capabilities": [["gpu"]]}]
    assert spec["shm_size"] == "2g"
    assert spec["environment"] == {"OMP_NUM_THREADS": "2"}
    assert spec["network_mode"] == "host"  # the ports are free host ports perfkit picked
    assert spec["labels"]["perfkit"] == "docker_triton"
    assert spec["labels"]["perfkit.owner"] == owner_token()
    assert f":{os.getpid()}:" in owner_token()
    # The lifeline: stdin held open by perfkit, tritonserver under the shell that watches it.
    assert spec["stdin_open"] is True
    assert spec["detach"] is False
    command = spec["command"]
    assert command[:5] == lifeline_command([], 15.0)
    assert command[5:7] == ["tritonserver", f"--model-repository={repo}"]
    assert flag(command, "model-control-mode") == "explicit"
    assert flag(command, "load-model") == "identity"
    assert command[-1] == "--log-verbose=1"
    ports = {int(flag(command, n)) for n in ("http-port", "grpc-port", "metrics-port")}
    assert len(ports) == 3
    assert 0 not in ports
    # Measured there, then stopped and removed, its stdin let go and its log kept.
    assert "Request concurrency: 1" in result.output
    assert container.stopped_with == 15
    assert container.removed
    assert container.stdin_eof
    assert "fake tritonserver log" in (out / "server.log").read_text()
