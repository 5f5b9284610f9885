"""The model loading API of the python backend: `pb_utils.is_model_ready`, `load_model` and
`unload_model`, run through the server.

The stub sends a "control" frame and waits; one of the instance's BLS threads hands it to the
registry's model_control (which runs it on the serving loop) and waits for it (never the loop);
the reply frame carries the readiness, or the error the stub raises as TritonModelException
(in Triton's words: "Failed to load model: Failed to process the request for model '<instance>',
message: <the server's error>").

Triton's rules, kept here: the server must be serving (a model's `initialize` or warmup during
the server's startup is refused with "Server not ready"), load and unload need explicit model
control ("explicit model load / unload is not allowed if polling is enabled"), a version string
must be a non-negative integer, and a model not loaded is simply not ready. A load returns once
the new versions serve and an unload once the model stopped serving, without waiting for the old
instances to finish what they run (Triton's unload does not wait either), so a model may reload
or unload itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING, Any

from perfkit_server.backends.python.ipc import Header
from perfkit_server.errors import ServerError, Unavailable

if TYPE_CHECKING:
    from perfkit_server.registry import Registry

logger = logging.getLogger(__name__)

NOT_EXPLICIT = "explicit model load / unload is not allowed if polling is enabled"
NOT_SERVING = "Server not ready"
_POLL_S = 0.5  # how often a control wait checks whether the instance is closing
_STATE_POLL_S = 0.001  # how often a load/unload checks whether the model's serving changed

# (action, model name, argument) -> its future; the argument is the version ("ready"), the config
# override JSON ("load") or unload_dependents ("unload"). The result is the readiness, or True.
ModelControl = Callable[[str, str, Any], Future[bool]]


class ControlRefused(Exception):
    """A model loading call Triton refuses before it reaches the repository."""


def check_version(version: str) -> str:
    """Triton's rule for is_model_ready's version: empty (the policy's choice) or an integer >= 0."""
    if version:
        try:
            number = int(version)
        except ValueError:
            raise ControlRefused(
                f"failed to get model version from specified version string '{version}', "
                "version should be an integral value > 0"
            ) from None
        if number < 0:
            raise ControlRefused(
                f"failed to get model version from specified version string '{version}', "
                "version should be an integral value > 0"
            )
    return version


async def run_on_loop(
    registry: Registry, serving: bool, mode: str, action: str, name: str, arg: Any
) -> bool:
    """One control action on the serving loop, refused as Triton refuses it."""
    if not serving:
        raise ControlRefused(NOT_SERVING)
    if action == "ready":
        return registry.ready(name, check_version(str(arg)))
    if mode != "explicit":
        raise ControlRefused(
            f"{NOT_EXPLICIT} (--model-control-mode is '{mode}'; start the server with "
            "--model-control-mode=explicit to load and unload models from a python model)"
        )
    if action == "load":
        entry = registry.entries().get(name)
        served = entry.versions if entry is not None else None
        loading = registry.load(name, str(arg) or None)
        # Back once the new versions serve (or the load failed), before the old instances
        # finish what they run: the caller may be one of them (a model reloading itself).
        await _until(
            loading,
            lambda: (
                (e := registry.entries().get(name)) is not None
                and e.versions is not served
                and bool(e.versions)
            ),
            f"loading model '{name}'",
        )
        return True
    if action == "unload":
        # Back once the model stopped serving: its instances finish what they run (possibly
        # this very call's model) after the caller has its answer.
        await _until(
            registry.unload(name, bool(arg)),
            lambda: not registry.ready(name),
            f"unloading model '{name}'",
        )
        return True
    raise ControlRefused(f"unknown model control action {action!r}")


_PENDING: set[asyncio.Task[None]] = set()  # loads and unloads still closing old instances


async def _until(work: Coroutine[Any, Any, None], done: Callable[[], bool], what: str) -> None:
    """Run `work` as a task; return when it ended (raising its error) or `done()` holds, and let
    it finish on its own then. The registry has no event for "now serving" / "stopped serving",
    so the condition is polled; it turns within the task's own steps."""
    task = asyncio.create_task(work)
    while not task.done() and not done():  # noqa: ASYNC110
        await asyncio.sleep(_STATE_POLL_S)
    if task.done():
        task.result()
        return
    _PENDING.add(task)

    def finished(task: asyncio.Task[None]) -> None:
        _PENDING.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # The caller has its answer: what failed is closing the old instances.
            logger.error("%s (from a python model): %s", what, task.exception())

    task.add_done_callback(finished)


def run_control(
    model_control: ModelControl | None, header: Header, closing: Callable[[], bool]
) -> Header:
    """Run one control frame and wait for it (a BLS thread); the reply frame."""
    action = str(header.get("action", ""))
    reply: Header = {"op": "control_result", "id": header.get("id")}
    try:
        if model_control is None:
            raise Unavailable("the model loading API needs the server: this instance runs alone")
        name = header.get("model_name")
        if not isinstance(name, str):
            raise ControlRefused("model_name must be a string")
        arg = {
            "ready": header.get("model_version", ""),
            "load": header.get("config", ""),
            "unload": bool(header.get("unload_dependents", False)),
        }.get(action)
        if action == "load" and not isinstance(arg, str):
            raise ControlRefused("config must be a JSON string")
        future = model_control(action, name, arg)
        while True:
            try:
                reply["ready"] = bool(future.result(timeout=_POLL_S))
                return reply
            except FutureTimeout:
                if closing():
                    future.cancel()
                    raise Unavailable("the calling model is unloading") from None
    except (ServerError, ControlRefused) as exc:
        reply["error"] = str(exc)
    except Exception as exc:  # the server's boundary: any failure is this call's error
        reply["error"] = str(exc) or type(exc).__name__
    return reply
