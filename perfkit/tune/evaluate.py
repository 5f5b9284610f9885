"""Measure one config variant on a live server: load it with a config override, then one run-engine level.

`LiveEvaluator` is the tuner's only I/O seam to a server. It loads each variant through the repository
API (`load_model(name, config=<JSON>)`, Triton's config override: no restart, the model keeps its
name) and measures one level with the run engine, scraping the server's metrics endpoint meanwhile
when `metrics_url` is given (the GPU metrics of the trial, as `perfkit run --collect-metrics`). Any
other `Evaluator` (e.g. the benchmark's replay of a measured table) can drive the same tuner loop.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from perfkit.control import ControlClient
from perfkit.errors import (
    MeasurementUnstable,
    PerfkitError,
    ServerError,
    ServerUnavailable,
)
from perfkit.load.spec import InputSpec, MeasureSpec, TargetSpec, parse_shapes
from perfkit.model_repo.config import ModelConfig, config_to_json
from perfkit.results import LoadMode, Measurement, WindowStat
from perfkit.sweepfile import LoadSettings, MeasureSettings

logger = logging.getLogger(__name__)

# Called after each window; raises `PruneTrial` to abandon the variant.
WindowWatch = Callable[[WindowStat], None]


class PruneTrial(Exception):
    """Raised by a window watch: the variant is clearly worse than the best so far."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What measuring one variant gave. `error` set = failed trial (with the reason)."""

    measurement: Measurement | None
    error: str | None = None
    pruned: bool = False
    windows: tuple[WindowStat, ...] = ()
    # Seconds spent inside measurement windows (the rest of a trial is overhead).
    window_s: float = 0.0
    load_s: float = 0.0
    # Trial user attrs to set (JSON values), e.g. the capacity search's steps.
    extra: dict[str, Any] = field(default_factory=dict)
    # Metrics over (or besides) the measurement's own, merged into the trial's: e.g. the capacity
    # objective's capacity_infer_per_s and its passing rate's corrected latencies, or a model
    # group's per-model figures and weighted scores (perfkit.tune.multi_measure).
    metrics: dict[str, float] = field(default_factory=dict)


class Evaluator(Protocol):
    """Measures one variant. Raises ServerUnavailable when the server stopped answering."""

    def evaluate(
        self, config: ModelConfig, params: Mapping[str, Any], watch: WindowWatch
    ) -> Outcome: ...


class LiveEvaluator:
    """Loads each variant on a running server and measures it with the run engine."""

    def __init__(
        self,
        *,
        url: str,
        protocol: str,
        model: str,
        load: LoadSettings,
        measure: MeasureSettings,
        metrics_url: str | None = None,
    ) -> None:
        self.url = url
        # Scraped during each measurement (None: no metrics); every half window, at most 1 s.
        self.metrics_url = metrics_url
        self.metrics_interval_ms = max(50, min(1000, measure.window_ms // 2))
        self.protocol = protocol
        self.model = model
        self.load_settings = load
        self.measure_settings = measure
        # Model loads can take long: a sync call may wait up to 120 s.
        self.control = ControlClient(url, protocol, model=model, network_timeout_s=120.0)
        self._shapes = parse_shapes(load.shapes, flag="load.shape")
        self._measure = MeasureSpec(
            mode="time_windows",
            interval_ms=measure.window_ms,
            stability_pct=measure.stability_pct,
            # The tuner stops a level itself after max_windows (keeping it as unstable) rather
            # than let the engine fail it: an unstable variant is still information.
            max_trials=max(measure.max_windows + 1, measure.stability_windows),
            stability_windows=measure.stability_windows,
            warmup_request_count=measure.warmup_requests,
        )
        # Told what each evaluation is doing ("loading", then "warming up" or "measuring").
        self.on_phase: Callable[[str], None] | None = None

    def evaluate(
        self, config: ModelConfig, params: Mapping[str, Any], watch: WindowWatch
    ) -> Outcome:
        from perfkit.load import measure_level

        phase = self.on_phase or (lambda doing: None)
        load_s, refused = self.load_timed(config)
        if refused is not None:
            return refused
        phase("warming up" if self.measure_settings.warmup_requests else "measuring")
        windows: list[WindowStat] = []

        def on_window(w: WindowStat) -> None:
            windows.append(w)
            watch(w)

        def should_stop() -> bool:
            return len(windows) >= self.measure_settings.max_windows

        def window_s() -> float:
            return sum(w.duration_ns for w in windows) / 1e9

        mode = self.load_settings.mode
        level = float(params["concurrency"] if mode == "concurrency" else params["request_rate"])
        try:
            inputs = InputSpec(
                source=self.load_settings.input_data,
                batch_size=int(params.get("batch_size", 1)),
                shapes=self._shapes,
            )
            target = TargetSpec(
                url=self.url,
                protocol="grpc" if self.protocol == "grpc" else "http",
                model=self.model,
            )
            if self.metrics_url is None:
                measurement = measure_level(
                    target, inputs, self._measure, mode, level,
                    on_window=on_window, should_stop=should_stop,
                )  # fmt: skip
            else:
                measurement = self._measure_scraped(
                    target, inputs, mode, level, on_window, should_stop
                )
        except PruneTrial:
            return Outcome(
                measurement=None,
                pruned=True,
                windows=tuple(windows),
                window_s=window_s(),
                load_s=load_s,
            )
        except MeasurementUnstable as exc:
            # An unstable variant is still information: keep its merged windows (stable=False).
            unstable = getattr(exc, "measurement", None)
            if not isinstance(unstable, Measurement):
                return Outcome(
                    measurement=None,
                    error=f"measurement failed: {exc}",
                    windows=tuple(windows),
                    window_s=window_s(),
                    load_s=load_s,
                )
            measurement = unstable
        except ServerUnavailable:
            raise  # the server is gone: not this variant's result alone; the tuner decides
        except PerfkitError as exc:
            return Outcome(
                measurement=None,
                error=f"measurement failed: {exc}",
                windows=tuple(windows),
                window_s=window_s(),
                load_s=load_s,
            )
        if measurement.windows:
            measured_s = sum(w.duration_ns for w in measurement.windows) / 1e9
        else:
            measured_s = window_s() or measurement.duration_ns / 1e9
        error = None
        if measurement.error_count:
            total = measurement.request_count + measurement.error_count
            error = f"{measurement.error_count} of {total} requests failed"
        return Outcome(
            measurement=measurement,
            error=error,
            windows=tuple(windows),
            window_s=measured_s,
            load_s=load_s,
        )

    def load_timed(self, config: ModelConfig) -> tuple[float, Outcome | None]:
        """Load `config` (phase "loading"): the seconds it took, and the failed trial's Outcome
        (with the server's reason) when the server refused it, else None."""
        t0 = time.perf_counter_ns()
        (self.on_phase or (lambda doing: None))("loading")
        try:
            self.load_variant(config)
        except ServerError as exc:
            load_s = (time.perf_counter_ns() - t0) / 1e9
            return load_s, Outcome(measurement=None, error=str(exc), load_s=load_s)
        return (time.perf_counter_ns() - t0) / 1e9, None

    def load_variant(self, config: ModelConfig) -> None:
        """Serve `config` as the model: a load with its config override (ServerError if refused)."""
        self.control.load_model(json.dumps(config_to_json(config)))

    def _measure_scraped(
        self,
        target: TargetSpec,
        inputs: InputSpec,
        mode: LoadMode,
        level: float,
        on_window: Callable[[WindowStat], None],
        should_stop: Callable[[], bool],
        *,
        spec: MeasureSpec | None = None,
    ) -> Measurement:
        """`measure_level` with the server's metrics scraped from warm-up to the last window (as
        `perfkit run --collect-metrics` does), on the engine's own loop; an unstable level's
        measurement carries them too. `spec`: the measure spec (default the sweep's)."""
        from dataclasses import replace

        from perfkit import interrupts
        from perfkit.load import Session, eventloop
        from perfkit.load.level import UnstableLevel, measure_async
        from perfkit.load.metrics_scrape import MetricsScraper

        assert self.metrics_url is not None
        scraper = MetricsScraper(self.metrics_url, self.metrics_interval_ms)

        async def scraped(session: Session) -> Measurement:
            scraper.start()
            unstable: UnstableLevel | None = None
            try:
                m = await measure_async(
                    session, spec or self._measure, mode, level,
                    on_window=on_window, should_stop=should_stop,
                )  # fmt: skip
            except UnstableLevel as exc:
                unstable, m = exc, exc.measurement
            finally:
                collected = await scraper.stop()
            if unstable is not None:
                unstable.measurement = replace(m, metrics=collected)
                raise unstable
            return replace(m, metrics=collected)

        interrupts.check()
        with Session(target, inputs) as session:
            return eventloop.run(scraped(session))

    def close(self) -> None:
        self.control.close()
