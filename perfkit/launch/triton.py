"""`LocalTriton`: a real tritonserver as a subprocess: a binary on PATH or given, else the nvidia-pytriton wheel's.

The wheel's server needs the set-up pytriton itself does (see shared/reference/real-triton.md): a
writable copy of `pytriton/tritonserver` with the python backend stub for this interpreter in
`backends/python/`, LD_LIBRARY_PATH with the wheel's libs and the interpreter's LIBDIR, and PATH with
this venv's bin first (the stub imports numpy from it). The copy is made once into the perfkit cache
($PERFKIT_CACHE or ~/.cache/perfkit) and renamed into place, so concurrent starts share it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import sys
import sysconfig
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from perfkit.errors import MissingDependency
from perfkit.launch._base import LOOPBACK, ProcessServer, check_model_control

logger = logging.getLogger(__name__)

_INSTALL_HINT = (
    "Put tritonserver on PATH, pass its path (binary=... / --tritonserver), or install the "
    "nvidia-pytriton wheel, which carries a tritonserver that runs on CPU: "
    "pip install nvidia-pytriton==0.7.0"
)


@dataclass(frozen=True, slots=True)
class TritonInstall:
    """A runnable tritonserver: the binary, extra flags and environment it needs."""

    binary: Path
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    source: str = "PATH"


def _cache_root() -> Path:
    env = os.environ.get("PERFKIT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "perfkit"


def pytriton_server_dir() -> Path | None:
    """`pytriton/tritonserver` of the installed nvidia-pytriton wheel, or None (nothing is imported)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    return path if (path / "bin" / "tritonserver").is_file() else None


def _prepared_copy(source: Path, cache_dir: Path) -> Path:
    """A writable copy of the wheel's tritonserver dir with this Python's stub in backends/python/."""
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = source / "python_backend_stubs" / py / "triton_python_backend_stub"
    if not stub.is_file():
        raise MissingDependency(
            f"the nvidia-pytriton wheel at {source} has no python backend stub for Python {py} "
            f"({stub} is missing). Use a Python it supports, or a tritonserver on PATH."
        )
    binary = source / "bin" / "tritonserver"
    key = hashlib.sha256(f"{source}|{binary.stat().st_mtime_ns}|{py}".encode()).hexdigest()[:12]
    target = cache_dir / "tritonserver" / f"pytriton-py{py}-{key}"
    if (target / "backends" / "python" / "triton_python_backend_stub").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".staging-"))
    try:
        tree = staging / "tritonserver"
        shutil.copytree(source, tree, symlinks=True)
        shutil.copy2(stub, tree / "backends" / "python" / "triton_python_backend_stub")
        (tree / "caches").mkdir(exist_ok=True)
        try:
            os.rename(tree, target)
        except OSError:
            # Another process renamed its copy into place first; theirs is as good as ours.
            if not (target / "backends" / "python" / "triton_python_backend_stub").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("prepared tritonserver from %s at %s", source, target)
    return target


def find_tritonserver(
    binary: Path | str | None = None, *, cache_dir: Path | None = None
) -> TritonInstall:
    """Locate a tritonserver: `binary`, else one on PATH, else the nvidia-pytriton wheel's.

    Raises `MissingDependency` with an install hint when there is none.
    """
    if binary is not None:
        path = Path(binary)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise MissingDependency(
                f"tritonserver binary {path} does not exist or is not executable."
            )
        return TritonInstall(binary=path, source="given")
    on_path = shutil.which("tritonserver")
    if on_path:
        return TritonInstall(binary=Path(on_path), source="PATH")
    source = pytriton_server_dir()
    if source is None:
        raise MissingDependency(f"no tritonserver found. {_INSTALL_HINT}")
    root = _prepared_copy(source, cache_dir or _cache_root())
    libs = [str(source.parent.parent / "nvidia_pytriton.libs")]
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir:
        libs.append(str(libdir))
    if os.environ.get("LD_LIBRARY_PATH"):
        libs.append(os.environ["LD_LIBRARY_PATH"])
    venv_bin = str(Path(sys.executable).parent)
    env = (
        ("LD_LIBRARY_PATH", os.pathsep.join(libs)),
        ("PATH", os.pathsep.join([venv_bin, os.environ.get("PATH", "")])),
    )
    args = (
        f"--backend-directory={root / 'backends'}",
        f"--cache-directory={root / 'caches'}",
        "--backend-config=python,shm-default-byte-size=4194304",
        "--backend-config=python,shm-growth-byte-size=1048576",
    )
    return TritonInstall(
        binary=root / "bin" / "tritonserver", args=args, env=env, source=str(source)
    )


class LocalTriton(ProcessServer):
    """Run a real tritonserver on `repo` on free loopback ports; a context manager.

        with LocalTriton(repo, load_models=["identity"]) as server:
            ...

    Args:
        repo: the model repository.
        binary: a tritonserver binary; by default one on PATH, else the nvidia-pytriton wheel's.
        model_control_mode: "explicit" (default; loads `load_models`, "*" for all), "none", "poll".
        disable_auto_complete_config: pass --disable-auto-complete-config (starts ~3x faster).
        log_verbose: --log-verbose level.
        strict_model_config: --strict-model-config=true|false; None leaves Triton's default.
        repository_poll_secs: --repository-poll-secs, for poll mode.
        extra_args: more tritonserver flags.
    """

    kind = "local_triton"

    def __init__(
        self,
        repo: Path,
        *,
        binary: Path | str | None = None,
        model_control_mode: str = "explicit",
        load_models: Sequence[str] = ("*",),
        disable_auto_complete_config: bool = False,
        log_verbose: int = 0,
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
        cache_dir: Path | None = None,
    ) -> None:
        load_models = check_model_control(model_control_mode, load_models)
        # Resolve the install first: a missing tritonserver is a MissingDependency, not a start failure.
        self.install = find_tritonserver(binary, cache_dir=cache_dir)
        super().__init__(
            host=host,
            http_port=http_port,
            grpc_port=grpc_port,
            metrics_port=metrics_port,
            startup_timeout_s=startup_timeout_s,
            stop_timeout_s=stop_timeout_s,
            log_path=log_path,
            env={**dict(self.install.env), **dict(env or {})},
        )
        self.repo = Path(repo).resolve()
        self.model_control_mode = model_control_mode
        self.load_models = load_models
        self.disable_auto_complete_config = disable_auto_complete_config
        self.log_verbose = log_verbose
        self.extra_args = tuple(extra_args)
        self.strict_model_config = strict_model_config
        self.repository_poll_secs = repository_poll_secs

    def _describe(self) -> str:
        return f"tritonserver {self.install.binary} (repository {self.repo})"

    def _command(self) -> list[str]:
        command = [
            str(self.install.binary),
            f"--model-repository={self.repo}",
            f"--http-address={self._host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self._host}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self._host}",
            f"--metrics-port={self.metrics_port}",
            f"--model-control-mode={self.model_control_mode}",
            f"--log-verbose={self.log_verbose}",
            *self.install.args,
        ]
        if self.install.args:
            # One shared-memory prefix per server, so parallel servers' python stubs do not collide.
            command.append(
                "--backend-config=python,shm-region-prefix-name="
                f"perfkit{os.getpid()}_{uuid.uuid4().hex[:8]}"
            )
        if self.model_control_mode == "explicit":
            command += [f"--load-model={name}" for name in self.load_models]
        if self.disable_auto_complete_config:
            command.append("--disable-auto-complete-config")
        if self.strict_model_config is not None:
            command.append(f"--strict-model-config={str(self.strict_model_config).lower()}")
        if self.repository_poll_secs is not None:
            command.append(f"--repository-poll-secs={self.repository_poll_secs:g}")
        return command + list(self.extra_args)
