"""--workers K: K load-generator processes share each level; their raw windows merge exactly.

Each worker is `python -m perfkit.load.workers FD`, talking pickled messages over a socketpair
(a subprocess, not multiprocessing's spawn, so `python -m perfkit` is never re-run as a child).
The parent splits the level (concurrency N -> N/K slots each; rate R -> R/K each with phase
offsets), starts all workers on a common window grid of the system-wide monotonic clock
(perf_counter_ns) and merges window k of every worker (`merge_parallel`): `GroupWindows` is the
`WindowSource` that feeds `perfkit.load.level.measure_windows`, which decides stability and reads
the server statistics at the window boundaries. Must not import `perfkit.load.sweep`.

Count windows are run as time windows of -p length in this mode (the window grid must be shared).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from multiprocessing.connection import Connection
from time import perf_counter_ns
from typing import Any

from perfkit.errors import PerfkitError, ServerError
from perfkit.load import eventloop
from perfkit.load.driver import LevelDriver, sleep_until
from perfkit.load.level import OnRaw, OnWindow, ShouldStop, measure_windows, plan_level
from perfkit.load.session import Session
from perfkit.load.spec import InputSpec, MeasureSpec, RequestRateLoad, SweepSpec, TargetSpec
from perfkit.load.stats import RawWindow, merge_parallel
from perfkit.results import LoadMode, Measurement

logger = logging.getLogger(__name__)

_START_DELAY_NS = 200_000_000


class WorkerGroup:
    """K worker processes, started once per sweep. Context manager."""

    def __init__(self, target: TargetSpec, inputs: InputSpec, k: int) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.conns: list[Connection] = []
        try:
            for i in range(k):
                a, b = socket.socketpair()
                proc = subprocess.Popen(
                    [sys.executable, "-m", "perfkit.load.workers", str(b.fileno())],
                    pass_fds=(b.fileno(),),
                )
                b.close()
                conn = Connection(a.detach())
                conn.send(("init", target, inputs, i, k))
                self.procs.append(proc)
                self.conns.append(conn)
            for conn in self.conns:
                _expect(conn, "ready")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send(("quit",))
            conn.close()
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.conns.clear()
        self.procs.clear()

    def __enter__(self) -> WorkerGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def measure(
        self,
        spec: SweepSpec,
        session: Session,
        level: float,
        *,
        on_window: OnWindow | None = None,
        should_stop: ShouldStop | None = None,
        on_raw: OnRaw | None = None,
    ) -> Measurement:
        """One level of `spec.load` driven by the workers (see the module docstring)."""
        k = len(self.conns)
        measure = spec.measure
        closed = not isinstance(spec.load, RequestRateLoad)
        mode: LoadMode = "concurrency" if closed else "request_rate"
        shares = [float(n) for n in split(int(level), k)] if closed else [level / k] * k
        active = [i for i in range(k) if shares[i] > 0]
        conns = [self.conns[i] for i in active]
        for j, i in enumerate(active):
            conns[j].send(
                ("level", measure, spec.load, shares[i], i, len(active),
                 split(measure.warmup_request_count, len(active))[j],
                 split(measure.fixed_request_count, len(active))[j])
            )  # fmt: skip
        source = GroupWindows(conns, measure.interval_ms * 1_000_000)
        for c in conns:
            await source.recv(c, "warm")
        return await measure_windows(
            source, session, measure, mode, level,
            on_window=on_window, should_stop=should_stop, on_raw=on_raw,
        )  # fmt: skip


class GroupWindows:
    """`WindowSource` of the workers measuring one level: window k of each, merged."""

    def __init__(self, conns: list[Connection], interval_ns: int) -> None:
        self.conns = conns
        self.interval = interval_ns
        self.t0 = 0
        self.notes: tuple[str, ...] = (
            f"Measured by {len(conns)} load-generator processes (--workers).",
        )

    async def recv(self, c: Connection, kind: str) -> tuple[Any, ...]:
        return await asyncio.get_running_loop().run_in_executor(None, _expect, c, kind)

    async def run_fixed(self) -> RawWindow:
        for c in self.conns:
            c.send(("go", 0, 0))
        return merge_parallel([(await self.recv(c, "window"))[1] for c in self.conns])

    async def prepare(self) -> None:
        # The workers start their load at once and their windows at t0.
        self.t0 = perf_counter_ns() + _START_DELAY_NS
        for c in self.conns:
            c.send(("go", self.t0, self.interval))
        await sleep_until(self.t0)

    async def start(self) -> None:
        pass

    async def wait(self, index: int) -> None:
        await sleep_until(self.t0 + (index + 1) * self.interval)

    async def window(self, index: int) -> RawWindow:
        w = merge_parallel([(await self.recv(c, "window"))[1] for c in self.conns])
        end = self.t0 + (index + 1) * self.interval
        w.start_ns, w.end_ns, w.index = end - self.interval, end, index
        return w

    async def stop(self) -> None:
        loop = asyncio.get_running_loop()
        for c in self.conns:
            c.send(("stop",))
        for c in self.conns:
            await loop.run_in_executor(None, _until_stopped, c)


def _expect(conn: Connection, kind: str) -> tuple[Any, ...]:
    try:
        msg: tuple[Any, ...] = conn.recv()
    except EOFError:
        raise ServerError("a --workers process exited unexpectedly.") from None
    if msg[0] == "error":
        cls = msg[1]
        raise cls(msg[2])
    if msg[0] != kind:
        raise ServerError(f"a --workers process answered {msg[0]!r}, expected {kind!r}.")
    return msg


def _until_stopped(conn: Connection) -> None:
    """Read (and drop) windows a worker sent after the parent's decision, up to its "stopped"."""
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg[0] in ("stopped", "error"):
            return


def split(total: int, k: int) -> list[int]:
    return [total // k + (1 if i < total % k else 0) for i in range(k)]


# -- the worker process -------------------------------------------------------------------------


def _phase(it: Iterator[int], offset_ns: int) -> Iterator[int]:
    return (x + offset_ns for x in it)


async def _worker_level(conn: Connection, session: Session, msg: tuple[Any, ...]) -> None:
    _, measure, load, share, index, k, warmup, fixed = msg
    assert isinstance(measure, MeasureSpec)
    if isinstance(load, RequestRateLoad):
        load = replace(load, seed=load.seed + index)
    _, plan = plan_level(load, share, measure)
    if not plan.closed_loop and plan.schedule is not None:
        # Spread the workers' constant schedules evenly over one period.
        period = int(1e9 / max(share * k, 1e-9))
        plan = replace(plan, schedule=_phase(plan.schedule, index * period // k))
    drv = LevelDriver(
        session.new_pool(plan.closed_loop, plan.concurrency), plan, url=session.ctl.url
    )
    loop = asyncio.get_running_loop()
    try:
        await drv.open()
        if warmup:
            await drv.run_fixed(warmup)
        conn.send(("warm",))
        _, t0, interval = await loop.run_in_executor(None, conn.recv)
        if fixed:
            conn.send(("window", await drv.run_fixed(fixed)))
            return
        await drv.start()
        await sleep_until(t0)
        drv.mark_cpu()
        stopped = False
        for i in itertools.count():
            start = t0 + i * interval
            end = start + interval
            while (now := perf_counter_ns()) < end:
                await asyncio.sleep(min((end - now) / 1e9, 0.02))
                if conn.poll():
                    stopped = True
                    break
            if stopped:
                break
            conn.send(("window", drv.cut(i, start, end)))
        await drv.stop()
        conn.recv()  # the "stop"
        conn.send(("stopped",))
    finally:
        await drv.close()


def _worker(fd: int) -> None:
    # Ctrl-C reaches the whole process group: the parent handles it and stops the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    conn = Connection(fd)
    _, target, inputs, index, k = conn.recv()
    try:
        session = Session(target, inputs)
    except PerfkitError as exc:
        conn.send(("error", type(exc), str(exc)))
        return
    session.worker = (index, k)  # sequence ids: this process's share of the range
    conn.send(("ready",))
    try:
        while True:
            try:
                msg = conn.recv()
            except EOFError:
                return
            if msg[0] == "quit":
                return
            try:
                eventloop.run(_worker_level(conn, session, msg))
            except PerfkitError as exc:
                conn.send(("error", type(exc), str(exc)))
            except Exception as exc:  # the worker process boundary: report, never hang the parent
                logger.exception("load worker failed")
                conn.send(("error", ServerError, f"a --workers process failed: {exc!r}"))
    finally:
        session.close()


if __name__ == "__main__":
    _worker(int(sys.argv[1]))
