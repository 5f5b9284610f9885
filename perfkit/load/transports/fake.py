"""A fake transport on a virtual clock, for the driver's unit tests (httpx's MockTransport idea).

`FakeClock` is the driver's `Clock`: time moves only when the driver sleeps, and each step runs
the answers that fall due, in time order, at their own time. `FakePool` is a `Pool` whose slots
answer each request `service_ns(sent)` after it was sent, through the transports' one completion
path (`complete`), so the closed-loop re-send and open-loop hand-off under test are the real ones.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable

from perfkit.load.transports.base import LoopState, Timings, complete, start_closed


class FakeClock:
    """Virtual perf_counter ns. `sleep(s)` moves time on by s (at least `min_step_ns`)."""

    def __init__(self, start_ns: int = 1_000_000_000, min_step_ns: int = 20_000) -> None:
        self.t = start_ns
        self.min_step_ns = min_step_ns
        self._due: list[tuple[int, int, Callable[[], None]]] = []
        self._seq = itertools.count()

    def now(self) -> int:
        return self.t

    def at(self, t_ns: int, fn: Callable[[], None]) -> None:
        """Run `fn` when the clock reaches `t_ns`."""
        heapq.heappush(self._due, (t_ns, next(self._seq), fn))

    def advance(self, ns: int) -> None:
        end = self.t + ns
        while self._due and self._due[0][0] <= end:
            t, _, fn = heapq.heappop(self._due)
            self.t = max(self.t, t)
            fn()
        self.t = end

    async def sleep(self, seconds: float) -> None:
        self.advance(max(int(seconds * 1e9), self.min_step_ns))
        await asyncio.sleep(0)


class FakeSlot:
    """A slot whose requests are answered by the pool's clock."""

    def __init__(self, pool: FakePool) -> None:
        self.pool = pool
        self.timings = pool.timings
        self.state = pool.state
        self.closed_loop = pool.closed_loop
        self.lost = False
        self.sent = 0
        self.intended = 0

    def fire(self, intended: int = 0) -> None:
        self.intended = intended
        self.state.inflight += 1
        self.resend(self.pool.clock.t)

    def resend(self, now: int) -> None:
        self.sent = now
        pool = self.pool
        pool.in_flight += 1
        pool.sends.append(now)
        pool.max_in_flight = max(pool.max_in_flight, pool.in_flight)
        pool.clock.at(now + pool.service_ns(now), self._answer)

    def _answer(self) -> None:
        pool = self.pool
        pool.in_flight -= 1
        d = pool.clock.t
        pool.answers.append(d)
        complete(self, self.sent, self.intended, d, pool.error(d))
        if self.state.running:
            pool.in_flight_seen.append(pool.in_flight)


class FakePool:
    """A `Pool` of `FakeSlot`s on `clock`. It records what a test asserts on: every send and
    answer time, the requests in flight after each answer while the level runs, and their most."""

    def __init__(
        self,
        clock: FakeClock,
        closed_loop: bool,
        service_ns: Callable[[int], int],
        error: Callable[[int], str | None] = lambda done: None,
    ) -> None:
        self.clock = clock
        self.closed_loop = closed_loop
        self.service_ns = service_ns
        self.error = error
        self.timings = Timings()
        self.state = LoopState()
        self.slots: list[FakeSlot] = []
        self.connecting = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.sends: list[int] = []
        self.answers: list[int] = []
        self.in_flight_seen: list[int] = []

    async def open(self, n: int) -> None:
        while len(self.slots) < n:
            s = FakeSlot(self)
            self.slots.append(s)
            if not self.closed_loop:
                self.state.free.append(s)

    def start_closed(self) -> None:
        start_closed(self.state, self.slots)

    def slot_count(self) -> int:
        return len(self.slots)

    def alive(self) -> bool:
        return True

    async def fire_new(self, intended: int) -> None:
        s = FakeSlot(self)
        self.slots.append(s)
        s.fire(intended)

    async def close(self) -> None:
        self.state.free.clear()
