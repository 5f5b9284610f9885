"""How perfkit starts the server it measures: `LaunchSettings` (the `[server]` table's launch keys and
`perfkit run`/`perfkit tune`'s `--server` flags), checked here. Imports the stdlib, perfkit.errors
and perfkit.tomltable only, so a sweep file is read without loading a launcher.

    embedded   the bundled perfkit_server (the default when no URL is given)
    local      a tritonserver binary: `tritonserver` (a path), else one on PATH, else the one the
               nvidia-pytriton wheel carries
    docker     the NGC tritonserver image through the docker SDK: `image`, `gpus`, `shm_size`

Every mode takes `args` (more server flags, tritonserver's names) and `env` (the server's
environment on top of perfkit's). A setting of another mode is refused, never ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from perfkit.errors import ConfigError
from perfkit.tomltable import TableReader

LaunchMode = Literal["embedded", "local", "docker"]
LAUNCH_MODES: tuple[LaunchMode, ...] = ("embedded", "local", "docker")

# The NGC image Model Analyzer 1.58.0 (2026-09) defaults to. Its CUDA needs a recent driver: pick
# an older tag (image = / --image) for an older driver.
DEFAULT_IMAGE = "nvcr.io/nvidia/tritonserver:26.09-py3"
DEFAULT_SHM_SIZE = "1g"

# docker's --gpus: "all", a count, or device ids.
Gpus = str | int | tuple[str, ...]

# The sweep file's [server] keys read here (url, protocol, ... are the sweep file's own).
LAUNCH_KEYS = ("launch", "tritonserver", "image", "gpus", "shm_size", "args", "env")

# Which mode each mode-specific setting belongs to.
_ONLY_FOR: dict[str, LaunchMode] = {
    "tritonserver": "local",
    "image": "docker",
    "gpus": "docker",
    "shm_size": "docker",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class LaunchSettings:
    """The server perfkit starts when it is given no URL.

    Attributes:
        mode: "embedded" (perfkit_server), "local" (a tritonserver binary) or "docker".
        tritonserver: local: the binary; None: `tritonserver` on PATH, else the nvidia-pytriton
            wheel's.
        image: docker: the image; None: `DEFAULT_IMAGE`.
        gpus: docker: "all", a count, or device ids, as `docker run --gpus`; None: no GPU.
        shm_size: docker: the container's /dev/shm size; None: "1g".
        args: more server flags (tritonserver's names; perfkit_server takes the same).
        env: the server's environment variables on top of perfkit's (inside the container).
    """

    mode: LaunchMode = "embedded"
    tritonserver: str | None = None
    image: str | None = None
    gpus: Gpus | None = None
    shm_size: str | None = None
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()

    def check(self, name: Callable[[str], str]) -> LaunchSettings:
        """Refuse a setting of another mode; `name(field)` says how the user wrote it (a flag, a
        sweep-file key). Returns self."""
        for key, mode in _ONLY_FOR.items():
            if getattr(self, key) is not None and self.mode != mode:
                raise ConfigError(
                    f"{name(key)} applies to the {mode} launch mode only, and {name('launch')} is "
                    f"{self.mode!r}: set it to {mode!r}, or drop {name(key)}."
                )
        return self

    @property
    def docker_image(self) -> str:
        return self.image or DEFAULT_IMAGE

    @property
    def docker_shm_size(self) -> str:
        return self.shm_size or DEFAULT_SHM_SIZE


def parse_gpus(value: Any, where: str) -> Gpus:
    """docker's --gpus value: "all", a count ("2" or 2), device ids ("device=0,1" or [0, 1])."""
    if isinstance(value, bool):
        value = None
    if isinstance(value, int) and value >= 1:
        return value
    if isinstance(value, list) and value and all(isinstance(v, int | str) for v in value):
        return tuple(str(v) for v in value)
    if isinstance(value, str):
        text = value.strip()
        if text == "all":
            return "all"
        if text.isdigit() and int(text) >= 1:
            return int(text)
        if text.startswith("device="):
            ids = tuple(i.strip() for i in text.removeprefix("device=").split(",") if i.strip())
            if ids:
                return ids
    raise ConfigError(
        f"{where}: must be all, a GPU count, or device ids (device=0,1 or a list), "
        f"as docker run --gpus takes them; got {value!r}"
    )


def parse_env(items: Sequence[str], where: str) -> tuple[tuple[str, str], ...]:
    """NAME=VALUE strings -> pairs; an item without '=' or a name is an error naming `where`."""
    pairs: list[tuple[str, str]] = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"{where}: expected NAME=VALUE, got {item!r}")
        pairs.append((name.strip(), value))
    return tuple(pairs)


def launch_from_table(r: TableReader) -> LaunchSettings:
    """The launch keys of a sweep file's [server] table (the caller checks for unknown keys)."""
    mode = r.str_("launch", "embedded", LAUNCH_MODES) or "embedded"
    args = r.raw("args")
    if args is not None and not (isinstance(args, list) and all(isinstance(a, str) for a in args)):
        raise r.fail("args", f'must be a list of strings, e.g. ["--log-verbose=1"], got {args!r}')
    env = r.raw("env")
    if env is not None and not (
        isinstance(env, Mapping) and all(isinstance(v, str) for v in env.values())
    ):
        raise r.fail(
            "env", f'must be a table of strings, e.g. {{ OMP_NUM_THREADS = "4" }}, got {env!r}'
        )
    gpus = r.raw("gpus")
    launch = LaunchSettings(
        mode="local" if mode == "local" else "docker" if mode == "docker" else "embedded",
        tritonserver=r.str_("tritonserver"),
        image=r.str_("image"),
        gpus=None if gpus is None else parse_gpus(gpus, f"{r.source}:{r.key('gpus')}"),
        shm_size=r.str_("shm_size"),
        args=tuple(args or ()),
        env=tuple((str(k), v) for k, v in (env or {}).items()),
    )
    return launch.check(lambda key: f"{r.source}:{r.key(key)}")
