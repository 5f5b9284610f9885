"""`EmbeddedServer`: the bundled perfkit_server as a subprocess (`python -m perfkit_server`) on free ports.

Never imports perfkit_server: it is reached only over HTTP/gRPC, so a crashed server cannot corrupt
a measurement.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from perfkit.errors import ConfigError
from perfkit.launch._base import LOOPBACK, MODEL_CONTROL_MODES, ProcessServer, check_model_control

__all__ = ["MODEL_CONTROL_MODES", "SERVER_MODULES", "EmbeddedServer", "require_server_stack"]

# The modules of the `server` extra (or `server-gpu`: onnxruntime-gpu is the module onnxruntime too).
SERVER_MODULES = ("onnxruntime", "httptools", "hpack")


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:  # a finder that refuses it, or a broken package
        return False


def require_server_stack(python: str = sys.executable) -> None:
    """Raise `ConfigError` (exit 3) when this Python lacks the `server` extra that perfkit_server
    needs; a server run by another `python` is not checked here (its own start says)."""
    if python != sys.executable:
        return
    missing = [name for name in SERVER_MODULES if not _importable(name)]
    if missing:
        raise ConfigError(
            "the embedded server needs perfkit[server]: pip install 'perfkit[server]', or measure "
            f"a running server with -u URL (missing here: {', '.join(missing)})"
        )


class EmbeddedServer(ProcessServer):
    """Run perfkit_server on `repo`; a context manager that waits until ready and stops on exit.

        with EmbeddedServer(repo, load_models=["mlp"]) as server:
            client = tritonclient.grpc.InferenceServerClient(server.grpc_url)

    Args:
        repo: the model repository.
        model_control_mode: "explicit" (default; loads `load_models`), "none" (loads everything)
            or "poll".
        load_models: models to load at start in explicit mode; "*" loads all.
        extra_args: more perfkit_server flags (tritonserver names), e.g. ["--exit-timeout-secs", "5"].
        strict_model_config: --strict-model-config=true|false; None leaves the server's default.
        repository_poll_secs: --repository-poll-secs, for poll mode.
        log_verbose: --log-verbose level (0: off).
        http_port, grpc_port, metrics_port: fixed ports; by default free loopback ports.
        startup_timeout_s: bounded wait for /v2/health/ready; `ServerUnavailable` after it.
        log_path: where the server logs; by default a temp file removed on a clean stop.
    """

    kind = "embedded"

    def __init__(
        self,
        repo: Path,
        *,
        model_control_mode: str = "explicit",
        load_models: Sequence[str] = ("*",),
        extra_args: Sequence[str] = (),
        strict_model_config: bool | None = None,
        repository_poll_secs: float | None = None,
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        host: str = LOOPBACK,
        startup_timeout_s: float = 60.0,
        stop_timeout_s: float = 15.0,
        log_path: Path | None = None,
        env: Mapping[str, str] | None = None,
        python: str = sys.executable,
        log_verbose: int = 0,
    ) -> None:
        super().__init__(
            host=host,
            http_port=http_port,
            grpc_port=grpc_port,
            metrics_port=metrics_port,
            startup_timeout_s=startup_timeout_s,
            stop_timeout_s=stop_timeout_s,
            log_path=log_path,
            env=env,
        )
        require_server_stack(python)
        load_models = check_model_control(model_control_mode, load_models)
        self.repo = Path(repo).resolve()
        self.model_control_mode = model_control_mode
        self.load_models = load_models
        self.extra_args = tuple(extra_args)
        self.strict_model_config = strict_model_config
        self.repository_poll_secs = repository_poll_secs
        self.python = python
        self.log_verbose = log_verbose

    def _describe(self) -> str:
        return f"perfkit_server (repository {self.repo})"

    def _command(self) -> list[str]:
        command = [
            self.python,
            "-m",
            "perfkit_server",
            "--model-repository",
            str(self.repo),
            "--http-address",
            self._host,
            "--http-port",
            str(self.http_port),
            "--grpc-address",
            self._host,
            "--grpc-port",
            str(self.grpc_port),
            "--metrics-address",
            self._host,
            "--metrics-port",
            str(self.metrics_port),
            "--model-control-mode",
            self.model_control_mode,
        ]
        if self.model_control_mode == "explicit":
            for name in self.load_models:
                command += ["--load-model", name]
        if self.strict_model_config is not None:
            command.append(f"--strict-model-config={str(self.strict_model_config).lower()}")
        if self.repository_poll_secs is not None:
            command += ["--repository-poll-secs", f"{self.repository_poll_secs:g}"]
        if self.log_verbose:
            command += ["--log-verbose", str(self.log_verbose)]
        return command + list(self.extra_args)
