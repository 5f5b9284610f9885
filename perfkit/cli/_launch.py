"""The launch-mode flags of `perfkit run` and `perfkit tune`: `--server embedded|local|docker` and
each mode's settings (Model Analyzer's names are accepted too), -> `LaunchSettings`.

A URL means a running server: -u/--url (or a sweep's server.url) with a launch flag is a usage
error (exit 3) that says so, never a silent choice between them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from perfkit.errors import ConfigError
from perfkit.launch import LAUNCH_MODES, LaunchSettings, parse_env, parse_gpus

# Option name -> (the LaunchSettings field, the flag as the user sees it).
_FLAGS: dict[str, tuple[str, str]] = {
    "server": ("mode", "--server"),
    "tritonserver": ("tritonserver", "--tritonserver"),
    "image": ("image", "--image"),
    "gpus": ("gpus", "--gpus"),
    "shm_size": ("shm_size", "--shm-size"),
    "server_args": ("args", "--server-arg"),
    "server_env": ("env", "--server-env"),
}

_OPTIONS = [
    click.option(
        "--server",
        "--triton-launch-mode",
        "server",
        type=click.Choice(LAUNCH_MODES),
        default=None,
        help="The server perfkit starts when not given -u: embedded (perfkit_server, the "
        "default), local (tritonserver), docker (the NGC image).",
    ),
    click.option(
        "--tritonserver",
        "--triton-server-path",
        "tritonserver",
        default=None,
        help="local: the tritonserver binary (default: on PATH, else the nvidia-pytriton wheel's).",
    ),
    click.option(
        "--image",
        "--triton-docker-image",
        "image",
        default=None,
        help="docker: the Triton image (default perfkit.launch.DEFAULT_IMAGE).",
    ),
    click.option(
        "--gpus", default=None, help="docker: all, a count, or device=0,1 (as docker run --gpus)."
    ),
    click.option(
        "--shm-size",
        "--triton-docker-shm-size",
        "shm_size",
        default=None,
        help="docker: the container's /dev/shm (default 1g).",
    ),
    click.option(
        "--server-arg",
        "server_args",
        multiple=True,
        help="One more server flag, e.g. --server-arg=--log-verbose=1 (repeatable).",
    ),
    click.option(
        "--server-env",
        "server_env",
        multiple=True,
        help="NAME=VALUE in the server's environment (repeatable).",
    ),
]


def launch_options(f: Any) -> Any:
    """Add the launch-mode flags to a click command."""
    for option in reversed(_OPTIONS):
        f = option(f)
    return f


def _given(o: Mapping[str, Any]) -> dict[str, Any]:
    """The launch flags given, as LaunchSettings fields."""
    changes: dict[str, Any] = {}
    for option, (field, flag) in _FLAGS.items():
        value = o.get(option)
        if value is None or value == ():
            continue
        if option == "gpus":
            value = parse_gpus(value, flag)
        elif option == "server_env":
            value = parse_env(value, flag)
        elif option == "server_args":
            value = tuple(value)
        changes[field] = value
    return changes


def _refuse_with_url(given: Mapping[str, Any], url_source: str) -> None:
    if given:
        flag = next(f for field, f in _FLAGS.values() if field in given)
        raise ConfigError(
            f"{flag} starts a server, and {url_source} names a running one: drop one of them."
        )


def launch_for_run(o: Mapping[str, Any]) -> LaunchSettings | None:
    """`perfkit run`'s launch flags -> the server to start; None with -u (a running server)."""
    given = _given(o)
    if o.get("url"):
        _refuse_with_url(given, "-u/--url")
        return None
    return LaunchSettings(**given).check(_flag_name)


def launch_for_tune(
    base: LaunchSettings, o: Mapping[str, Any], *, url: str | None, url_source: str, source: str
) -> LaunchSettings:
    """The sweep's launch settings with `perfkit tune`'s flags over them. With a URL (the sweep's
    or -u) any launch setting, flag or sweep key, is a usage error."""
    given = _given(o)
    if url is not None:
        _refuse_with_url(given, url_source)
        if base != LaunchSettings():
            raise ConfigError(
                f"{url_source} names a running server, and {source}'s [server] table launches one "
                f"(launch = {base.mode!r}): drop one of them."
            )
        return base

    def name(field: str) -> str:
        flagged = ("mode" if field == "launch" else field) in given
        return _flag_name(field) if flagged else f"{source}:server.{field}"

    return dataclasses.replace(base, **given).check(name)


def _flag_name(field: str) -> str:
    return next((flag for f, flag in _FLAGS.values() if f == field), "--server")


def run_server_log(o: Mapping[str, Any]) -> Path | None:
    """Where `perfkit run` keeps the log of the server it starts: --output-dir/server.log, else
    next to -f (`<name>.server.log`), else None (a temporary file)."""
    if o.get("output_dir"):
        return Path(o["output_dir"]) / "server.log"
    report = o.get("latency_report_file")
    if report:
        path = Path(report)
        return path.with_name(f"{path.stem}.server.log")
    return None
