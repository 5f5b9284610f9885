"""DockerTriton against a fake docker client (the docker engine is an external boundary; none runs here).

The fake's container "runs" a real perfkit_server subprocess on the ports of the tritonserver command
line it is given, so readiness, URLs and stop are exercised for real; only the engine is fake.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from perfkit.errors import ConfigError, ServerUnavailable
from perfkit.launch import DEFAULT_IMAGE, DockerTriton, EmbeddedServer, ServerHandle
from perfkit.launch.docker import lifeline_command


def _flag(command: list[str], name: str) -> str:
    return next(arg.split("=", 1)[1] for arg in command if arg.startswith(f"--{name}="))


class FakeContainer:
    def __init__(self, image: str, kwargs: dict[str, Any], *, exits: bool) -> None:
        self.image = image
        self.kwargs = kwargs
        self.status = "created"
        self.exits = exits
        self.stopped_with: int | None = None
        self.removed = False
        self.server: EmbeddedServer | None = None
        self.events: list[str] = []
        self.stdin_eof = False
        # The engine's end of the stdin attach (perfkit holds the other).
        self.attached: socket.socket | None = None

    def attach_socket(self, params: dict[str, Any]) -> socket.socket:
        self.events.append(f"attach {sorted(params)}")
        ours, self.attached = socket.socketpair()
        return ours

    def start(self) -> None:
        self.events.append("start")
        command = self.kwargs["command"]
        if self.exits:
            self.status = "exited"
            return
        self.server = EmbeddedServer(
            Path(_flag(command, "model-repository")),
            http_port=int(_flag(command, "http-port")),
            grpc_port=int(_flag(command, "grpc-port")),
            metrics_port=int(_flag(command, "metrics-port")),
            model_control_mode=_flag(command, "model-control-mode"),
            load_models=[_flag(command, "load-model")],
        )
        self.server._spawn()  # started like a container: no wait; DockerTriton polls readiness
        self.status = "running"

    def reload(self) -> None:
        if self.status == "running" and self.server is not None and not self.server.alive():
            self.status = "exited"

    def logs(self, tail: int | str = "all") -> bytes:
        return b"I1125 fake tritonserver log\nE1125 error: creating server: failed to load all models\n"

    def stop(self, timeout: int = 10) -> None:
        self.stopped_with = timeout
        if self.server is not None:
            self.server.stop()
        self.status = "exited"

    def remove(self, force: bool = False) -> None:
        self.removed = True
        if self.attached is not None:  # had perfkit closed its end of the stdin attach?
            self.attached.setblocking(False)
            try:
                self.stdin_eof = self.attached.recv(1) == b""
            except BlockingIOError:
                self.stdin_eof = False
            self.attached.close()


class FakeContainers:
    def __init__(self, *, exits: bool = False, fail: Exception | None = None) -> None:
        self.exits = exits
        self.fail = fail
        self.started: list[FakeContainer] = []

    def create(self, image: str, **kwargs: Any) -> FakeContainer:
        if self.fail is not None:
            raise self.fail
        container = FakeContainer(image, kwargs, exits=self.exits)
        self.started.append(container)
        return container


class FakeDockerClient:
    def __init__(self, **kwargs: Any) -> None:
        self.containers = FakeContainers(**kwargs)


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
    client = FakeDockerClient(fail=docker.errors.ImageNotFound("no such image"))
    with pytest.raises(ServerUnavailable, match=r"docker pull nvcr.io/nvidia/tritonserver:x-py3"):
        DockerTriton(zoo_repo, image="nvcr.io/nvidia/tritonserver:x-py3", client=client).start()


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
