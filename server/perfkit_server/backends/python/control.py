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
must be a non-negative integer, and a model not loaded is simply not ready. An unload returns
once the model has stopped serving, without waiting for its instances to finish (Triton's unload
does not wait either), so a model may unload itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
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
_UNLOAD_POLL_S = 0.001  # how often an unload checks whether the model stopped serving

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
        await registry.load(name, str(arg) or None)
        return True
    if action == "unload":
        task = asyncio.create_task(registry.unload(name, bool(arg)))
        # Back as soon as the model stopped serving: its instances finish what they run
        # (possibly this very call's model) after the caller has its answer. The registry has
        # no "stopped serving" event to wait on, so the condition is polled (it turns within
        # the unload's first steps).
        while not task.done() and registry.ready(name):  # noqa: ASYNC110
            await asyncio.sleep(_UNLOAD_POLL_S)
        if task.done():
            task.result()
        else:
            _PENDING.add(task)
            task.add_done_callback(_finished)
        return True
    raise ControlRefused(f"unknown model control action {action!r}")


_PENDING: set[asyncio.Task[None]] = set()  # unloads still closing their instances


def _finished(task: asyncio.Task[None]) -> None:
    _PENDING.discard(task)
    if not task.cancelled() and task.exception() is not None:
        # Already out of service: the error is only its instances' closing.
        logger.error("unloading a model (from a python model): %s", task.exception())


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
