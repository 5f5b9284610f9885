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
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

from perfkit.control import ControlClient, ServerProtocol, check_protocol, wait_for
from perfkit.errors import ConfigError, MissingDependency, ServerUnavailable
from perfkit.launch._base import LOOPBACK, check_model_control, free_ports, log_excerpt

logger = logging.getLogger(__name__)

# Triton 2.51.0, the version of the nvidia-pytriton wheel's tritonserver used on CPU.
DEFAULT_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"


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
            "DockerTriton needs the docker SDK (a perfkit dependency): pip install 'docker>=7'"
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
        shm_size: str = "1g",
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
        self._ports = (0, 0, 0)
        self.shm_size = shm_size
        self.name = name
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
        free = iter(free_ports(3))
        self._ports = tuple(p or next(free) for p in self._fixed_ports)  # type: ignore[assignment]
        kwargs: dict[str, Any] = {
            "command": lifeline_command(self.command(), self.stop_timeout_s),
            "stdin_open": True,  # with detach=False, the SDK sets StdinOnce: see the module doc
            "detach": False,
            "network_mode": "host",
            "volumes": {str(self.repo): {"bind": str(self.repo), "mode": "rw"}},
            "shm_size": self.shm_size,
            "labels": {"perfkit": "docker_triton"},
        }
        if self.device_requests is not None:
            kwargs["device_requests"] = self.device_requests
        if self.name is not None:
            kwargs["name"] = self.name
        logger.debug("docker run %s %s", self.image, " ".join(kwargs["command"]))
        try:
            self._container = client.containers.create(self.image, **kwargs)
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
