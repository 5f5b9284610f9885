"""One load level: plan it (`plan_level`), run its windows until they are stable (`measure_windows`,
the one window/stability loop, fed by the in-process driver here and by the --workers group in
`perfkit.load.workers`), and assemble the `Measurement` (`build_measurement`; the server side in
`perfkit.load.breakdown`).

`measure_level` is what the tuner calls for every trial. Must not import `perfkit.load.sweep` or
`perfkit.load.workers` (they build on this module).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any, Protocol

import numpy as np

from perfkit import interrupts
from perfkit.errors import MeasurementUnstable
from perfkit.load import eventloop
from perfkit.load import schedule as sched
from perfkit.load.breakdown import breakdown
from perfkit.load.composing import ModelShape
from perfkit.load.driver import LevelDriver, LevelPlan
from perfkit.load.session import Session
from perfkit.load.spec import (
    ConcurrencyLoad,
    InputSpec,
    LoadSpec,
    MeasureSpec,
    RequestRateLoad,
    TargetSpec,
)
from perfkit.load.stats import RawWindow, is_stable, merge, summarize, window_stat
from perfkit.results import LoadMode, Measurement, WindowStat

OnWindow = Callable[[WindowStat], None]
ShouldStop = Callable[[], bool]
# Raw data of a measured level for the profile export: (measurement, merged raw window, window
# boundaries in perf_counter ns).
OnRaw = Callable[[Measurement, RawWindow, list[int]], None]

# The generator is called saturated above this share of one core per process.
SATURATED_CPU_PCT = 90.0
LATE_WARN_PCT = 1.0


def plan_level(
    load: LoadMode | LoadSpec, level: float, measure: MeasureSpec
) -> tuple[LoadMode, LevelPlan]:
    """The driver's plan for `level` of `load` (open loop: its schedule), and the load mode."""
    if load == "concurrency" or isinstance(load, ConcurrencyLoad):
        n = int(level)
        if n < 1:
            raise ValueError(f"concurrency {level} must be >= 1")
        return "concurrency", LevelPlan(closed_loop=True, concurrency=n)
    rl = load if isinstance(load, RequestRateLoad) else RequestRateLoad(rates=(level,))
    if rl.fixed_schedule_us:  # --fixed-schedule: the trace's offsets, data entry k with send k
        return "request_rate", LevelPlan(
            closed_loop=False,
            schedule=_replay(rl.fixed_schedule_us),
            max_in_flight=rl.max_in_flight,
            late_threshold_ns=measure.late_threshold_us * 1000,
            replay=True,
        )
    intervals = sched.read_intervals(rl.intervals_file) if rl.intervals_file else None
    return "request_rate", LevelPlan(
        closed_loop=False,
        schedule=sched.make(level, rl.distribution, intervals_us=intervals, seed=rl.seed),
        max_in_flight=rl.max_in_flight,
        late_threshold_ns=measure.late_threshold_us * 1000,
    )


def _replay(offsets_us: Sequence[int]) -> Iterator[int]:
    """The fixed schedule's offsets in ns; past the end (never asked for: the level sends exactly
    one request per offset) the last one again."""
    for us in offsets_us:
        yield us * 1000
    while True:
        yield offsets_us[-1] * 1000


def build_measurement(
    *,
    mode: LoadMode,
    level: float,
    batch_size: int,
    merged: RawWindow,
    windows: Sequence[WindowStat],
    duration_ns: int,
    stable: bool,
    percentile: float | None,
    server_before: dict[str, Any] | None,
    server_after: dict[str, Any] | None,
    late_threshold_us: int = 1000,
    extra_warnings: Sequence[str] = (),
    shape: ModelShape | None = None,
) -> Measurement:
    """Assemble a Measurement from the merged raw windows (`shape`: the model's kind, for its
    sequence count, response count and cache figures)."""
    shape = shape or ModelShape()
    lat = merged.latency_ns()
    n = int(lat.size)
    extra = [percentile] if percentile is not None else []
    latency = summarize(lat, extra)
    dur_s = max(duration_ns, 1) / 1e9
    send_us = merged.send_time_ns / max(n, 1) / 1000.0
    recv_us = merged.recv_time_ns / max(n, 1) / 1000.0
    warnings = list(extra_warnings)
    corrected = None
    send_rate = None
    late = 0
    lag_p99 = 0.0
    saturated = False
    if mode == "request_rate":
        if merged.intended_ns.size:
            corrected = summarize(merged.done_ns - merged.intended_ns, extra)
            lag = np.sort(merged.sent_ns - merged.intended_ns)
            idx = int(0.99 * (lag.size - 1) + 0.5)
            lag_p99 = float(lag[idx]) / 1000.0
        late = merged.late_count
        send_rate = merged.scheduled_count / dur_s
        sends = max(merged.scheduled_count, 1)
        late_pct = 100.0 * late / sends
        if late_pct > LATE_WARN_PCT:
            warnings.append(
                f"perfkit was not able to keep up with the desired request rate. {late_pct:.2f}% of "
                f"the requests were sent more than {late_threshold_us} usec late"
                + (
                    f" ({merged.dropped_count} waited for a free slot: --max-in-flight reached)"
                    if merged.dropped_count
                    else ""
                )
                + "."
            )
        # Late because the generator lagged (not because sends waited for the in-flight cap).
        if (
            late_pct > 10.0 or lag_p99 > 10 * late_threshold_us
        ) and merged.dropped_count < late / 2:
            saturated = True
    cpu_pct = 100.0 * merged.cpu_s / dur_s / max(merged.workers, 1)
    cpu_per_req = merged.cpu_s * 1e6 / n if n else 0.0
    # Closed loop: a generator near one full core is the bottleneck. Open loop: it is saturated
    # when its sends fall behind (above); its CPU includes the spin that times sends precisely.
    if mode == "concurrency" and cpu_pct >= SATURATED_CPU_PCT:
        saturated = True
        warnings.append(
            f"The load generator used {cpu_pct:.0f}% of a CPU core per process: it is likely the "
            "bottleneck and the throughput is a lower bound. Use --workers N to add processes."
        )
    elif mode == "request_rate" and saturated and cpu_pct >= SATURATED_CPU_PCT:
        warnings.append(
            f"The load generator used {cpu_pct:.0f}% of a CPU core per process and fell behind "
            "its schedule. Use --workers N to add processes."
        )
    if merged.error_count:
        warnings.append(f"{merged.error_count} requests failed during the measured windows.")
    client_wait = max(0.0, latency.avg_us - send_us - recv_us)
    server = breakdown(
        server_before, server_after, client_wait_us=client_wait, cache_enabled=shape.cache_enabled
    )
    if server is not None and server.avg_request_us > client_wait > 0:
        warnings.append(
            "Server average accounted time was larger than client average wait time due to small "
            "sample size. Increase the measurement interval with -p."
        )
    return Measurement(
        mode=mode,
        level=float(level),
        batch_size=batch_size,
        stable=stable,
        request_count=n,
        error_count=merged.error_count,
        duration_ns=int(duration_ns),
        throughput_infer_per_s=n * batch_size / dur_s,
        latency=latency,
        corrected_latency=corrected,
        send_rate_rps=send_rate,
        late_send_count=late,
        send_lag_p99_us=lag_p99,
        client_send_us=send_us,
        client_recv_us=recv_us,
        server=server,
        windows=tuple(windows),
        client_cpu_pct=cpu_pct,
        client_cpu_us_per_request=cpu_per_req,
        generator_saturated=saturated,
        warnings=tuple(warnings),
        sequence_count=merged.sequence_count if shape.sequence else None,
        sequences_per_s=merged.sequence_count / dur_s if shape.sequence else 0.0,
        response_count=merged.response_count if shape.decoupled else None,
        response_throughput_per_s=merged.response_count / dur_s if shape.decoupled else 0.0,
    )


def unstable_message(mode: LoadMode, level: float, max_trials: int) -> str:
    what = f"concurrency {int(level)}" if mode == "concurrency" else f"request rate {level:g}"
    return (
        f"Failed to obtain stable measurement within {max_trials} measurement windows for {what}. "
        "Please try to increase the --measurement-interval."
    )


class UnstableLevel(MeasurementUnstable):
    """MeasurementUnstable that carries the (unstable) measurement of the last windows."""

    def __init__(self, message: str, measurement: Measurement) -> None:
        super().__init__(message)
        self.measurement = measurement


class MeasuredServer(Protocol):
    """What the window loop asks of the server under load (a `Session`, or a test's fake)."""

    @property
    def batch_size(self) -> int: ...

    async def statistics(self) -> dict[str, Any] | None:
        """Server-side statistics now (None when the server keeps none)."""

    def check_answers(self, window: RawWindow) -> None:
        """Raise when every request of `window` failed (with the server's own error)."""


class WindowSource(Protocol):
    """Where a level's windows come from: the in-process driver (`DriverWindows`) or the --workers
    processes (`perfkit.load.workers.GroupWindows`). The load is already warm."""

    # Warnings every measurement from this source carries.
    notes: tuple[str, ...]

    async def run_fixed(self) -> RawWindow:
        """The fixed request count, sent and answered, as one window."""

    async def prepare(self) -> None:
        """Get to where window 0 can start; the server statistics are read after it, before
        `start` (the workers already run their load then; the in-process driver does not)."""

    async def start(self) -> None:
        """Window 0 starts (the in-process driver starts its load now)."""

    async def wait(self, index: int) -> None:
        """Return when window `index` ends (the server statistics are read then)."""

    async def window(self, index: int) -> RawWindow:
        """Window `index`, after `wait(index)`: the requests answered within it."""

    async def stop(self) -> None:
        """Stop the load and let the requests in flight finish."""


class DriverWindows:
    """`WindowSource` of one in-process `LevelDriver`: time windows or count windows."""

    notes: tuple[str, ...] = ()

    def __init__(self, drv: LevelDriver, measure: MeasureSpec) -> None:
        self.drv = drv
        self.measure = measure
        self._start = 0
        self._last: RawWindow | None = None

    async def run_fixed(self) -> RawWindow:
        return await self.drv.run_fixed(self.measure.fixed_request_count)

    async def prepare(self) -> None:
        pass

    async def start(self) -> None:
        self._start = await self.drv.start()

    async def wait(self, index: int) -> None:
        m = self.measure
        if m.mode == "time_windows":
            w = await self.drv.window_time(index, self._start, m.interval_ms * 1_000_000)
        else:
            w = await self.drv.window_count(
                index, self._start, m.request_count_per_window, m.min_window_ms * 1_000_000
            )
        self._start = w.end_ns
        self._last = w

    async def window(self, index: int) -> RawWindow:
        assert self._last is not None
        return self._last

    async def stop(self) -> None:
        await self.drv.stop()


async def measure_windows(
    source: WindowSource,
    server: MeasuredServer,
    measure: MeasureSpec,
    mode: LoadMode,
    level: float,
    *,
    on_window: OnWindow | None = None,
    should_stop: ShouldStop | None = None,
    on_raw: OnRaw | None = None,
) -> Measurement:
    """The one window/stability loop: windows from `source` until the last
    `measure.stability_windows` are stable (or the fixed request count, as one window).

    Raises:
        UnstableLevel: not stable within `measure.max_trials` windows (and not stopped).
    """
    bs = server.batch_size

    def measured(
        merged: RawWindow,
        windows: list[WindowStat],
        raws: Sequence[RawWindow],
        stable: bool,
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
        warn: Sequence[str] = (),
    ) -> Measurement:
        m = build_measurement(
            mode=mode, level=level, batch_size=bs, merged=merged, windows=windows,
            duration_ns=sum(r.duration_ns for r in raws), stable=stable,
            percentile=measure.percentile, server_before=before, server_after=after,
            late_threshold_us=measure.late_threshold_us, extra_warnings=[*source.notes, *warn],
            # A Session knows the model's kind (`perfkit.load.composing.ModelShape`); a test's
            # stand-in need not.
            shape=getattr(server, "shape", None),
        )  # fmt: skip
        if on_raw:
            on_raw(m, merged, [r.start_ns for r in raws] + [raws[-1].end_ns])
        return m

    if measure.fixed_request_count:
        before = await server.statistics()
        w = await source.run_fixed()
        after = await server.statistics()
        ws = replace(window_stat(w, batch_size=bs, percentile=measure.percentile), merged=True)
        if on_window:
            on_window(ws)
        server.check_answers(w)
        return measured(w, [ws], [w], True, before, after)

    k = measure.stability_windows
    raws: list[RawWindow] = []
    stats: list[WindowStat] = []
    await source.prepare()
    snaps: list[dict[str, Any] | None] = [await server.statistics()]
    await source.start()
    stable = False
    stopped = False
    try:
        for i in range(measure.max_trials):
            await source.wait(i)
            snaps.append(await server.statistics())
            w = await source.window(i)
            raws.append(w)
            server.check_answers(w)
            ws = window_stat(w, batch_size=bs, percentile=measure.percentile)
            stats.append(ws)
            if on_window:
                on_window(ws)
            if is_stable(stats, pct=measure.stability_pct, windows=k):
                stable = True
                break
            if should_stop is not None and should_stop():
                stopped = True
                break
    finally:
        await source.stop()
    take = min(k, len(raws))
    stats = [replace(s, merged=j >= len(stats) - take) for j, s in enumerate(stats)]
    warn = [] if stable or not stopped else ["Stopped before the level was stable."]
    m = measured(
        merge(raws[-take:]), stats, raws[-take:], stable, snaps[-take - 1], snaps[-1], warn
    )
    if not stable and not stopped:
        raise UnstableLevel(unstable_message(mode, level, measure.max_trials), m)
    return m


async def measure_async(
    session: Session,
    measure: MeasureSpec,
    load: LoadMode | LoadSpec,
    level: float,
    *,
    on_window: OnWindow | None = None,
    should_stop: ShouldStop | None = None,
    on_raw: OnRaw | None = None,
) -> Measurement:
    """`measure_level` on a running loop with an open `Session`, in this process."""
    mode, plan = plan_level(load, level, measure)
    drv = LevelDriver(
        session.new_pool(plan.closed_loop, plan.concurrency), plan, url=session.ctl.url
    )
    try:
        await drv.open()
        if measure.warmup_request_count:
            await drv.run_fixed(measure.warmup_request_count)
        return await measure_windows(
            DriverWindows(drv, measure), session, measure, mode, level,
            on_window=on_window, should_stop=should_stop, on_raw=on_raw,
        )  # fmt: skip
    finally:
        await drv.close()


def measure_level(
    target: TargetSpec,
    inputs: InputSpec,
    measure: MeasureSpec,
    mode: LoadMode | LoadSpec,
    level: float,
    *,
    on_window: OnWindow | None = None,
    should_stop: ShouldStop | None = None,
) -> Measurement:
    """Measure one load level: warm-up, then windows until stable (or the fixed request count).

    Args:
        mode: "concurrency" / "request_rate" (constant distribution), or a `ConcurrencyLoad` /
            `RequestRateLoad` whose distribution and intervals file are used (its levels are ignored).
        level: concurrency, or request rate in requests/s.
        on_window: called after every window; it may raise (e.g. optuna.TrialPruned) to abandon the
            level: the exception propagates after the connections are closed.
        should_stop: polled between windows; True ends the level early with `stable=False`.

    Raises:
        MeasurementUnstable: no stable measurement within `measure.max_trials` windows (exit 2);
            its `measurement` attribute holds the last windows merged, with stable=False.
        ModelError / ConfigError: the model or inputs do not fit. ServerUnavailable / ServerError.
    """
    # A Ctrl-C that a finalizer swallowed since the last level ends the tune here.
    interrupts.check()
    with Session(target, inputs) as session:
        return eventloop.run(
            measure_async(
                session, measure, mode, level, on_window=on_window, should_stop=should_stop
            )
        )
