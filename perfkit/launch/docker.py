"""`DockerTriton`: tritonserver in a container (nvcr.io/nvidia/tritonserver) through the docker SDK.

The docker SDK is imported lazily (only DockerTriton needs it); any object with the SDK's
`containers.create(...)` shape can be passed as `client` (the tests pass a fake: the docker engine is
an external boundary). The container uses the host network, so the server listens on free host
ports, and the model repository is mounted at the same path inside it.

The container dies with perfkit, SIGKILL included. tritonserver runs under a small shell
(`LIFELINE_SH`) that reads the container's stdin; the container is created with an open stdin
that closes when its one attached client goes (docker's StdinOnce), and perfkit attaches to it
before starting it and holds that socket. However perfkit ends, the kernel closes the socket, the
engine closes the container's stdin, and the shell stops tritonserver (SIGTERM, SIGKILL after the
stop timeout). The shell also forwards `docker stop`'s SIGTERM and exits with tritonserver's code.

The container is kept after it stops (its log is saved from it), so a killed perfkit leaves a
stopped container behind. Each container carries labels naming its perfkit (`LABEL`, and
`OWNER_LABEL`: host, pid and the pid's start time), and every `DockerTriton.start` first removes
the labelled containers of this host whose perfkit is gone (`reap_orphans`), logging each.
"""

from __future__ import annotations

import logging
import os
import shlex
import socket
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self

from perfkit.control import ControlClient, ServerProtocol, check_protocol, wait_for
from perfkit.errors import ConfigError, MissingDependency, ServerUnavailable
from perfkit.launch._base import LOOPBACK, check_model_control, free_ports, log_excerpt
from perfkit.launch.settings import DEFAULT_IMAGE, DEFAULT_SHM_SIZE

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_IMAGE", "LABEL", "OWNER_LABEL", "DockerTriton", "reap_orphans"]

# Every container perfkit starts: LABEL=LABEL_VALUE, OWNER_LABEL="host:pid:start", RUN_LABEL=a uuid.
LABEL = "perfkit"
LABEL_VALUE = "docker_triton"
OWNER_LABEL = "perfkit.owner"
RUN_LABEL = "perfkit.run"


# sh -c LIFELINE_SH perfkit-lifeline GRACE_S COMMAND...: run COMMAND until stdin reaches EOF.
# (An asynchronous list's stdin is /dev/null in sh: the lifeline reads a saved copy, fd 3.)
LIFELINE_SH = r"""
grace=$1; shift
trap 'kill -TERM "$pid" 2>/dev/null' TERM INT
exec 3<&0
"$@" </dev/null 3<&- &
pid=$!
{ cat <&3 >/dev/null; kill -TERM "$pid" 2>/dev/null; sleep "$grace"; kill -KILL "$pid" 2>/dev/null; } >/dev/null 2>&1 &
exec 3<&-
while :; do
  wait "$pid"; code=$?
  kill -0 "$pid" 2>/dev/null || exit "$code"
done
"""


def lifeline_command(command: Sequence[str], grace_s: float) -> list[str]:
    """`command` run under LIFELINE_SH: it stops when the shell's stdin reaches EOF."""
    return ["/bin/sh", "-c", LIFELINE_SH, "perfkit-lifeline", f"{grace_s:g}", *command]


def docker_client() -> Any:
    """`docker.from_env()`, with an install hint or an engine error as a perfkit error."""
    try:
        import docker
    except ImportError as exc:
        raise MissingDependency(
            "--server docker needs the docker SDK: pip install 'perfkit[docker]'"
        ) from exc
    try:
        return docker.from_env()
    except docker.errors.DockerException as exc:
        raise ServerUnavailable(
            f"cannot reach a docker engine ({exc}). Start docker, or check DOCKER_HOST."
        ) from exc


def engine_errors() -> tuple[type[BaseException], ...]:
    """The exceptions the docker SDK raises for engine trouble (API errors, lost connections)."""
    errors: list[type[BaseException]] = [OSError]
    try:
        import docker.errors
        import requests.exceptions
    except ImportError:
        return tuple(errors)
    return (docker.errors.DockerException, requests.exceptions.RequestException, *errors)


def _start_ticks(pid: int) -> str:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22), "" if unknown.
    With the pid it names one process: a pid reused after perfkit died has another start time."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return ""
    fields = stat.rsplit(b")", 1)[-1].split()
    return fields[19].decode() if len(fields) > 19 else ""


def owner_token(pid: int | None = None) -> str:
    """This perfkit as OWNER_LABEL names it: "host:pid:start ticks"."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_start_ticks(pid)}"


def owner_gone(token: str) -> bool:
    """True when the perfkit `token` names ran on this host and is no longer running. A token of
    another host (an engine shared by hosts) or one that cannot be read is never judged gone."""
    host, _, rest = token.partition(":")
    pid_text, _, ticks = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # it exists, as another user
    return bool(ticks) and _start_ticks(pid) not in ("", ticks)


def reap_orphans(client: Any) -> list[str]:
    """Remove the perfkit containers (`LABEL`) whose perfkit is gone (`owner_gone`), running or
    not; log and return what was removed. Engine errors are logged, never raised: a failed
    clean-up must not stop a run."""
    try:
        found = client.containers.list(all=True, filters={"label": f"{LABEL}={LABEL_VALUE}"})
    except engine_errors() as exc:
        logger.warning("could not list perfkit's containers to clean up: %s", exc)
        return []
    removed: list[str] = []
    for container in found:
        owner = (container.labels or {}).get(OWNER_LABEL, "")
        if not owner or not owner_gone(owner):
            continue
        what = (
            f"{container.name} ({container.short_id}, {container.status}), left by perfkit "
            f"pid {owner.split(':')[1]} which is gone"
        )
        try:
            container.remove(force=True)
        except engine_errors() as exc:
            logger.warning("could not remove container %s: %s", what, exc)
            continue
        logger.warning("removed container %s", what)
        removed.append(what)
    return removed


def _gpus_flag(requests: list[dict[str, Any]]) -> str:
    """docker run's --gpus value for `_device_requests`' output."""
    request = requests[0]
    if "device_ids" in request:
        return f'"device={",".join(request["device_ids"])}"'
    return "all" if request["count"] == -1 else str(request["count"])


def _device_requests(gpus: str | int | Sequence[int | str] | None) -> list[dict[str, Any]] | None:
    if gpus is None:
        return None
    if gpus == "all":
        return [{"count": -1, "capabilities": [["gpu"]]}]
    if isinstance(gpus, int):
        return [{"count": gpus, "capabilities": [["gpu"]]}]
    if isinstance(gpus, str):
        ids = [g.strip() for g in gpus.split(",") if g.strip()]
    else:
        ids = [str(g) for g in gpus]
    if not ids:
        raise ConfigError(f"gpus must be 'all', a count, or GPU ids, got {gpus!r}")
    return [{"device_ids": ids, "capabilities": [["gpu"]]}]


class DockerTriton:
    """Run tritonserver in a container on `repo`; a context manager like the other launchers.

    Args:
        repo: the model repository (mounted at the same path).
        image: the Triton image.
        gpus: None (no GPU), "all", a count, or GPU ids ("0,1" or [0, 1]), as `docker run --gpus`.
        model_control_mode, load_models, extra_args: tritonserver flags as in `LocalTriton`.
        shm_size: the container's /dev/shm (the python backend's tensors go through it).
        env: environment variables in the container.
        ipc_mode: "host" for client shared memory (the regions perfkit creates in the host's
            /dev/shm); shm_size is then the host's and not sent.
        client: a docker client; by default `docker.from_env()`.
        log_path: where the container's log is saved when it stops or fails to start.
    """

    kind = "docker_triton"

    def __init__(
        self,
        repo: Path,
        *,
        image: str = DEFAULT_IMAGE,
        gpus: str | int | Sequence[int | str] | None = None,
        model_control_mode: str = "explicit",
        load_models: Sequence[str] = ("*",),
        extra_args: Sequence[str] = (),
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        shm_size: str = DEFAULT_SHM_SIZE,
        env: Mapping[str, str] | None = None,
        ipc_mode: str | None = None,
        name: str | None = None,
        startup_timeout_s: float = 180.0,
        stop_timeout_s: float = 15.0,
        log_path: Path | None = None,
        client: Any = None,
    ) -> None:
        load_models = check_model_control(model_control_mode, load_models)
        self.repo = Path(repo).resolve()
        self.image = image
        self.device_requests = _device_requests(gpus)
        self.model_control_mode = model_control_mode
        self.load_models = load_models
        self.extra_args = tuple(extra_args)
        self._fixed_ports = (http_port, grpc_port, metrics_port)
        self._ports: tuple[int, int, int] = (http_port or 0, grpc_port or 0, metrics_port or 0)
        self.shm_size = shm_size
        self.env = dict(env or {})
        self.ipc_mode = ipc_mode
        self.name = name
        self.run_id = uuid.uuid4().hex[:12]
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self._log_path = log_path
        self._client = client
        self._container: Any = None
        self._lifeline: Any = None  # the socket attached to the container's stdin

    @property
    def http_url(self) -> str:
        return f"{LOOPBACK}:{self._ports[0]}"

    @property
    def grpc_url(self) -> str:
        return f"{LOOPBACK}:{self._ports[1]}"

    @property
    def metrics_url(self) -> str:
        return f"{LOOPBACK}:{self._ports[2]}/metrics"

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    @property
    def container(self) -> Any:
        """The docker SDK container object while running, else None."""
        return self._container

    def url(self, protocol: ServerProtocol) -> str:
        return self.http_url if check_protocol(protocol) == "http" else self.grpc_url

    def command(self) -> list[str]:
        """The tritonserver command line run in the container."""
        http_port, grpc_port, metrics_port = self._ports
        command = [
            "tritonserver",
            f"--model-repository={self.repo}",
            f"--http-port={http_port}",
            f"--grpc-port={grpc_port}",
            f"--metrics-port={metrics_port}",
            f"--model-control-mode={self.model_control_mode}",
        ]
        if self.model_control_mode == "explicit":
            command += [f"--load-model={name}" for name in self.load_models]
        return command + list(self.extra_args)

    def container_spec(self) -> dict[str, Any]:
        """The keyword arguments of `containers.create(image, **spec)` (ports as chosen at start)."""
        spec: dict[str, Any] = {
            "command": lifeline_command(self.command(), self.stop_timeout_s),
            "stdin_open": True,  # with detach=False, the SDK sets StdinOnce: see the module doc
            "detach": False,
            "network_mode": "host",
            "volumes": {str(self.repo): {"bind": str(self.repo), "mode": "rw"}},
            "labels": {LABEL: LABEL_VALUE, OWNER_LABEL: owner_token(), RUN_LABEL: self.run_id},
        }
        if self.ipc_mode is not None:
            spec["ipc_mode"] = self.ipc_mode
        else:
            spec["shm_size"] = self.shm_size
        if self.env:
            spec["environment"] = dict(self.env)
        if self.device_requests is not None:
            spec["device_requests"] = self.device_requests
        if self.name is not None:
            spec["name"] = self.name
        return spec

    def docker_run_command(self) -> str:
        """The `docker run` command line the container spec amounts to (for logs and docs)."""
        spec = self.container_spec()
        argv = ["docker", "run", "-i", "--network=host"]
        argv += [f"--volume={self.repo}:{self.repo}:rw"]
        argv += [f"--label={k}={v}" for k, v in spec["labels"].items()]
        if "ipc_mode" in spec:
            argv.append(f"--ipc={spec['ipc_mode']}")
        else:
            argv.append(f"--shm-size={self.shm_size}")
        argv += [f"--env={k}={v}" for k, v in self.env.items()]
        if self.device_requests is not None:
            argv.append(f"--gpus={_gpus_flag(self.device_requests)}")
        if self.name is not None:
            argv.append(f"--name={self.name}")
        return shlex.join([*argv, self.image, *spec["command"]])

    def alive(self) -> bool:
        if self._container is None:
            return False
        try:
            self._container.reload()
        except engine_errors():
            return False
        return bool(self._container.status == "running")

    def start(self) -> Self:
        if self.alive():
            return self
        client = self._client if self._client is not None else docker_client()
        reap_orphans(client)
        free = iter(free_ports(3))
        http_port, grpc_port, metrics_port = (p or next(free) for p in self._fixed_ports)
        self._ports = (http_port, grpc_port, metrics_port)
        logger.info("starting tritonserver in docker, as: %s", self.docker_run_command())
        try:
            self._container = self._create(client, self.container_spec())
            self._lifeline = self._container.attach_socket(params={"stdin": 1, "stream": 1})
            self._container.start()
        except engine_errors() as exc:  # image missing, GPU runtime absent, name clash
            self.stop()
            raise ServerUnavailable(
                f"cannot start container {self.image}: {exc}. Check that the image exists "
                f"(docker pull {self.image}) and, with gpus=, that the NVIDIA container runtime is set up."
            ) from exc
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _create(self, client: Any, spec: dict[str, Any]) -> Any:
        """`containers.create`; an image not here is pulled first, as `docker run` does."""
        import docker.errors

        try:
            return client.containers.create(self.image, **spec)
        except docker.errors.ImageNotFound:
            logger.warning("pulling %s (once; an NGC Triton image is several GB) ...", self.image)
        client.images.pull(self.image)
        return client.containers.create(self.image, **spec)

    def _wait_ready(self) -> None:
        def not_ready() -> str | None:
            if not self.alive():
                status = getattr(self._container, "status", "unknown")
                raise ServerUnavailable(
                    f"container {self.image} stopped ({status}) during start-up, before "
                    f"{self.http_url} was ready. Its log:\n{self._logs_excerpt()}"
                )
            return control.not_ready()

        with ControlClient(self.http_url, "http") as control:
            last = wait_for(not_ready, self.startup_timeout_s, interval_s=0.2)
        if last is not None:
            raise ServerUnavailable(
                f"container {self.image} not ready at {self.http_url} after "
                f"{self.startup_timeout_s:g} s ({last}). Its log:\n{self._logs_excerpt()}"
            )

    def _save_logs(self) -> None:
        if self._container is None or self._log_path is None:
            return
        try:
            data = self._container.logs()
        except engine_errors() as exc:
            logger.warning("could not read the logs of container %s: %s", self.image, exc)
            return
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_path.write_bytes(data if isinstance(data, bytes) else str(data).encode())

    def _logs_excerpt(self) -> str:
        if self._log_path is not None:
            self._save_logs()
            return log_excerpt(self._log_path)
        try:
            data = self._container.logs(tail=25)
        except engine_errors() as exc:
            return f"(logs unavailable: {exc})"
        return data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)

    def stop(self) -> None:
        """Stop (SIGTERM, then kill after `stop_timeout_s`) and remove the container. Idempotent."""
        container = self._container
        if container is None:
            return
        try:
            container.stop(timeout=int(self.stop_timeout_s))
        except engine_errors() as exc:  # already gone, engine down
            logger.warning("stopping container %s failed: %s", self.image, exc)
        self._save_logs()
        self._container = None
        self._close_lifeline()
        try:
            container.remove(force=True)
        except engine_errors() as exc:
            logger.warning("removing container %s failed: %s", self.image, exc)

    def _close_lifeline(self) -> None:
        lifeline, self._lifeline = self._lifeline, None
        if lifeline is not None:
            try:
                lifeline.close()
            except OSError as exc:
                logger.debug("closing the container's stdin failed: %s", exc)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
