"""The `ServerHandle` protocol and the subprocess machinery shared by the local launchers.

A process server runs in its own session (process group), logs stdout+stderr to a file, is ready
when /v2/health/ready answers 200 and the gRPC port accepts connections, and stops with SIGTERM,
then SIGKILL of its whole group after a grace period. Servers still running at interpreter exit
are stopped by an atexit hook. A caller that dies without running it (SIGKILL, a crash) leaves
nothing behind either: each server runs under a small watchdog (`_watchdog.py`) that holds the read
end of a pipe whose write end only this process holds, and stops the server when it reads EOF.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Protocol, Self, runtime_checkable

from perfkit.control import ControlClient, ServerProtocol, check_protocol, wait_for
from perfkit.errors import ConfigError, ServerUnavailable
from perfkit.launch._probe import port_open

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
MODEL_CONTROL_MODES = ("none", "explicit", "poll")


def check_model_control(
    model_control_mode: str, load_models: str | Sequence[str]
) -> tuple[str, ...]:
    """Validate a launcher's model-control mode; return `load_models` as a tuple (a str is one model)."""
    if model_control_mode not in MODEL_CONTROL_MODES:
        raise ConfigError(
            f"model_control_mode must be one of {', '.join(MODEL_CONTROL_MODES)}, "
            f"got {model_control_mode!r}"
        )
    return (load_models,) if isinstance(load_models, str) else tuple(load_models)


@runtime_checkable
class ServerHandle(Protocol):
    """A server perfkit can reach: started by perfkit (embedded, local Triton, docker) or remote.

    URLs are "host:port" as tritonclient and perf_analyzer take them; `metrics_url` is
    "host:port/metrics" (perf_analyzer's --metrics-url form).
    """

    @property
    def kind(self) -> str:
        """How it runs: "embedded", "local_triton", "docker_triton" or "remote"."""
        ...

    @property
    def http_url(self) -> str: ...

    @property
    def grpc_url(self) -> str: ...

    @property
    def metrics_url(self) -> str: ...

    @property
    def log_path(self) -> Path | None:
        """The server's log file (stdout + stderr), when perfkit started it."""
        ...

    def url(self, protocol: ServerProtocol) -> str:
        """`http_url` or `grpc_url`."""
        ...

    def alive(self) -> bool:
        """True while the server process (or container, or remote server) is up."""
        ...

    def stop(self) -> None:
        """Stop the server if perfkit started it; idempotent."""
        ...


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """`count` distinct ports free right now on `host` (bind to port 0, then release)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            sockets.append(s)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def log_tail(path: Path | None, lines: int = 25, max_bytes: int = 16384) -> str:
    """The last `lines` lines of a log file ("" when there is none)."""
    if path is None:
        return ""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


_ERROR_LINE = re.compile(r"^E\d{4} |error|exception|traceback|failed", re.IGNORECASE)


def log_excerpt(path: Path | None, lines: int = 15, errors: int = 10, width: int = 300) -> str:
    """For failure messages: the log's error-looking lines, then its last `lines` lines."""
    if path is None:
        return ""
    try:
        with path.open("rb") as f:
            text = f.read(4 * 1024 * 1024).decode("utf-8", "replace")
    except OSError:
        return ""
    all_lines = [line[:width].rstrip() for line in text.splitlines()]
    tail = all_lines[-lines:]
    found = [line for line in all_lines[:-lines] if _ERROR_LINE.search(line)][-errors:]
    parts = []
    if found:
        parts.append("error lines:\n" + "\n".join(found))
    parts.append("last lines:\n" + "\n".join(tail))
    return "\n".join(parts)


# Run by path with -I -S: stdlib only, so it starts in milliseconds and imports nothing of perfkit.
_WATCHDOG = Path(__file__).with_name("_watchdog.py")

_ADDRESS_IN_USE = ("address already in use", "errno 98", "address in use", "failed to bind")

_live: weakref.WeakSet[ProcessServer] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for server in list(_live):
        server.stop()


def _read_pid(fd: int, timeout_s: float) -> int | None:
    """The pid the watchdog writes once it started the server; None when it could not (it then
    exits 127 with the reason in the log, which the readiness wait reports)."""
    data = b""
    try:
        while not data.endswith(b"\n"):
            ready, _, _ = select.select([fd], [], [], timeout_s)
            chunk = os.read(fd, 64) if ready else b""
            if not chunk:
                return None
            data += chunk
    finally:
        os.close(fd)
    return int(data)


class ProcessServer:
    """Base of the launchers that run a server as a local subprocess (EmbeddedServer, LocalTriton)."""

    kind = "process"
    # Whether to start again on fresh free ports when the server failed to bind (ports picked by us).
    _retry_on_port_clash = 3

    def __init__(
        self,
        *,
        host: str = LOOPBACK,
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        startup_timeout_s: float = 60.0,
        stop_timeout_s: float = 15.0,
        log_path: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self._host = host
        self._fixed_ports = (http_port, grpc_port, metrics_port)
        self._ports = (0, 0, 0)
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self._user_log_path = log_path
        self._log_path: Path | None = log_path
        self._log_file: IO[bytes] | None = None
        self._extra_env = dict(env or {})
        self._proc: subprocess.Popen[bytes] | None = None
        # The write end of the watchdog's lifeline pipe, and the server's own pid.
        self._lifeline: int | None = None
        self._server_pid: int | None = None

    # -- subclass hooks ---------------------------------------------------------------------------
    def _command(self) -> list[str]:
        raise NotImplementedError

    def _environment(self) -> dict[str, str]:
        return {**os.environ, "PYTHONUNBUFFERED": "1", **self._extra_env}

    def _describe(self) -> str:
        return self.kind

    # -- URLs -------------------------------------------------------------------------------------
    @property
    def http_port(self) -> int:
        return self._ports[0]

    @property
    def grpc_port(self) -> int:
        return self._ports[1]

    @property
    def metrics_port(self) -> int:
        return self._ports[2]

    @property
    def http_url(self) -> str:
        return f"{self._host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self._host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"{self._host}:{self.metrics_port}/metrics"

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    @property
    def pid(self) -> int | None:
        """The server process's pid (its watchdog's child), while it runs."""
        return self._server_pid if self._proc is not None else None

    def url(self, protocol: ServerProtocol) -> str:
        return self.http_url if check_protocol(protocol) == "http" else self.grpc_url

    # -- lifecycle --------------------------------------------------------------------------------
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Self:
        """Start the server and wait until it is ready; raises `ServerUnavailable` on failure."""
        if self.alive():
            return self
        attempts = 1 if all(p is not None for p in self._fixed_ports) else self._retry_on_port_clash
        for attempt in range(1, attempts + 1):
            try:
                self._spawn()
                self._wait_ready()
                return self
            except ServerUnavailable:
                tail = log_tail(self._log_path, lines=200).lower()
                self._terminate()
                if attempt < attempts and any(s in tail for s in _ADDRESS_IN_USE):
                    if self._user_log_path is None and self._log_path is not None:
                        self._log_path.unlink(missing_ok=True)
                    logger.info("%s: port clash at start, retrying on new ports", self._describe())
                    continue
                raise
        raise AssertionError("unreachable")

    def _spawn(self) -> None:
        free = iter(free_ports(3, self._host))
        self._ports = (
            self._fixed_ports[0] or next(free),
            self._fixed_ports[1] or next(free),
            self._fixed_ports[2] or next(free),
        )
        if self._user_log_path is None:
            fd, name = tempfile.mkstemp(prefix=f"perfkit-{self.kind}-", suffix=".log")
            os.close(fd)
            self._log_path = Path(name)
        else:
            self._log_path = self._user_log_path
            self._log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = self._log_path.open("wb")
        command = self._command()
        logger.debug("starting %s: %s", self._describe(), " ".join(command))
        if shutil.which(command[0]) is None:
            self._close_log()
            raise ServerUnavailable(
                f"cannot start {self._describe()}: {command[0]} is not an executable file"
            )
        # Both pipes are created non-inheritable: no other child of perfkit holds the lifeline's
        # write end, so the watchdog reads EOF exactly when this process is gone.
        lifeline_r, self._lifeline = os.pipe()
        pid_r, pid_w = os.pipe()
        fds = (str(lifeline_r), str(pid_w), f"{self.stop_timeout_s:g}")
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", str(_WATCHDOG), *fds, "--", *command],
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                env=self._environment(),
                pass_fds=(lifeline_r, pid_w),
                # Own process group: a terminal's Ctrl-C reaches perfkit, which stops the server itself.
                start_new_session=True,
            )
        except OSError as exc:
            self._close_lifeline()
            self._close_log()
            raise ServerUnavailable(
                f"cannot start {self._describe()} ({command[0]}): {exc}"
            ) from exc
        finally:
            os.close(lifeline_r)
            os.close(pid_w)
        _live.add(self)
        self._server_pid = _read_pid(pid_r, self.startup_timeout_s)

    def _wait_ready(self) -> None:
        proc = self._proc
        assert proc is not None

        def not_ready() -> str | None:
            code = proc.poll()
            if code is not None:
                raise ServerUnavailable(
                    f"{self._describe()} exited with code {code} during start-up, before it was "
                    f"ready at {self.http_url} (http) / {self.grpc_url} (grpc). From its log "
                    f"{self._log_path}:\n"
                    f"{log_excerpt(self._log_path)}"
                )
            reason = control.not_ready()
            if reason is None and not port_open(self._host, self.grpc_port):
                reason = f"gRPC port {self.grpc_url} not accepting connections"
            return reason

        with ControlClient(self.http_url, "http") as control:
            last = wait_for(not_ready, self.startup_timeout_s)
        if last is not None:
            raise ServerUnavailable(
                f"{self._describe()} not ready at {self.http_url} after "
                f"{self.startup_timeout_s:g} s ({last}); stopped it. From its log "
                f"{self._log_path}:\n{log_excerpt(self._log_path)}"
            )

    def stop(self) -> None:
        """SIGTERM, wait up to `stop_timeout_s`, then SIGKILL the process group. Idempotent."""
        self._terminate()
        if self._user_log_path is None and self._log_path is not None:
            self._log_path.unlink(missing_ok=True)
            self._log_path = None

    def _terminate(self) -> None:
        proc = self._proc
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=self.stop_timeout_s)
                except subprocess.TimeoutExpired:
                    logger.warning(
                        "%s (pid %d) did not stop within %g s of SIGTERM; killing it",
                        self._describe(),
                        proc.pid,
                        self.stop_timeout_s,
                    )
            # Kill what is left of its group (the server itself on timeout, helper processes).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            self._proc = None
            self._server_pid = None
            _live.discard(self)
        self._close_lifeline()
        self._close_log()

    def _close_lifeline(self) -> None:
        if self._lifeline is not None:
            os.close(self._lifeline)
            self._lifeline = None

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __repr__(self) -> str:
        state = "running" if self.alive() else "stopped"
        return f"<{type(self).__name__} {state} http={self.http_url} grpc={self.grpc_url}>"
