"""The engine's public entry points: measure one load level, or sweep all levels of a `SweepSpec`.

`measure_level` is what the tuner calls for every trial; `run_sweep` is what `perfkit run` calls.
Both are synchronous (they run their own asyncio loop) and return `perfkit.results` values.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from perfkit import __version__
from perfkit.errors import MeasurementUnstable, PerfkitError, ServerError, ServerUnavailable
from perfkit.load import eventloop
from perfkit.load import schedule as sched
from perfkit.load.client import ControlClient, grpc_request_bytes, http_request_bytes
from perfkit.load.driver import LevelDriver, LevelPlan, Pool
from perfkit.load.h2 import H2Pool
from perfkit.load.inputs import PreparedInputs, prepare
from perfkit.load.spec import (
    ConcurrencyLoad,
    InputSpec,
    LoadSpec,
    MeasureSpec,
    RequestRateLoad,
    SweepSpec,
    TargetSpec,
)
from perfkit.load.stats import RawWindow, is_stable, merge, summarize, window_stat
from perfkit.load.transport import GrpcPool, HttpPool, Recorder
from perfkit.machine import machine_info
from perfkit.results import (
    LoadMode,
    Measurement,
    RunResult,
    ServerBreakdown,
    ServerInfo,
    WindowStat,
)

logger = logging.getLogger(__name__)

OnWindow = Callable[[WindowStat], None]
OnLevel = Callable[[Measurement], None]
ShouldStop = Callable[[], bool]
# Raw data of a measured level for the profile export: (measurement, merged raw window, window
# boundaries in perf_counter ns).
OnRaw = Callable[[Measurement, RawWindow, list[int]], None]

# The generator is called saturated above this share of one core per process.
SATURATED_CPU_PCT = 90.0
LATE_WARN_PCT = 1.0


class Session:
    """One target and model with its inputs prepared and requests encoded. Context manager."""

    def __init__(self, target: TargetSpec, inputs: InputSpec) -> None:
        self.target = target
        self.inputs_spec = inputs
        self.ctl = ControlClient(target)
        self._shm: list[tuple[str, Any]] = []
        # --workers processes, started on first use by `workers.measure_parallel`.
        self.worker_group: Any = None
        try:
            self.ctl.wait_live()
            self.server_md = self.ctl.server_metadata()
            self.metadata = self.ctl.model_metadata()
            self.config = self.ctl.model_config()
            self.prepared: PreparedInputs = prepare(self.metadata, self.config, inputs)
            shm = self._setup_shm() if inputs.shared_memory == "system" else {}
            self.shm = shm
            if target.protocol == "http":
                self.reqs = [
                    http_request_bytes(target, s, self.prepared.outputs, shm=shm)
                    for s in (self.prepared.sets[:1] if shm else self.prepared.sets)
                ]
            else:
                self.reqs = [
                    grpc_request_bytes(target, s, shm=shm)
                    for s in (self.prepared.sets[:1] if shm else self.prepared.sets)
                ]
        except BaseException:
            self.close()
            raise
        self.stats_supported = self.ctl.statistics() is not None
        versions = [str(v) for v in self.metadata.get("versions", [])]
        self.model_version = target.model_version or (
            max(versions, key=lambda v: int(v) if v.isdigit() else -1) if versions else ""
        )

    def _setup_shm(self) -> dict[str, tuple[str, int]]:
        import tritonclient.utils.shared_memory as shmlib

        out: dict[str, tuple[str, int]] = {}
        tag = f"perfkit_{os.getpid()}_{id(self) & 0xFFFF:x}"
        for name, arr in self.prepared.sets[0].items():
            region = f"{tag}_{name}"
            size = max(1, int(arr.nbytes))
            handle = shmlib.create_shared_memory_region(region, f"/{region}", size)
            self._shm.append((region, handle))
            shmlib.set_shared_memory_region(handle, [arr])
            self.ctl.register_system_shm(region, f"/{region}", size)
            out[name] = (region, size)
        return out

    def close(self) -> None:
        if self.worker_group is not None:
            self.worker_group.close()
            self.worker_group = None
        if self._shm:
            import tritonclient.utils.shared_memory as shmlib

            for region, handle in self._shm:
                self.ctl.unregister_system_shm(region)
                with contextlib.suppress(Exception):  # best-effort clean-up
                    shmlib.destroy_shared_memory_region(handle)
            self._shm.clear()
        self.ctl.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def batch_size(self) -> int:
        return self.inputs_spec.batch_size

    def new_pool(self, rec: Recorder, closed_loop: bool) -> Pool:
        host, port = self.target.host_port
        if self.target.protocol == "http":
            return HttpPool(host, port, rec, self.reqs, closed_loop)
        if self.target.grpc_client == "grpcio":
            return GrpcPool(f"{host}:{port}", rec, self.reqs, closed_loop)
        return H2Pool(host, port, rec, self.reqs, closed_loop)

    def server_info(self, embedded: bool = False) -> ServerInfo:
        md = self.server_md
        name = str(md.get("name", "unknown"))
        return ServerInfo(
            url=self.ctl.url,
            protocol=self.target.protocol,
            kind=name,
            version=str(md.get("version", "")),
            extensions=tuple(str(e) for e in md.get("extensions", [])),
            embedded=embedded,
        )


def _plan(
    load: LoadMode | LoadSpec, level: float, measure: MeasureSpec
) -> tuple[LoadMode, LevelPlan]:
    if load == "concurrency" or isinstance(load, ConcurrencyLoad):
        n = int(level)
        if n < 1:
            raise ValueError(f"concurrency {level} must be >= 1")
        return "concurrency", LevelPlan(closed_loop=True, concurrency=n)
    rl = load if isinstance(load, RequestRateLoad) else RequestRateLoad(rates=(level,))
    intervals = sched.read_intervals(rl.intervals_file) if rl.intervals_file else None
    return "request_rate", LevelPlan(
        closed_loop=False,
        schedule=sched.make(level, rl.distribution, intervals_us=intervals, seed=rl.seed),
        max_in_flight=rl.max_in_flight,
        late_threshold_ns=measure.late_threshold_us * 1000,
    )


def breakdown(
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    *,
    client_wait_us: float,
) -> ServerBreakdown | None:
    """Server-side averages from two statistics snapshots (perf_analyzer's breakdown)."""
    if before is None or after is None:
        return None

    def d(key: str) -> int:
        return int(after[key]) - int(before[key])

    def avg(key: str) -> float:
        n = d(f"{key}_count")
        return d(f"{key}_ns") / n / 1000.0 if n > 0 else 0.0

    request = avg("success")
    queue, cin, cinf, cout = (
        avg("queue"),
        avg("compute_input"),
        avg("compute_infer"),
        avg("compute_output"),
    )
    batches = {
        int(k): int(v) - int(before["batch"].get(k, 0))
        for k, v in after["batch"].items()
        if int(v) - int(before["batch"].get(k, 0)) > 0
    }
    return ServerBreakdown(
        inference_count=d("inference_count"),
        execution_count=d("execution_count"),
        success_count=d("success_count"),
        failure_count=d("fail_count"),
        avg_request_us=request,
        queue_us=queue,
        compute_input_us=cin,
        compute_infer_us=cinf,
        compute_output_us=cout,
        overhead_us=max(0.0, request - queue - cin - cinf - cout),
        network_server_send_recv_us=max(0.0, client_wait_us - (queue + cin + cinf + cout)),
        batch_executions=batches,
    )


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
) -> Measurement:
    """Assemble a Measurement from the merged raw windows."""
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
    server = breakdown(server_before, server_after, client_wait_us=client_wait)
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


async def _stats(session: Session) -> dict[str, Any] | None:
    if not session.stats_supported:
        return None
    return await session.ctl.statistics_async()


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
    """`measure_level` on a running loop with an open `Session`."""
    mode, plan = _plan(load, level, measure)
    rec = Recorder()
    pool = session.new_pool(rec, plan.closed_loop)
    drv = LevelDriver(pool, plan, url=session.ctl.url)
    try:
        await drv.open()
        if measure.warmup_request_count:
            await drv.run_fixed(measure.warmup_request_count)
        if measure.fixed_request_count:
            before = await _stats(session)
            w = await drv.run_fixed(measure.fixed_request_count)
            after = await _stats(session)
            ws = window_stat(w, batch_size=session.batch_size, percentile=measure.percentile)
            ws = replace(ws, merged=True)
            if on_window:
                on_window(ws)
            _fail_if_all_errors(session, w)
            m = build_measurement(
                mode=mode, level=level, batch_size=session.batch_size, merged=w, windows=[ws],
                duration_ns=w.duration_ns, stable=True, percentile=measure.percentile,
                server_before=before, server_after=after, late_threshold_us=measure.late_threshold_us,
            )  # fmt: skip
            if on_raw:
                on_raw(m, w, [w.start_ns, w.end_ns])
            return m
        return await _windows(session, drv, measure, mode, level, on_window, should_stop, on_raw)
    finally:
        await drv.close()


def _fail_if_all_errors(session: Session, w: RawWindow) -> None:
    if w.error_count and w.count == 0:
        msg = session.ctl.infer_error(session.prepared.sets[0], session.shm)
        raise ServerError(
            f"Every request to model '{session.target.model}' at {session.ctl.url} failed: {msg}"
        )


async def _windows(
    session: Session,
    drv: LevelDriver,
    measure: MeasureSpec,
    mode: LoadMode,
    level: float,
    on_window: OnWindow | None,
    should_stop: ShouldStop | None,
    on_raw: OnRaw | None,
) -> Measurement:
    k = measure.stability_windows
    raws: list[RawWindow] = []
    stats: list[WindowStat] = []
    snaps: list[dict[str, Any] | None] = [await _stats(session)]
    start = await drv.start()
    stable = False
    stopped = False
    try:
        for i in range(measure.max_trials):
            if measure.mode == "time_windows":
                w = await drv.window_time(i, start, measure.interval_ms * 1_000_000)
            else:
                w = await drv.window_count(
                    i, start, measure.request_count_per_window, measure.min_window_ms * 1_000_000
                )
            start = w.end_ns
            snaps.append(await _stats(session))
            raws.append(w)
            _fail_if_all_errors(session, w)
            ws = window_stat(w, batch_size=session.batch_size, percentile=measure.percentile)
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
        await drv.stop()
    take = min(k, len(raws))
    merged = merge(raws[-take:])
    stats = [replace(s, merged=j >= len(stats) - take) for j, s in enumerate(stats)]
    warn = [] if stable or not stopped else ["Stopped before the level was stable."]
    m = build_measurement(
        mode=mode, level=level, batch_size=session.batch_size, merged=merged, windows=stats,
        duration_ns=sum(r.duration_ns for r in raws[-take:]), stable=stable,
        percentile=measure.percentile, server_before=snaps[-take - 1], server_after=snaps[-1],
        late_threshold_us=measure.late_threshold_us, extra_warnings=warn,
    )  # fmt: skip
    if on_raw:
        on_raw(m, merged, [r.start_ns for r in raws[-take:]] + [raws[-1].end_ns])
    if not stable and not stopped:
        raise UnstableLevel(unstable_message(mode, level, measure.max_trials), m)
    return m


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
    with Session(target, inputs) as session:
        return eventloop.run(
            measure_async(
                session, measure, mode, level, on_window=on_window, should_stop=should_stop
            )
        )


def _levels(spec: SweepSpec) -> list[float]:
    load = spec.load
    if isinstance(load, ConcurrencyLoad):
        return [float(c) for c in load.levels]
    if load.intervals_file:
        return [round(sched.mean_rate(sched.read_intervals(load.intervals_file)), 3)]
    return [float(r) for r in load.rates]


def _latency_for_threshold(m: Measurement, percentile: float | None) -> float:
    return m.latency.avg_us if percentile is None else m.latency.percentile_us(percentile)


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]


def settings_of(spec: SweepSpec) -> dict[str, Any]:
    load = spec.load
    s: dict[str, Any] = {
        "url": spec.target.url, "protocol": spec.target.protocol, "model": spec.target.model,
        "model_version": spec.target.model_version, "batch_size": spec.inputs.batch_size,
        "input_data": spec.inputs.source, "shapes": {k: list(v) for k, v in spec.inputs.shapes.items()},
        "shared_memory": spec.inputs.shared_memory, "measurement_mode": spec.measure.mode,
        "measurement_interval_ms": spec.measure.interval_ms,
        "measurement_request_count": spec.measure.request_count_per_window,
        "stability_percentage": spec.measure.stability_pct, "max_trials": spec.measure.max_trials,
        "percentile": spec.measure.percentile, "request_count": spec.measure.fixed_request_count,
        "warmup_request_count": spec.measure.warmup_request_count,
        "latency_threshold_ms": spec.latency_threshold_ms, "binary_search": spec.binary_search,
        "workers": spec.workers,
    }  # fmt: skip
    if isinstance(load, ConcurrencyLoad):
        s["load_mode"] = "concurrency"
        s["concurrency_levels"] = list(load.levels)
    else:
        s["load_mode"] = "request_rate"
        s["request_rates"] = list(load.rates)
        s["request_distribution"] = load.distribution
        s["request_intervals"] = load.intervals_file
    return s


def run_sweep(
    spec: SweepSpec,
    *,
    on_window: OnWindow | None = None,
    on_level: OnLevel | None = None,
    should_stop: ShouldStop | None = None,
    on_raw: OnRaw | None = None,
    embedded: bool = False,
) -> RunResult:
    """Measure every level of `spec.load` in order (or by binary search) and return a `RunResult`.

    An unstable level is kept (stable=False), the sweep stops and the status is "unstable";
    Ctrl-C (KeyboardInterrupt) or a server that dies returns the levels already measured with
    status "interrupted" / "error" and the reason in `messages`. Errors before the first level
    (server not there, unknown model, bad inputs) raise.
    """
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    session = Session(spec.target, spec.inputs)
    done: list[Measurement] = []
    messages: list[str] = []
    status: str = "ok"
    metrics = None
    if spec.metrics is not None:
        from perfkit.load.metrics_scrape import MetricsScraper

        metrics = MetricsScraper(spec.metrics.url, spec.metrics.interval_ms)
    try:
        status = eventloop.run(
            _sweep(spec, session, done, messages, on_window, on_level, should_stop, on_raw, metrics)
        )
    except KeyboardInterrupt:
        status = "interrupted"
        messages.append(f"Interrupted after {len(done)} level(s); the levels measured are kept.")
    finally:
        session.close()
    return RunResult(
        model=spec.target.model,
        model_version=session.model_version,
        server=session.server_info(embedded),
        model_config=session.config,
        config_hash=config_hash(session.config),
        settings=settings_of(spec),
        measurements=tuple(done),
        status=status,  # type: ignore[arg-type]
        started_at=started,
        perfkit_version=__version__,
        machine=machine_info(),
        messages=tuple(messages),
    )


async def _sweep(
    spec: SweepSpec,
    session: Session,
    done: list[Measurement],
    messages: list[str],
    on_window: OnWindow | None,
    on_level: OnLevel | None,
    should_stop: ShouldStop | None,
    on_raw: OnRaw | None,
    metrics: Any,
) -> str:
    thr_us = spec.latency_threshold_ms * 1000.0
    pct = spec.measure.percentile

    unstable: list[float] = []

    async def one(level: float) -> Measurement:
        if metrics is not None:
            metrics.start()
        try:
            if spec.workers > 1:
                from perfkit.load.workers import measure_parallel

                m = await measure_parallel(spec, session, level, on_window=on_window, on_raw=on_raw)
            else:
                m = await measure_async(
                    session, spec.measure, spec.load, level, on_window=on_window,
                    should_stop=should_stop, on_raw=on_raw,
                )  # fmt: skip
        except UnstableLevel as exc:
            # Kept, flagged stable=False; the sweep goes on and ends with status "unstable".
            m = exc.measurement
            unstable.append(level)
            messages.append(str(exc))
        finally:
            if metrics is not None:
                collected = await metrics.stop()
            else:
                collected = None
        if collected is not None:
            m = replace(m, metrics=collected)
        done.append(m)
        if on_level:
            on_level(m)
        return m

    def over(m: Measurement) -> bool:
        return thr_us > 0 and _latency_for_threshold(m, pct) >= thr_us

    try:
        if spec.binary_search:
            levels = _levels(spec)
            lo, hi = levels[0], levels[-1]
            is_int = isinstance(spec.load, ConcurrencyLoad)
            step = max(spec.binary_search_step, 1.0 if is_int else 1e-6)
            if over(await one(lo)):
                messages.append(
                    f"Measured latency went over the set limit of {spec.latency_threshold_ms:g} msec."
                )
                return "unstable" if unstable else "ok"
            if hi == lo or not over(await one(hi)):
                return "unstable" if unstable else "ok"
            while hi - lo > step:
                mid = (lo + hi) / 2
                if is_int:
                    mid = float(math.floor(mid))
                    if mid <= lo:
                        break
                if over(await one(mid)):
                    hi = mid
                else:
                    lo = mid
            return "unstable" if unstable else "ok"
        for level in _levels(spec):
            m = await one(level)
            if over(m):
                messages.append(
                    f"Measured latency went over the set limit of {spec.latency_threshold_ms:g} msec."
                )
                break
            if should_stop is not None and should_stop():
                messages.append("Stopped on request.")
                return "interrupted"
        return "unstable" if unstable else "ok"
    except UnstableLevel as exc:
        done.append(exc.measurement)
        if on_level:
            on_level(exc.measurement)
        messages.append(str(exc))
        return "unstable"
    except (ServerUnavailable, ServerError) as exc:
        if not done:
            raise
        messages.append(f"{exc} The {len(done)} level(s) measured before are kept.")
        return "error"
    except PerfkitError:
        raise
    except asyncio.CancelledError:
        messages.append(f"Interrupted after {len(done)} level(s); the levels measured are kept.")
        return "interrupted"
