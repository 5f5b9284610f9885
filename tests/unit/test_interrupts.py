"""perfkit.interrupts: a Ctrl-C that lands in a finalizer is not lost, and the event loop keeps
asyncio's Ctrl-C handling (its main task cancelled, then KeyboardInterrupt)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator

import pytest

from perfkit import interrupts
from perfkit.load import eventloop


@pytest.fixture
def installed() -> Iterator[None]:
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    interrupts.install()
    assert interrupts.installed()
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class _CtrlCInFinalizer:
    def __del__(self) -> None:
        # What a Ctrl-C during a finalizer does: Python prints "Exception ignored" and drops it.
        signal.raise_signal(signal.SIGINT)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_ctrl_c_swallowed_by_a_finalizer_is_raised_at_the_next_check(installed: None) -> None:
    obj = _CtrlCInFinalizer()
    del obj  # the KeyboardInterrupt is raised inside __del__ and swallowed there
    with pytest.raises(KeyboardInterrupt):
        interrupts.check()
    interrupts.check()  # raised once: nothing pending any more


def test_the_event_loop_keeps_asyncios_ctrl_c_handling(installed: None) -> None:
    cancelled = []

    async def main() -> None:
        try:
            signal.raise_signal(signal.SIGINT)
            await asyncio.Event().wait()  # only the Ctrl-C ends this
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    with pytest.raises(KeyboardInterrupt):
        eventloop.run(main())
    assert cancelled == [True]  # asyncio's handler cancelled the task (ours stepped aside)
    assert interrupts.installed()  # and is back after the loop
    interrupts.check()  # that Ctrl-C was delivered, not swallowed: nothing pending


def test_install_keeps_a_handler_that_is_not_the_default() -> None:
    def mine(signum: int, frame: object) -> None: ...

    previous = signal.signal(signal.SIGINT, mine)
    try:
        interrupts.install()
        assert signal.getsignal(signal.SIGINT) is mine
    finally:
        signal.signal(signal.SIGINT, previous)
