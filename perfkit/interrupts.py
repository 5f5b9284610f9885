"""Ctrl-C that is never lost.

Python runs a signal handler between two bytecodes of the main thread, wherever it is; when that
is a finalizer (`__del__`, a weakref callback: SQLAlchemy's, during optuna's storage calls), the
KeyboardInterrupt the default handler raises is printed as "Exception ignored in ..." and dropped,
and a tune carried on to its end after a Ctrl-C. `install` (the CLI does, once) replaces the
default handler with one that also remembers the interrupt; `check` raises a remembered one that
was swallowed, at a point where it cannot be (the start of every measured level).

The event loop keeps asyncio's own Ctrl-C handling (the main task is cancelled, then
KeyboardInterrupt is raised): `perfkit.load.eventloop.run` puts the default handler back for the
loop's lifetime.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

_pending = False


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    global _pending
    _pending = True
    signal.default_int_handler(signum, frame)


def install() -> None:
    """Remember every Ctrl-C from now on (main thread, default handler only: else a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_sigint)


def installed() -> bool:
    """Is `install`'s handler the one in place?"""
    return signal.getsignal(signal.SIGINT) is _on_sigint


def check() -> None:
    """Raise KeyboardInterrupt if a Ctrl-C came and was swallowed since the last check."""
    global _pending
    if _pending:
        _pending = False
        raise KeyboardInterrupt
