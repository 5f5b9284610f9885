"""--workers K: K load-generator processes share each level; their raw windows merge exactly.

Each worker is `python -m perfkit.load.workers FD`, talking pickled messages over a socketpair
(a subprocess, not multiprocessing's spawn, so `python -m perfkit` is never re-run as a child).
The parent splits the level (concurrency N -> N/K slots each; rate R -> R/K each with phase
offsets), starts all workers on a common window grid of the system-wide monotonic clock
(perf_counter_ns), merges window k of every worker (`merge_parallel`), and decides stability;
server statistics are read by the parent at the window boundaries.

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
from typing import TYPE_CHECKING, Any

from perfkit.errors import PerfkitError, ServerError
from perfkit.load import eventloop
from perfkit.load.driver import LevelDriver, sleep_until
from perfkit.load.spec import InputSpec, MeasureSpec, RequestRateLoad, TargetSpec
from perfkit.load.stats import RawWindow, is_stable, merge, merge_parallel, window_stat
from perfkit.load.transport import Recorder
from perfkit.results import LoadMode, Measurement, WindowStat

if TYPE_CHECKING:
    from perfkit.load.spec import SweepSpec
    from perfkit.load.sweep import OnRaw, OnWindow, Session

logger = logging.getLogger(__name__)

_START_DELAY_NS = 200_000_000


class WorkerGroup:
    """K worker processes, started once per sweep."""

    def __init__(self, target: TargetSpec, inputs: InputSpec, k: int) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.conns: list[Connection] = []
        try:
            for _ in range(k):
                a, b = socket.socketpair()
                proc = subprocess.Popen(
                    [sys.executable, "-m", "perfkit.load.workers", str(b.fileno())],
                    pass_fds=(b.fileno(),),
                )
                b.close()
                conn = Connection(a.detach())
                conn.send(("init", target, inputs))
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


async def measure_parallel(
    spec: SweepSpec,
    session: Session,
    level: float,
    *,
    on_window: OnWindow | None = None,
    on_raw: OnRaw | None = None,
) -> Measurement:
    """One level driven by `spec.workers` processes (see the module docstring)."""
    from perfkit.load.sweep import UnstableLevel, build_measurement, unstable_message

    group: WorkerGroup | None = getattr(session, "worker_group", None)
    if group is None:
        group = WorkerGroup(spec.target, spec.inputs, spec.workers)
        session.worker_group = group
    loop = asyncio.get_running_loop()
    k = len(group.conns)
    measure = spec.measure
    closed = not isinstance(spec.load, RequestRateLoad)
    mode: LoadMode = "concurrency" if closed else "request_rate"
    shares = [float(n) for n in split(int(level), k)] if closed else [level / k] * k
    active = [i for i in range(k) if shares[i] > 0]
    conns = [group.conns[i] for i in active]
    for j, i in enumerate(active):
        conns[j].send(
            ("level", measure, spec.load, shares[i], i, len(active),
             split(measure.warmup_request_count, len(active))[j],
             split(measure.fixed_request_count, len(active))[j])
        )  # fmt: skip

    async def recv(c: Connection, kind: str) -> tuple[Any, ...]:
        return await loop.run_in_executor(None, _expect, c, kind)

    for c in conns:
        await recv(c, "warm")
    bs = session.batch_size
    if measure.fixed_request_count:
        before = await session.ctl.statistics_async()
        for c in conns:
            c.send(("go", 0, 0))
        wins = [(await recv(c, "window"))[1] for c in conns]
        after = await session.ctl.statistics_async()
        w = merge_parallel(wins)
        ws = replace(window_stat(w, batch_size=bs, percentile=measure.percentile), merged=True)
        if on_window:
            on_window(ws)
        m = build_measurement(
            mode=mode, level=level, batch_size=bs, merged=w, windows=[ws], duration_ns=w.duration_ns,
            stable=True, percentile=measure.percentile, server_before=before, server_after=after,
            late_threshold_us=measure.late_threshold_us,
        )  # fmt: skip
        if on_raw:
            on_raw(m, w, [w.start_ns, w.end_ns])
        return m
    interval = measure.interval_ms * 1_000_000
    t0 = perf_counter_ns() + _START_DELAY_NS
    for c in conns:
        c.send(("go", t0, interval))
    snaps = []
    await sleep_until(t0)
    snaps.append(await session.ctl.statistics_async())
    raws: list[RawWindow] = []
    stats: list[WindowStat] = []
    stable = False
    try:
        for i in range(measure.max_trials):
            end = t0 + (i + 1) * interval
            await sleep_until(end)
            snaps.append(await session.ctl.statistics_async())
            parts = [(await recv(c, "window"))[1] for c in conns]
            w = merge_parallel(parts)
            w.start_ns, w.end_ns, w.index = end - interval, end, i
            raws.append(w)
            ws = window_stat(w, batch_size=bs, percentile=measure.percentile)
            stats.append(ws)
            if on_window:
                on_window(ws)
            if is_stable(stats, pct=measure.stability_pct, windows=measure.stability_windows):
                stable = True
                break
    finally:
        for c in conns:
            c.send(("stop",))
        for c in conns:
            await loop.run_in_executor(None, _until_stopped, c)
    take = min(measure.stability_windows, len(raws))
    merged = merge(raws[-take:])
    merged.workers = len(conns)
    stats = [replace(s, merged=j >= len(stats) - take) for j, s in enumerate(stats)]
    m = build_measurement(
        mode=mode, level=level, batch_size=bs, merged=merged, windows=stats,
        duration_ns=take * interval, stable=stable, percentile=measure.percentile,
        server_before=snaps[-take - 1], server_after=snaps[-1],
        late_threshold_us=measure.late_threshold_us,
        extra_warnings=[f"Measured by {len(conns)} load-generator processes (--workers)."],
    )  # fmt: skip
    if on_raw:
        on_raw(m, merged, [r.start_ns for r in raws[-take:]] + [raws[-1].end_ns])
    if not stable:
        raise UnstableLevel(unstable_message(mode, level, measure.max_trials), m)
    return m


# -- the worker process -------------------------------------------------------------------------


def _phase(it: Iterator[int], offset_ns: int) -> Iterator[int]:
    return (x + offset_ns for x in it)


async def _worker_level(conn: Connection, session: Session, msg: tuple[Any, ...]) -> None:
    from perfkit.load.sweep import _plan

    _, measure, load, share, index, k, warmup, fixed = msg
    assert isinstance(measure, MeasureSpec)
    if isinstance(load, RequestRateLoad):
        load = replace(load, seed=load.seed + index)
    _, plan = _plan(load, share, measure)
    if not plan.closed_loop and plan.schedule is not None:
        # Spread the workers' constant schedules evenly over one period.
        period = int(1e9 / max(share * k, 1e-9))
        plan = replace(plan, schedule=_phase(plan.schedule, index * period // k))
    rec = Recorder()
    drv = LevelDriver(session.new_pool(rec, plan.closed_loop), plan, url=session.ctl.url)
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
    from perfkit.load.sweep import Session

    # Ctrl-C reaches the whole process group: the parent handles it and stops the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    conn = Connection(fd)
    _, target, inputs = conn.recv()
    try:
        session = Session(target, inputs)
    except PerfkitError as exc:
        conn.send(("error", type(exc), str(exc)))
        return
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
