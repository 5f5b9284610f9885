"""The core loop of one load level: keeps the load running (closed or open loop) and cuts it into
windows of raw timings (`RawWindow`). Knows nothing of stability; `perfkit.load.level` decides.

A window holds the requests answered within it, start exclusive, end inclusive (perf_analyzer's
rule: "only counting requests that end within the time interval"), so consecutive windows are
disjoint and every answer counts in exactly one. Counting by send time instead would drop every
request that straddles a boundary and under-report throughput whenever latency is a sizeable
share of the window (resnet50 on CPU: seconds of latency in a few-second window).
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Iterator
from dataclasses import dataclass
from time import perf_counter_ns

import numpy as np

from perfkit.errors import ServerError, ServerUnavailable
from perfkit.load.stats import RawWindow
from perfkit.load.transports.base import SYSTEM_CLOCK, Clock, Pool

logger = logging.getLogger(__name__)

# Sleep until this long before a scheduled send, then yield to the loop until it is due: the
# selector's timeout has millisecond resolution, so a plain sleep would send up to 1 ms late.
_SPIN_NS = 1_050_000
_DRAIN_TIMEOUT_S = 60.0
_POLL_S = 0.002
# Ending the sequences in progress after a level: a bounded wait (the server may be gone).
_END_SEQUENCES_TIMEOUT_S = 10.0


def cpu_seconds() -> float:
    """User + system CPU of this process (all threads), seconds."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def sleep_until(t_ns: int) -> None:
    """Sleep until perf_counter_ns() >= t_ns (the selector may wake early by rounding)."""
    now = perf_counter_ns()
    while now < t_ns:
        await asyncio.sleep((t_ns - now) / 1e9)
        now = perf_counter_ns()


@dataclass(frozen=True, slots=True, kw_only=True)
class LevelPlan:
    closed_loop: bool
    concurrency: int = 0
    # Open loop: an iterator of intended offsets (ns from the level start) and the in-flight cap.
    schedule: Iterator[int] | None = None
    max_in_flight: int = 2048
    late_threshold_ns: int = 1_000_000
    # --fixed-schedule: send k carries input set k (the trace's entry k), from the first send.
    replay: bool = False


class LevelDriver:
    """Runs one level on the running asyncio loop. Use `open`, then `run_fixed` or
    `start` + `window_*`... + `stop`, then `close`.

    `clock` gives the time and the sleeps (perf_counter_ns and asyncio.sleep unless a test passes
    `transports.fake.FakeClock`); the pool's transports take their own timestamps.
    """

    def __init__(self, pool: Pool, plan: LevelPlan, *, url: str, clock: Clock = SYSTEM_CLOCK):
        self.pool = pool
        self.timings = pool.timings
        self.state = pool.state
        self.plan = plan
        self.url = url
        self._now = clock.now
        self._sleep = clock.sleep
        self.cursor = 0
        self.err_cursor = 0
        self.end_cursor = 0
        self.sched_task: asyncio.Task[None] | None = None
        # Open loop: intended times of sends that had to wait for the in-flight cap.
        self.dropped: list[int] = []
        self.sched_sent = 0
        self.send_limit = 0
        self._cpu = cpu_seconds()
        self._send_ns = 0
        self._recv_ns = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        n = self.plan.concurrency if self.plan.closed_loop else min(8, self.plan.max_in_flight)
        try:
            await self.pool.open(n)
        except OSError as exc:
            raise ServerUnavailable(f"Cannot connect to {self.url}: {exc}.") from exc

    # -- load ---------------------------------------------------------------------------------

    def _start_load(self, limit: int) -> None:
        st = self.state
        st.running = True
        if self.plan.closed_loop:
            st.left = limit if limit > 0 else 1 << 62
            self.pool.start_closed()
        else:
            self.send_limit = limit
            self.sched_sent = 0
            if self.plan.replay:
                st.seq = -1  # the transports advance it before each send
            self.sched_task = asyncio.get_running_loop().create_task(self._schedule())

    async def _schedule(self) -> None:
        assert self.plan.schedule is not None
        st, pool, free = self.state, self.pool, self.state.free
        clock, sleep = self._now, self._sleep
        loop = asyncio.get_running_loop()
        it = self.plan.schedule
        t0 = clock() + 1_000_000
        cap = self.plan.max_in_flight
        burst = 0
        base = -1
        while st.running and (self.send_limit == 0 or self.sched_sent < self.send_limit):
            off = next(it)
            if base < 0:  # a schedule resumed after warm-up starts from its next offset
                base = off
            when = t0 + off - base
            now = clock()
            if when - now > _SPIN_NS:
                await sleep((when - now - _SPIN_NS) / 1e9)
                now = clock()
            while now < when and st.running:
                await sleep(0)
                now = clock()
            if not st.running:
                break
            self.sched_sent += 1
            if st.feed is not None and not st.feed.ready():
                # --serial-sequences: every sequence has a request in flight; the send waits
                # (late) for the first answer, as a send over the in-flight cap does.
                st.waiting.append(when)
                self.dropped.append(when)
            elif free and st.inflight < cap:
                free.pop().fire(when)
            elif st.inflight + pool.connecting < cap:
                task = loop.create_task(pool.fire_new(when))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            else:
                st.waiting.append(when)
                self.dropped.append(when)
            burst += 1
            if burst >= 16:  # behind schedule: still let responses in
                burst = 0
                await sleep(0)

    async def _drain(self) -> None:
        st = self.state
        deadline = self._now() + int(_DRAIN_TIMEOUT_S * 1e9)
        while True:
            if self.plan.closed_loop:
                if st.idle >= self.pool.slot_count() or st.dead >= self.pool.slot_count():
                    return
            elif (
                st.inflight <= 0
                and self.pool.connecting == 0
                and (self.sched_task is None or self.sched_task.done())
            ):
                return
            if self._now() > deadline:
                raise ServerError(
                    f"{st.inflight} requests to {self.url} did not complete within {_DRAIN_TIMEOUT_S:g} s."
                )
            await self._sleep(_POLL_S)

    async def run_fixed(self, n: int, index: int = 0) -> RawWindow:
        """Send exactly n requests, wait for all answers, and return them as one window."""
        self.mark()
        start = self._now()
        self._start_load(n)
        if self.sched_task is not None:
            await self.sched_task
        await self._drain()
        self.state.running = False
        self._check_alive()
        return self._cut(index, start, self._now(), everything=True)

    async def start(self) -> int:
        """Start continuous load; returns the start time of the first window."""
        self.mark()
        self._start_load(0)
        return self._now()

    def mark(self) -> None:
        """Forget everything recorded so far (warm-up): windows start from here."""
        tm = self.timings
        self.cursor = len(tm.done)
        self.err_cursor = len(tm.err_done)
        self.end_cursor = len(tm.seq_ends)
        self._cpu = cpu_seconds()
        self._send_ns, self._recv_ns = tm.send_ns, tm.recv_ns
        self.dropped.clear()

    def mark_cpu(self) -> None:
        """Restart the CPU accounting of the next window from now."""
        self._cpu = cpu_seconds()

    def cut(self, index: int, start: int, end: int) -> RawWindow:
        """The window [start, end] from what was recorded so far (see `_cut`)."""
        return self._cut(index, start, end)

    async def window_time(self, index: int, start: int, duration_ns: int) -> RawWindow:
        end = start + duration_ns
        while True:
            now = self._now()
            if now >= end:
                break
            await self._sleep(min((end - now) / 1e9, 0.05))
            self._check_alive()
        return self._cut(index, start, self._now())

    async def window_count(self, index: int, start: int, count: int, min_ns: int) -> RawWindow:
        done = self.timings.done
        base = len(done)
        while True:
            await self._sleep(_POLL_S * 2)
            self._check_alive()
            if len(done) - base >= count and self._now() - start >= min_ns:
                break
        return self._cut(index, start, self._now())

    def _check_alive(self) -> None:
        if self.state.dead and not self.pool.alive():
            msgs = self.timings.err_msgs
            raise ServerUnavailable(
                f"The server at {self.url} closed every connection during the measurement"
                + (f" (last error: {msgs[-1]})" if msgs else "")
                + "."
            )

    async def stop(self) -> None:
        self.state.running = False
        self.state.waiting.clear()
        if self.sched_task is not None:
            await self.sched_task
        try:
            await self._drain()
        except ServerError:
            logger.warning("in-flight requests did not finish; closing connections")

    async def end_sequences(self) -> None:
        """Sequence models: end every sequence in progress with one more request (not measured),
        so the server frees its sequence slots, as perf_analyzer does at the end of a level."""
        st = self.state
        feed = st.feed
        if feed is None or st.inflight > 0 or not self.pool.alive():
            return
        n = feed.close_all()
        if n:
            async with asyncio.timeout(_END_SEQUENCES_TIMEOUT_S):
                await self.run_fixed(n)

    async def close(self) -> None:
        self.state.running = False
        if self.sched_task is not None and not self.sched_task.done():
            self.sched_task.cancel()
        try:
            await self.end_sequences()
        except (ServerError, OSError, TimeoutError) as exc:
            logger.warning("could not end the sequences in progress: %s", exc)
        await self.pool.close()

    # -- windows ------------------------------------------------------------------------------

    def _cut(self, index: int, start: int, end: int, *, everything: bool = False) -> RawWindow:
        tm = self.timings
        n = len(tm.done)
        lo = max(0, self.cursor - 4096) if not everything else self.cursor
        sent = np.array(tm.sent[lo:n], dtype=np.int64)
        done = np.array(tm.done[lo:n], dtype=np.int64)
        intended = (
            np.array(tm.intended[lo:n], dtype=np.int64)
            if not self.plan.closed_loop
            else np.empty(0, np.int64)
        )
        responses = np.array(tm.responses[lo:n], dtype=np.int64)
        seq_ids = np.array(tm.seq_ids[lo:n], dtype=np.int64)
        times = tm.response_times[lo:n]
        ne_ = len(tm.seq_ends)
        lo_e = max(0, self.end_cursor - 4096) if not everything else self.end_cursor
        ends = np.array(tm.seq_ends[lo_e:ne_], dtype=np.int64)
        self.end_cursor = ne_
        if not everything:
            mask = (done > start) & (done <= end)
            sent, done = sent[mask], done[mask]
            if intended.size:
                intended = intended[mask]
            if responses.size:
                responses = responses[mask]
            if seq_ids.size:
                seq_ids = seq_ids[mask]
            if times:
                times = [times[i] for i in np.flatnonzero(mask).tolist()]
            ends = ends[(ends > start) & (ends <= end)]
        self.cursor = n
        ne = len(tm.err_done)
        errs = np.array(tm.err_done[self.err_cursor : ne], dtype=np.int64)
        self.err_cursor = ne
        cpu = cpu_seconds()
        late = 0
        if intended.size:
            late = int(np.count_nonzero(sent - intended > self.plan.late_threshold_ns))
        dropped = sum(1 for d in self.dropped if start <= d <= end) if self.dropped else 0
        w = RawWindow(
            index=index,
            start_ns=start,
            end_ns=end,
            sent_ns=sent,
            done_ns=done,
            intended_ns=intended,
            error_count=int(errs.size) if everything else int(np.count_nonzero(errs <= end)),
            send_time_ns=tm.send_ns - self._send_ns,
            recv_time_ns=tm.recv_ns - self._recv_ns,
            scheduled_count=int(done.size) + int(errs.size),
            late_count=late,
            dropped_count=dropped,
            cpu_s=cpu - self._cpu,
            sequence_count=int(ends.size),
            response_count=int(responses.sum()) if responses.size else int(done.size),
            sequence_ids=seq_ids,
            response_times=times,
        )
        self._cpu = cpu
        self._send_ns, self._recv_ns = tm.send_ns, tm.recv_ns
        return w
