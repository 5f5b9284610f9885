"""The load generator's event loop: uvloop when it is installed, else asyncio's own.

uvloop (a perfkit dependency, which perfkit_server runs on too) spends far less CPU per ready
socket than asyncio's selector loop, and every request the generator sends costs one such wake-up:
its own CPU per request is what bounds the load one process can drive. `PERFKIT_LOOP=asyncio`
picks asyncio's loop (e.g. to compare, or to debug with asyncio's debug mode).
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from perfkit import interrupts

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(coro)` on the chosen loop (the same Ctrl-C handling: the task is cancelled).

    asyncio installs its Ctrl-C handler only over the default one, so `perfkit.interrupts`'
    handler steps aside while the loop runs.
    """
    factory = None
    if os.environ.get("PERFKIT_LOOP", "uvloop") == "uvloop":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            factory = uvloop.new_event_loop
    swap = threading.current_thread() is threading.main_thread() and interrupts.installed()
    if swap:
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(coro)
    finally:
        if swap:
            signal.signal(signal.SIGINT, previous)
