"""`perfkit tune` starts the server its sweep file's [server] table says: a local tritonserver (the
nvidia-pytriton wheel's, marked `triton`) or docker (the CLI in this process against the FAKE docker
engine of tests/launch/fake_docker.py), stops it at the end and keeps its log in the output dir."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import optuna
import psutil
import pytest
from click.testing import CliRunner
from optuna.trial import TrialState

from perfkit.cli import cli
from perfkit.errors import ConfigError
from perfkit.launch import docker as docker_launch
from perfkit.launch.docker import owner_token
from tests.fixtures.triton import triton_available, write_identity
from tests.launch.fake_docker import FakeDockerClient, flag
from tests.tune.conftest import ROOT, perfkit_cmd, write_identity_model

IMAGE = "nvcr.io/nvidia/tritonserver:25.01-py3"


def quick_sweep(path: Path, repo: Path, model: str, server: str) -> Path:
    """Two trials, one concurrency level, short windows."""
    path.write_text(
        f"""
[model]
name = "{model}"
repository = "{repo}"

[server]
{server}

[space]
dynamic_batching = [true, false]

[load]
concurrency = 4

[budget]
trials = 2

[measure]
window_ms = 250
max_windows = 3
stability_windows = 2
stability_pct = 80
warmup_requests = 4

[search]
sampler = "grid"
"""
    )
    return path


def leftover_servers(repo: Path) -> list[psutil.Process]:
    """Processes still serving `repo` (a tritonserver's command line names its repository)."""
    return [
        proc
        for proc in psutil.process_iter(["cmdline"])
        if any(f"--model-repository={repo}" in arg for arg in proc.info["cmdline"] or [])
    ]


@pytest.mark.triton
def test_tune_starts_a_local_tritonserver(tmp_path: Path, triton_cache_dir: Path) -> None:
    if not triton_available():
        pytest.skip("no tritonserver: neither on PATH nor the nvidia-pytriton wheel")
    repo = (tmp_path / "repo").resolve()
    write_identity(repo, "pyident", delay_s=0.004)
    sweep = quick_sweep(tmp_path / "s.toml", repo, "pyident", 'launch = "local"\nprotocol = "grpc"')
    out = tmp_path / "out"
    env = dict(os.environ, COLUMNS="200", PERFKIT_CACHE=str(triton_cache_dir))
    proc = subprocess.run(
        perfkit_cmd("tune", str(sweep), "--output", str(out), "--study-name", "t"),
        capture_output=True, text=True, timeout=240, env=env, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "starting the local tritonserver for pyident" in " ".join(proc.stderr.split())
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{out / 'study.db'}")
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) >= 2, [(t.state, t.user_attrs.get("reason")) for t in study.trials]
    log = (out / "server.log").read_text()
    assert "successfully loaded 'pyident'" in log
    assert "--model-control-mode" not in log  # (flags are not echoed; the mode shows in the table)
    assert leftover_servers(repo) == []  # stopped at the end


def test_tune_in_docker_through_the_sdk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = FakeDockerClient(missing_images={IMAGE})
    monkeypatch.setattr(docker_launch, "docker_client", lambda: engine)
    repo = (tmp_path / "repo").resolve()
    write_identity_model(repo)
    server = (
        f'launch = "docker"\nimage = "{IMAGE}"\ngpus = "all"\nshm_size = "4g"\n'
        'args = ["--log-verbose=1"]\nenv = { OMP_NUM_THREADS = "1" }\nprotocol = "http"'
    )
    sweep = quick_sweep(tmp_path / "s.toml", repo, "ident", server)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["tune", str(sweep), "--output", str(out)])
    assert result.exit_code == 0, (result.output, result.exception)
    assert engine.images.pulled == [IMAGE]  # missing here: pulled first, as docker run does
    (container,) = engine.containers.started
    spec = container.kwargs
    assert container.image == IMAGE
    assert spec["volumes"] == {str(repo): {"bind": str(repo), "mode": "rw"}}
    assert spec["device_requests"] == [{"count": -1, "capabilities": [["gpu"]]}]
    assert spec["shm_size"] == "4g"
    assert spec["environment"] == {"OMP_NUM_THREADS": "1"}
    assert spec["network_mode"] == "host"
    assert spec["labels"]["perfkit"] == "docker_triton"
    assert spec["labels"]["perfkit.owner"] == owner_token()
    command = spec["command"]
    assert command[0:2] == ["/bin/sh", "-c"]
    assert flag(command, "model-control-mode") == "explicit"
    assert flag(command, "load-model") == "ident"
    assert command[-1] == "--log-verbose=1"
    assert container.removed
    assert container.stdin_eof
    assert "fake tritonserver log" in (out / "server.log").read_text()
    # The repository is mounted at its own path: what tune writes back is the user's file, and
    # the server reloads it from there.
    output = "".join(result.output.split())  # Rich wraps at 80 columns here, inside words too
    if f"writtento{repo / 'ident' / 'config.pbtxt'}" in output:
        assert (repo / "ident" / "config.pbtxt.orig").exists()
        assert "theserverreloadedtheconfigondisk" in output
    else:
        assert "nothingwritten" in output


def test_flags_override_the_sweep_files_launch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = FakeDockerClient(exits=True)  # the container stops at once: only its spec matters
    monkeypatch.setattr(docker_launch, "docker_client", lambda: engine)
    repo = (tmp_path / "repo").resolve()
    write_identity_model(repo)
    sweep = quick_sweep(tmp_path / "s.toml", repo, "ident", 'launch = "local"')
    result = CliRunner().invoke(
        cli, ["tune", str(sweep), "--output", str(tmp_path / "out"), "--triton-launch-mode",
              "docker", "--image", IMAGE, "--gpus", "2", "--server-env", "A=1"],
    )  # fmt: skip
    assert "stopped (exited) during start-up" in str(result.exception)
    (container,) = engine.containers.started
    assert container.image == IMAGE
    assert container.kwargs["device_requests"] == [{"count": 2, "capabilities": [["gpu"]]}]
    assert container.kwargs["environment"] == {"A": "1"}


@pytest.mark.parametrize(
    ("server", "args", "error"),
    [
        ('launch = "local"', ["-u", "localhost:8001"],
         "-u/--url names a running server, and {sweep}'s [server] table launches one "
         "(launch = 'local'): drop one of them."),
        ('url = "localhost:8001"', ["--server", "docker"],
         "--server starts a server, and {sweep}:server.url names a running one"),
        ("", ["--tritonserver", "/bin/tritonserver"],
         "--tritonserver applies to the local launch mode only, and {sweep}:server.launch is "
         "'embedded'"),
        ('launch = "docker"', ["--tritonserver", "/x"],
         "--tritonserver applies to the local launch mode only"),
    ],
)  # fmt: skip
def test_launch_conflicts_are_usage_errors(
    tmp_path: Path, server: str, args: list[str], error: str
) -> None:
    sweep = quick_sweep(tmp_path / "s.toml", tmp_path / "repo", "ident", server)
    result = CliRunner().invoke(cli, ["tune", str(sweep), *args])
    assert isinstance(result.exception, ConfigError), result.output
    assert ConfigError.exit_code == 3
    assert error.format(sweep=sweep) in str(result.exception)
