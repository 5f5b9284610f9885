"""InstancePool: a model version's idle instances, shared by the event loop and gRPC handler threads.

The scheduler coroutine takes instances on the loop (`acquire`, awaiting one when all are busy);
the gRPC direct path takes one from a handler thread (`take`, waiting on a threading.Condition)
without touching the loop. Whoever gives one back (`release`, from either side) wakes a waiting
thread, and the loop only when it is waiting.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Sequence

from perfkit_server.backends.base import Backend


class InstancePool:
    """Idle instances behind a threading.Lock; an asyncio.Event wakes the loop-side waiter."""

    def __init__(self, instances: Sequence[Backend], loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._thread_freed = threading.Condition(self._lock)
        self._thread_waiters = 0
        self._free = deque(instances)  # FIFO, as an asyncio.Queue of instances
        self._size = len(self._free)
        self._waiting = False
        self._freed = asyncio.Event()
        self.closed = False

    def take(self, wait: bool) -> Backend | None:
        """An idle instance (waiting for one if `wait`; not on the loop), or None; None once closed."""
        with self._lock:
            while not self.closed:
                if self._free:
                    return self._free.popleft()
                if not wait:
                    return None
                self._thread_waiters += 1
                try:
                    self._thread_freed.wait()
                finally:
                    self._thread_waiters -= 1
        return None

    async def acquire(self) -> Backend:
        """An idle instance, waiting for one (loop only)."""
        while True:
            with self._lock:
                if self._free:
                    return self._free.popleft()
                self._waiting = True
            self._freed.clear()
            await self._freed.wait()

    def release(self, inst: Backend) -> None:
        """Give an instance back (any thread)."""
        with self._lock:
            self._free.append(inst)
            if self._thread_waiters:
                self._thread_freed.notify()
            wake = self._waiting
            self._waiting = False
        if wake:
            self._loop.call_soon_threadsafe(self._freed.set)

    async def drain(self) -> None:
        """Close to `try_take`, then wait until every instance is idle (loop only)."""
        with self._lock:
            self.closed = True
            self._thread_freed.notify_all()
        while True:
            with self._lock:
                if len(self._free) == self._size:
                    return
                self._waiting = True
            self._freed.clear()
            await self._freed.wait()
