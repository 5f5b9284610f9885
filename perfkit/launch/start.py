"""`launcher`: the server `LaunchSettings` say, built for what `perfkit run` and `perfkit tune` need.

Both start it in explicit model-control mode with their one model loaded (tune loads its variants
through the repository API with a config override; run measures the model as loaded), wait for
ready with a bounded wait whose error names the URL, keep the server's log at `log_path`, and stop
it when their `with` block ends, on an error and Ctrl-C included.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from perfkit.launch.docker import DockerTriton
from perfkit.launch.embedded import EmbeddedServer
from perfkit.launch.settings import LaunchSettings
from perfkit.launch.triton import LocalTriton

ALLOW_CLIENT_SHM = "--allow-client-shm=true"

# The bounded wait for ready when none is given: a container may load models from a cold cache.
STARTUP_TIMEOUT_S: dict[str, float] = {"embedded": 60.0, "local": 60.0, "docker": 180.0}

_TAG = re.compile(r":(\d{2})\.(\d{2})(?:-|$)")


def image_needs_client_shm_flag(image: str) -> bool:
    """Triton refuses client shared memory by default since 26.04, and older releases do not know
    the flag: True for an NGC tag `yy.mm` from 26.04 on (a tag without a release says nothing)."""
    match = _TAG.search(image)
    return match is not None and (int(match[1]), int(match[2])) >= (26, 4)


def launcher(
    settings: LaunchSettings,
    repo: Path,
    *,
    load_models: Sequence[str],
    log_path: Path | None = None,
    startup_timeout_s: float | None = None,
    client_shm: bool = False,
    env: Mapping[str, str] | None = None,
    docker_client: Any = None,
) -> EmbeddedServer | LocalTriton | DockerTriton:
    """The server `settings` say, not started yet: use it as a context manager.

    Args:
        settings: the launch mode and its settings.
        repo: the model repository (mounted at the same path in a container).
        load_models: the models loaded at start (explicit model-control mode).
        log_path: where the server's log is kept; None: a temporary file.
        startup_timeout_s: the bounded wait for ready; None: `STARTUP_TIMEOUT_S` of the mode.
        client_shm: the client will register shared-memory regions: perfkit_server is told to
            allow them, a container shares the host's IPC namespace (and a 26.04+ image gets
            `--allow-client-shm=true`).
        env: more environment for the server, on top of `settings.env`.
        docker_client: a docker SDK client; by default `docker.from_env()`.
    """
    environment = {**dict(settings.env), **dict(env or {})}
    timeout = startup_timeout_s or STARTUP_TIMEOUT_S[settings.mode]
    if settings.mode == "embedded":
        return EmbeddedServer(
            repo,
            model_control_mode="explicit",
            load_models=load_models,
            extra_args=[*([ALLOW_CLIENT_SHM] if client_shm else []), *settings.args],
            log_path=log_path,
            env=environment,
            startup_timeout_s=timeout,
        )
    if settings.mode == "local":
        return LocalTriton(
            repo,
            binary=settings.tritonserver,
            model_control_mode="explicit",
            load_models=load_models,
            extra_args=settings.args,
            log_path=log_path,
            env=environment,
            startup_timeout_s=timeout,
        )
    image = settings.docker_image
    shm_flag = [ALLOW_CLIENT_SHM] if client_shm and image_needs_client_shm_flag(image) else []
    return DockerTriton(
        repo,
        image=image,
        gpus=settings.gpus,
        model_control_mode="explicit",
        load_models=load_models,
        extra_args=[*shm_flag, *settings.args],
        shm_size=settings.docker_shm_size,
        env=environment,
        ipc_mode="host" if client_shm else None,
        log_path=log_path,
        client=docker_client,
        startup_timeout_s=timeout,
    )
