"""The level walk of `perfkit run`: every level of a `SweepSpec` in order, or by binary search on
the latency threshold (`run_sweep`). Measuring one level is `perfkit.load.level`'s; with
`--workers K` the sweep owns the worker processes (`perfkit.load.workers.WorkerGroup`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from perfkit import __version__
from perfkit.errors import ServerError, ServerUnavailable
from perfkit.load import eventloop
from perfkit.load import schedule as sched
from perfkit.load.level import OnRaw, OnWindow, ShouldStop, UnstableLevel, measure_async
from perfkit.load.metrics_scrape import MetricsScraper
from perfkit.load.session import Session
from perfkit.load.spec import ConcurrencyLoad, SweepSpec
from perfkit.load.workers import WorkerGroup
from perfkit.machine import machine_info
from perfkit.results import Measurement, RunResult

OnLevel = Callable[[Measurement], None]


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
        metrics = MetricsScraper(spec.metrics.url, spec.metrics.interval_ms)
    try:
        with (
            WorkerGroup(spec.target, spec.inputs, spec.workers)
            if spec.workers > 1
            else contextlib.nullcontext()
        ) as group:
            status = eventloop.run(
                _sweep(spec, session, group, done, messages, on_window, on_level, should_stop,
                       on_raw, metrics)
            )  # fmt: skip
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
    group: WorkerGroup | None,
    done: list[Measurement],
    messages: list[str],
    on_window: OnWindow | None,
    on_level: OnLevel | None,
    should_stop: ShouldStop | None,
    on_raw: OnRaw | None,
    metrics: MetricsScraper | None,
) -> str:
    thr_us = spec.latency_threshold_ms * 1000.0
    pct = spec.measure.percentile

    unstable: list[float] = []

    async def one(level: float) -> Measurement:
        if metrics is not None:
            metrics.start()
        try:
            if group is not None:
                m = await group.measure(
                    spec, session, level, on_window=on_window, should_stop=should_stop,
                    on_raw=on_raw,
                )  # fmt: skip
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
            collected = await metrics.stop() if metrics is not None else None
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
    except (ServerUnavailable, ServerError) as exc:
        if not done:
            raise
        messages.append(f"{exc} The {len(done)} level(s) measured before are kept.")
        return "error"
    except asyncio.CancelledError:  # Ctrl-C: asyncio.Runner cancels this task
        messages.append(f"Interrupted after {len(done)} level(s); the levels measured are kept.")
        return "interrupted"
