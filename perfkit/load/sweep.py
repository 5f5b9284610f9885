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
        "workers": spec.workers, "repeats": spec.repeats, "streaming": spec.target.streaming,
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

    An unstable level is kept (stable=False) and the sweep goes on; its status is then "unstable".
    Ctrl-C (KeyboardInterrupt) or a server that dies returns the levels already measured with
    status "interrupted" / "error" and the reason in `messages`. Errors before the first level
    (server not there, unknown model, bad inputs) raise.
    """
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    session = Session(spec.target, spec.inputs)
    walk = _Walk(spec, session, on_window, on_level, should_stop, on_raw)
    status: str = "ok"
    try:
        with (
            WorkerGroup(spec.target, spec.inputs, spec.workers)
            if spec.workers > 1
            else contextlib.nullcontext()
        ) as walk.group:
            status = eventloop.run(walk.run())
    except KeyboardInterrupt:
        status = "interrupted"
        walk.messages.append(
            f"Interrupted after {len(walk.done)} level(s); the levels measured are kept."
        )
    finally:
        session.close()
    return RunResult(
        model=spec.target.model,
        model_version=session.model_version,
        server=session.server_info(embedded),
        model_config=session.config,
        config_hash=config_hash(session.config),
        settings={**settings_of(spec), **_model_kind(spec, session)},
        measurements=tuple(walk.done),
        status=status,  # type: ignore[arg-type]
        started_at=started,
        perfkit_version=__version__,
        machine=machine_info(),
        messages=tuple(walk.messages),
    )


def _model_kind(spec: SweepSpec, session: Session) -> dict[str, Any]:
    """What the model's configs made of the run: sequences (and their settings), a decoupled
    model, the composing models whose statistics were read."""
    shape = session.shape
    out: dict[str, Any] = {"sequence_model": shape.sequence, "decoupled": shape.decoupled}
    if shape.sequence:
        seq = spec.inputs.sequence
        out.update(
            sequence_length=seq.length, sequence_length_variation=seq.variation_pct,
            num_of_sequences=seq.num_of_sequences, sequence_id_start=seq.start_id,
            sequence_id_range=seq.id_range, serial_sequences=seq.serial,
        )  # fmt: skip
    if shape.composing:
        out["composing_models"] = {k: [list(m) for m in v] for k, v in shape.composing.items()}
    return out


class _Walk:
    """One sweep's walk over its levels: what was measured and said so far."""

    def __init__(
        self,
        spec: SweepSpec,
        session: Session,
        on_window: OnWindow | None,
        on_level: OnLevel | None,
        should_stop: ShouldStop | None,
        on_raw: OnRaw | None,
    ) -> None:
        self.spec = spec
        self.session = session
        self.on_window, self.on_level, self.on_raw = on_window, on_level, on_raw
        self.should_stop = should_stop
        self.group: WorkerGroup | None = None
        self.metrics = (
            MetricsScraper(spec.metrics.url, spec.metrics.interval_ms) if spec.metrics else None
        )
        self.done: list[Measurement] = []
        self.messages: list[str] = []
        self.unstable = False

    async def level(self, level: float, repeat: int = 0) -> Measurement:
        """Measure one level (an unstable one is kept, flagged stable=False) and record it as
        repeat `repeat` of that level."""
        spec, metrics = self.spec, self.metrics
        if metrics is not None:
            metrics.start()
        try:
            if self.group is not None:
                m = await self.group.measure(
                    spec, self.session, level, on_window=self.on_window,
                    should_stop=self.should_stop, on_raw=self.on_raw,
                )  # fmt: skip
            else:
                m = await measure_async(
                    self.session, spec.measure, spec.load, level, on_window=self.on_window,
                    should_stop=self.should_stop, on_raw=self.on_raw,
                )  # fmt: skip
        except UnstableLevel as exc:
            m = exc.measurement
            self.unstable = True
            self.messages.append(str(exc))
        finally:
            collected = await metrics.stop() if metrics is not None else None
        if collected is not None:
            m = replace(m, metrics=collected)
        if repeat:
            m = replace(m, repeat=repeat)
        if metrics is not None and metrics.note and metrics.note not in self.messages:
            self.messages.append(metrics.note)  # where the GPU metrics came from
        self.done.append(m)
        if self.on_level:
            self.on_level(m)
        return m

    def over(self, m: Measurement) -> bool:
        """Is `m`'s latency at or over the sweep's threshold?"""
        thr_us = self.spec.latency_threshold_ms * 1000.0
        return thr_us > 0 and _latency_for_threshold(m, self.spec.measure.percentile) >= thr_us

    async def run(self) -> str:
        """Walk the levels; returns the status ("ok", "unstable", "interrupted" or "error")."""
        try:
            if self.spec.binary_search:
                await self._binary_search()
            elif not await self._walk_levels():
                return "interrupted"
            return "unstable" if self.unstable else "ok"
        except (ServerUnavailable, ServerError) as exc:
            if not self.done:
                raise
            self.messages.append(f"{exc} The {len(self.done)} level(s) measured before are kept.")
            return "error"
        except asyncio.CancelledError:  # Ctrl-C: asyncio.Runner cancels this task
            self.messages.append(
                f"Interrupted after {len(self.done)} level(s); the levels measured are kept."
            )
            return "interrupted"

    async def _walk_levels(self) -> bool:
        """Every level in order, `spec.repeats` times interleaved (level 1, 2, ..., then 1 again:
        drift over the run hits every level alike). A level over the latency threshold ends the
        first pass, and later passes stop before it too. False when stopped on request."""
        levels = _levels(self.spec)
        for repeat in range(self.spec.repeats):
            for i, level in enumerate(levels):
                if self.over(await self.level(level, repeat)) and repeat == 0:
                    self._over_threshold()
                    levels = levels[: i + 1]
                    break
                if self.should_stop is not None and self.should_stop():
                    self.messages.append("Stopped on request.")
                    return False
        return True

    def _over_threshold(self) -> None:
        self.messages.append(
            f"Measured latency went over the set limit of {self.spec.latency_threshold_ms:g} msec."
        )

    async def _binary_search(self) -> None:
        spec = self.spec
        levels = _levels(spec)
        lo, hi = levels[0], levels[-1]
        is_int = isinstance(spec.load, ConcurrencyLoad)
        step = max(spec.binary_search_step, 1.0 if is_int else 1e-6)
        if self.over(await self.level(lo)):
            self._over_threshold()
            return
        if hi == lo or not self.over(await self.level(hi)):
            return
        while hi - lo > step:
            mid = (lo + hi) / 2
            if is_int:
                mid = float(math.floor(mid))
                if mid <= lo:
                    break
            if self.over(await self.level(mid)):
                hi = mid
            else:
                lo = mid
