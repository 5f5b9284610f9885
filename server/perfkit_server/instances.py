"""InstancePool: a model version's idle instances, taken on the event loop, given back from any thread.

The scheduler coroutine takes instances on the loop (`acquire`, awaiting one when all are busy);
the direct path takes one only when one is idle (`take`). Batches of blocking backends run on
instance threads, which give their instance back (`release`) and wake the loop only when it waits.
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
        self._free = deque(instances)  # FIFO, as an asyncio.Queue of instances
        self._size = len(self._free)
        self._waiting = False
        self._freed = asyncio.Event()
        self.closed = False

    def take(self) -> Backend | None:
        """An idle instance, or None (all busy, or the pool is closed)."""
        with self._lock:
            if self._free and not self.closed:
                return self._free.popleft()
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
            wake = self._waiting
            self._waiting = False
        if wake:
            self._loop.call_soon_threadsafe(self._freed.set)

    async def drain(self) -> None:
        """Close to `take`, then wait until every instance is idle (loop only)."""
        with self._lock:
            self.closed = True
        while True:
            with self._lock:
                if len(self._free) == self._size:
                    return
                self._waiting = True
            self._freed.clear()
            await self._freed.wait()
