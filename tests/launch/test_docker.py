"""DockerTriton against a fake docker client (the docker engine is an external boundary; none runs here).

The fake's container "runs" a real perfkit_server subprocess on the ports of the tritonserver command
line it is given, so readiness, URLs and stop are exercised for real; only the engine is fake.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from perfkit.errors import ConfigError, ServerUnavailable
from perfkit.launch import DEFAULT_IMAGE, DockerTriton, ServerHandle
from perfkit.launch.docker import lifeline_command, owner_gone, owner_token
from tests.launch.fake_docker import FakeContainer, FakeDockerClient


def test_runs_tritonserver_in_a_container(zoo_repo: Path, tmp_path: Path) -> None:
    client = FakeDockerClient()
    log = tmp_path / "triton.log"
    server = DockerTriton(
        zoo_repo, gpus="all", load_models=["identity"], client=client, log_path=log
    )
    with server:
        assert isinstance(server, ServerHandle)
        assert server.kind == "docker_triton"
        assert server.alive()
        (container,) = client.containers.started
        assert container.image == DEFAULT_IMAGE
        kw = container.kwargs
        assert kw["network_mode"] == "host"
        # An open stdin that closes with its attached client (the SDK sets StdinOnce for
        # stdin_open without detach), attached to before the container starts.
        assert kw["stdin_open"] is True
        assert kw["detach"] is False
        assert container.events == ["attach ['stdin', 'stream']", "start"]
        assert kw["volumes"] == {
            str(zoo_repo.resolve()): {"bind": str(zoo_repo.resolve()), "mode": "rw"}
        }
        assert kw["device_requests"] == [{"count": -1, "capabilities": [["gpu"]]}]
        assert kw["shm_size"] == "1g"
        # Labelled with this perfkit (host, pid, start time) and a run id, for the next run's clean-up.
        assert kw["labels"] == {
            "perfkit": "docker_triton",
            "perfkit.owner": owner_token(),
            "perfkit.run": server.run_id,
        }
        assert f"{os.getpid()}:" in kw["labels"]["perfkit.owner"]
        command = kw["command"]
        assert command[:5] == lifeline_command([], 15.0)
        assert command[5] == "tritonserver"
        assert f"--http-port={server.http_url.rsplit(':', 1)[1]}" in command
        assert "--load-model=identity" in command
        assert server.metrics_url.endswith("/metrics")
    assert container.stopped_with == 15
    assert container.removed
    assert container.stdin_eof  # perfkit let go of the container's stdin
    assert not server.alive()
    assert "fake tritonserver log" in log.read_text()


def test_container_exiting_at_start_shows_its_log(zoo_repo: Path) -> None:
    client = FakeDockerClient(exits=True)
    with pytest.raises(ServerUnavailable, match="stopped \\(exited\\) during start-up") as info:
        DockerTriton(zoo_repo, client=client).start()
    assert "failed to load all models" in str(info.value)
    assert client.containers.started[0].removed


def test_engine_error_at_run(zoo_repo: Path) -> None:
    client = FakeDockerClient(fail=docker.errors.APIError("no GPU runtime"))
    with pytest.raises(ServerUnavailable, match=r"docker pull nvcr.io/nvidia/tritonserver:x-py3"):
        DockerTriton(zoo_repo, image="nvcr.io/nvidia/tritonserver:x-py3", client=client).start()


def test_an_image_no_registry_has(zoo_repo: Path) -> None:
    image = "nvcr.io/nvidia/tritonserver:x-py3"
    client = FakeDockerClient(missing_images={image}, unknown_images={image})
    with pytest.raises(ServerUnavailable, match=r"manifest for .*x-py3 not found.*docker pull"):
        DockerTriton(zoo_repo, image=image, client=client).start()
    assert client.containers.started == []


def test_a_missing_image_is_pulled_first(zoo_repo: Path) -> None:
    # As `docker run` does: the image is pulled once, then the container created.
    client = FakeDockerClient(missing_images={DEFAULT_IMAGE})
    with DockerTriton(zoo_repo, load_models=["identity"], client=client) as server:
        assert server.alive()
    assert client.images.pulled == [DEFAULT_IMAGE]
    assert len(client.containers.started) == 1


def _killed_perfkit() -> str:
    """The owner label of a process SIGKILLed after it labelled its container (a killed perfkit)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    token = owner_token(proc.pid)
    proc.kill()
    proc.wait()
    assert proc.stdin is not None
    proc.stdin.close()
    return token


def _left(name: str, owner: str | None, status: str) -> FakeContainer:
    labels = {"perfkit": "docker_triton"} | ({} if owner is None else {"perfkit.owner": owner})
    return FakeContainer(
        DEFAULT_IMAGE, {"labels": labels, "name": name}, status=status, ident=f"{name:0<12}"[:12]
    )


def test_the_next_run_removes_the_containers_of_a_killed_perfkit(
    zoo_repo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dead = _killed_perfkit()
    stopped = _left("stopped", dead, "exited")  # the lifeline stopped it; the container stays
    running = _left("running", dead, "running")  # a lifeline that could not act (engine restart)
    alive = _left("alive", owner_token(), "running")  # a perfkit still running: left alone
    remote = _left("remote", "another-host:1:1", "running")  # another host's: not judged
    legacy = _left("legacy", None, "exited")  # no owner label: not ours to judge
    client = FakeDockerClient(existing=[stopped, running, alive, remote, legacy])
    with (
        caplog.at_level(logging.WARNING, logger="perfkit.launch.docker"),
        DockerTriton(zoo_repo, load_models=["identity"], client=client) as server,
    ):
        assert server.alive()
    assert client.containers.list_calls[0] == {
        "all": True, "filters": {"label": "perfkit=docker_triton"}
    }  # fmt: skip
    for gone in (stopped, running):
        assert gone.removed
        assert gone.removed_with_force
    for kept in (alive, remote, legacy):
        assert not kept.removed
    pid = dead.split(":")[1]
    for name, status in (("stopped", "exited"), ("running", "running")):
        assert f"removed container {name} (" in caplog.text
        assert f", {status}), left by perfkit pid {pid} which is gone" in caplog.text


def test_owner_gone() -> None:
    assert not owner_gone(owner_token())
    assert owner_gone(_killed_perfkit())
    host, pid, ticks = owner_token().split(":")
    if ticks:  # Linux: a live pid with another start time is a reused pid, its perfkit gone
        assert owner_gone(f"{host}:{pid}:{int(ticks) + 1}")
    assert not owner_gone(f"another-host:{pid}:{ticks}")
    assert not owner_gone("garbage")


@pytest.mark.parametrize(
    ("gpus", "expected"),
    [
        (None, None),
        (2, [{"count": 2, "capabilities": [["gpu"]]}]),
        ("0,1", [{"device_ids": ["0", "1"], "capabilities": [["gpu"]]}]),
        ([3], [{"device_ids": ["3"], "capabilities": [["gpu"]]}]),
    ],
)
def test_gpu_requests(gpus: Any, expected: Any) -> None:
    assert DockerTriton(Path("."), gpus=gpus, client=FakeDockerClient()).device_requests == expected


def test_bad_gpus() -> None:
    with pytest.raises(ConfigError, match="gpus must be"):
        DockerTriton(Path("."), gpus="", client=FakeDockerClient())


# What runs in the container: it forwards SIGTERM and exits with the command's code.
_TRITONSERVER = textwrap.dedent(
    """
    import signal, sys
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(7))
    print("up", flush=True)
    signal.pause()
    """
)

# Stands in for perfkit: holds the write end of the container's stdin (the engine closes the
# container's stdin when this attached client goes), prints READY, then blocks until killed.
_HOLDER = textwrap.dedent(
    """
    import os, sys, time
    print("READY", flush=True)
    time.sleep(3600)
    """
)


def _lifeline(stdin: Any, grace_s: float = 5.0) -> subprocess.Popen[bytes]:
    shell = subprocess.Popen(
        lifeline_command([sys.executable, "-c", _TRITONSERVER], grace_s),
        stdin=stdin,
        stdout=subprocess.PIPE,
    )
    assert shell.stdout is not None
    assert shell.stdout.readline() == b"up\n"
    return shell


def test_the_container_command_stops_when_perfkit_is_killed() -> None:
    # SIGKILL of the process that holds the container's stdin: its EOF stops tritonserver.
    read_end, write_end = socket.socketpair()
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER], stdout=subprocess.PIPE, pass_fds=(write_end.fileno(),)
    )
    write_end.close()
    assert holder.stdout is not None
    assert holder.stdout.readline() == b"READY\n"
    shell = _lifeline(read_end)
    read_end.close()
    holder.kill()
    holder.wait()
    assert shell.wait(timeout=30) == 7  # the command got SIGTERM and its code is the container's
    holder.stdout.close()
    assert shell.stdout is not None
    shell.stdout.close()


def test_the_container_command_forwards_docker_stop() -> None:
    read_end, write_end = socket.socketpair()
    shell = _lifeline(read_end)
    read_end.close()
    shell.terminate()  # docker stop: SIGTERM to the container's first process
    assert shell.wait(timeout=30) == 7
    write_end.close()
    assert shell.stdout is not None
    shell.stdout.close()


def test_the_container_command_is_killed_when_it_ignores_sigterm() -> None:
    stubborn = "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); signal.pause()"
    read_end, write_end = socket.socketpair()
    shell = subprocess.Popen(
        lifeline_command([sys.executable, "-c", stubborn], 0.2),
        stdin=read_end,
        stdout=subprocess.PIPE,
    )
    assert shell.stdout is not None
    assert shell.stdout.readline() == b"up\n"
    read_end.close()
    write_end.close()
    assert shell.wait(timeout=30) == 128 + 9  # sh's status for a child killed by SIGKILL
    shell.stdout.close()
