"""The server a tune measures on: a running one (`sweep.url`, checked for explicit model control)
or the one `sweep.launch` says, started for the tune; and the reload of the config on disk at the end."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from perfkit.errors import ConfigError, PerfkitError
from perfkit.results import ServerInfo
from perfkit.sweepfile import TuneSweep

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def server(
    sweep: TuneSweep,
    env: Mapping[str, str] | None,
    out_dir: Path,
    restarts: int,
    note: Callable[[str], None],
) -> Iterator[tuple[str, ServerInfo, str]]:
    """Yields (url, info, metrics url): the sweep's server once ready, or the one `sweep.launch`
    says, started in explicit mode with its log in `out_dir` (server.log; server.N.log after a
    restart) and stopped when the block ends."""
    from perfkit.launch import RemoteServer, server_info, wait_ready
    from perfkit.launch.start import launcher

    if sweep.url is not None:
        wait_ready(sweep.url, sweep.protocol, sweep.startup_timeout_s)
        check_explicit(sweep)
        remote = RemoteServer(sweep.url, sweep.protocol, metrics_url=sweep.metrics_url)
        yield sweep.url, server_info(sweep.url, sweep.protocol), remote.metrics_url
        return
    log = out_dir / ("server.log" if not restarts else f"server.{restarts + 1}.log")
    if sweep.launch.mode != "embedded":
        note(f"starting the {sweep.launch.mode} tritonserver for {sweep.model}; its log: {log}")
    with launcher(
        sweep.launch,
        sweep.repository,
        load_models=[m.name for m in sweep.models] or [sweep.model],
        log_path=log,
        startup_timeout_s=sweep.startup_timeout_s,
        env=env,
    ) as server:
        url = server.url(sweep.protocol)
        try:
            info = server_info(url, sweep.protocol, embedded=True)
        except (PerfkitError, OSError):  # metadata is nice to have; the server is ready
            kind = "perfkit_server" if sweep.launch.mode == "embedded" else "triton"
            info = ServerInfo(
                url=url, protocol=sweep.protocol, kind=kind, version="", embedded=True
            )
        yield url, info, sweep.metrics_url or server.metrics_url


_URL_REMEDY = "or leave server.url unset to let perfkit start one"


def check_explicit(sweep: TuneSweep, url: str | None = None, remedy: str = _URL_REMEDY) -> None:
    """Preflight for a server perfkit did not start (`url`, default `sweep.url`): the tuner loads
    each variant through the model repository API, which only a server in explicit model-control
    mode allows. A plain load of the model (what the first trial does anyway) tells; refused ->
    one ConfigError, ending with `remedy`."""
    from perfkit.control import ControlClient

    url = url or sweep.url
    assert url is not None
    control = ControlClient(url, sweep.protocol, model=sweep.model, network_timeout_s=120.0)
    try:
        control.load_model(None)
    except PerfkitError as exc:
        text = str(exc)
        if "not allowed" not in text:  # another refusal: the default's trial fails with it
            logger.debug("preflight load of %s: %s", sweep.model, text)
            return
        # perfkit_server names its mode; Triton says "... if polling is enabled" for NONE and POLL.
        named = re.search(r"model-control-mode is '(\w+)'", text)
        mode = (
            f"is in model-control mode {named.group(1).upper()}"
            if named
            else "is not in explicit model-control mode"
        )
        raise ConfigError(
            f"the server at {url} {mode}: it refused to load {sweep.model!r}, and "
            "perfkit tune loads variants through the load API: start tritonserver with "
            f"--model-control-mode=explicit ({remedy})."
        ) from exc
    finally:
        control.close()


def reload(url: str, sweep: TuneSweep) -> str:
    """Leave the server serving the file on disk (the written best, or the original)."""
    from perfkit.control import ControlClient

    control = ControlClient(url, sweep.protocol, model=sweep.model, network_timeout_s=120.0)
    try:
        control.reload_from_disk()
        return "the server reloaded the config on disk"
    except PerfkitError as exc:  # the results are written: report it, never lose them
        return f"the server could not reload the config on disk: {exc}"
    finally:
        control.close()
