"""The capacity objective on a live server: `CapacityEvaluator`, the derived budget, the pruning hook.

`CapacityEvaluator` is a `LiveEvaluator` whose trial is a rate search (`perfkit.tune.capacity`):
it loads the variant, probes it closed loop (a short level at a moderate concurrency, whose
throughput is an upper estimate of the capacity and seeds the bracket; skipped when
`capacity.rate_max` is given), then measures open-loop request-rate levels with
`perfkit.load.measure_level` (latency from each request's scheduled send time) as `search` asks.
Each step's warm-up is at most one window's worth of requests at its rate. A level is cut short
once a window after the first answered less than half the offered rate (hopeless overload).
Every probe and level of a config is kept per (config, batch size) for the evaluator's life, so
a rate is never measured twice for one config (the derived budget's low-rate level seeds the
default config's search too).

The trial gets `capacity_infer_per_s` (the highest passing rate x the batch size) and the
passing rate's corrected latencies as its metrics, that rate's `Measurement`, and the whole
search (`CapacityRecord`, every step) as its `capacity` user attr (`TrialRecord.capacity` in
results.json). No passing rate: capacity 0, infeasible (`Objective.violations`), the reason in
the trial's `reason`; requests failing at the lowest rate tried fail the trial.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from perfkit.errors import ConfigError, PerfkitError, ServerError, ServerUnavailable
from perfkit.load.level import UnstableLevel
from perfkit.load.spec import InputSpec, MeasureSpec, TargetSpec
from perfkit.model_repo.config import ModelConfig, config_hash
from perfkit.results import LoadMode, Measurement, WindowStat
from perfkit.sweepfile import CapacitySettings, LoadSettings, SearchSettings, TuneSweep
from perfkit.tune import capacity as cap
from perfkit.tune import records as rec
from perfkit.tune import storage as st
from perfkit.tune.evaluate import LiveEvaluator, Outcome, PruneTrial, WindowWatch
from perfkit.tune.objective import Objective

logger = logging.getLogger(__name__)

# Study user attr: the latency budget a capacity tune derived (kept, so a resumed study and every
# worker of a shared one judge rates by the same budget).
BUDGET_ATTR = "capacity_latency_budget"
PROBE_WINDOWS = 2


@dataclass(slots=True)
class _Seen:
    """What was measured of one (config, batch size): the probe and each rate's level."""

    probe: Measurement | None = None
    levels: dict[float, Measurement] = field(default_factory=dict)


def check_sweep(sweep: TuneSweep, pipeline: object | None) -> None:
    """Refuse a capacity tune the evaluator cannot honour (a sweep built in code; a sweep file is
    checked as it is parsed, `perfkit.sweepfile.capacity`)."""
    names = [name for name, _ in sweep.objectives]
    if cap.CAPACITY_KEY in names[1:]:
        raise ConfigError(f"{sweep.source}:objectives.capacity: must be the first objective")
    if pipeline is not None:
        raise ConfigError(
            f"{sweep.source}:objectives.capacity: {sweep.model} is an ensemble; the capacity "
            "objective measures one model: tune the ensemble for throughput"
        )
    for key in ("concurrency", "request_rate"):
        if len(getattr(sweep.load, key)) > 1:
            raise ConfigError(
                f"{sweep.source}:load.{key}: the capacity objective searches the request rate "
                "itself; give no list"
            )


def space_load(load: LoadSettings) -> LoadSettings:
    """The load a capacity tune's space is built from: no concurrency or rate dimension (the rate
    search sets them), the batch size kept."""
    return replace(load, mode="request_rate", request_rate=(), concurrency=(), baseline={})


class CapacityEvaluator(LiveEvaluator):
    """Measures each variant's capacity under the latency budget (see the module docstring)."""

    def __init__(
        self,
        *,
        capacity: CapacitySettings,
        percentile: float,
        budget_us: float | None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.capacity = capacity
        self.percentile = percentile
        # None until `with_budget` derives it from the default config.
        self.budget_us = budget_us
        self.budget_source = "given"
        # config -> the capacity (infer/s) a variant must be able to reach not to be pruned
        # (None: never pruned); set by `attach_pruning`.
        self.prune_floor: Callable[[ModelConfig], float | None] | None = None
        self._seen: dict[str, _Seen] = {}

    # -- one variant -----------------------------------------------------------------------
    def evaluate(
        self, config: ModelConfig, params: Mapping[str, Any], watch: WindowWatch
    ) -> Outcome:
        phase = self.on_phase or (lambda doing: None)
        load_s, refused = self.load_timed(config)
        if refused is not None:
            return refused
        if self.budget_us is None:
            raise RuntimeError("CapacityEvaluator.evaluate before the latency budget is set")
        budget = self.budget_us
        batch = int(params.get("batch_size", 1))
        windows: list[WindowStat] = []
        seen = self._seen.setdefault(self._key(config, batch), _Seen())
        floor = None if self.prune_floor is None else self.prune_floor(config)
        pct = self.percentile

        def measure(rate: float) -> cap.CapacityStep:
            phase(f"rate {rate:,.1f} req/s")
            m = self._level(batch, "request_rate", rate, windows, watch)
            seen.levels[rate] = m
            step = cap.judge(m, rate, budget, pct)
            logger.debug(
                "capacity of %s: %g req/s -> %.1f infer/s, p%g %.2f ms (service %.2f ms): %s",
                self.model, rate, step.throughput_infer_per_s, pct, step.latency_us / 1000,
                step.service_latency_us / 1000, step.reason or "passed",
            )  # fmt: skip
            return step

        try:
            if seen.probe is None and self.capacity.rate_max is None:
                phase("probing")
                seen.probe = self._probe(config, batch, windows, watch)
            probe = seen.probe
            if probe is not None and probe.error_count:
                total = probe.request_count + probe.error_count
                return self._outcome(
                    None, windows, load_s, error=f"{probe.error_count} of {total} requests failed"
                )
            hint = None if probe is None else probe.throughput_infer_per_s / batch
            if (
                floor is not None
                and hint is not None
                and hint * batch * cap.PROBE_PRUNE_SLACK < floor
            ):
                result = cap.SearchResult(0.0, None, "pruned")
            else:
                known = [cap.judge(m, r, budget, pct) for r, m in seen.levels.items()]
                result = cap.search(
                    measure, self.capacity, hint_rps=hint, known=known,
                    prune=None if floor is None else (lambda hi: hi * batch < floor),
                )  # fmt: skip
        except PruneTrial:
            return self._outcome(None, windows, load_s, pruned=True)
        except ServerUnavailable:
            raise  # the server is gone: the tuner decides
        except PerfkitError as exc:
            return self._outcome(None, windows, load_s, error=f"measurement failed: {exc}")
        record = result.record(
            batch_size=batch, percentile=pct, budget_us=budget,
            budget_source=self.budget_source,
            probe_infer_per_s=None if probe is None else probe.throughput_infer_per_s,
        )  # fmt: skip
        from perfkit.report.schema import encode_value

        extra: dict[str, Any] = {rec.A_CAPACITY: encode_value(record)}
        if result.stop_reason == "pruned":
            return self._outcome(None, windows, load_s, pruned=True, extra=extra)
        best = result.best()
        if best is not None:
            m = seen.levels[cap.rate_key(best.rate_rps)]
            metrics = cap.capacity_metrics(m, record.capacity_infer_per_s, best.rate_rps, pct)
            return self._outcome(m, windows, load_s, extra=extra, metrics=metrics)
        lowest = min(result.steps, key=lambda s: s.rate_rps)
        m = seen.levels[cap.rate_key(lowest.rate_rps)]
        metrics = cap.capacity_metrics(m, 0.0, lowest.rate_rps, pct)
        if lowest.error_count:
            return self._outcome(m, windows, load_s, error=lowest.reason, extra=extra)
        extra[st.REASON_ATTR] = (
            f"no request rate kept p{pct:g} within {budget / 1000:.2f} ms: capacity 0 "
            f"(lowest rate tried {lowest.rate_rps:,.1f} req/s: {lowest.reason})"
        )
        return self._outcome(m, windows, load_s, extra=extra, metrics=metrics)

    def _outcome(
        self,
        m: Measurement | None,
        windows: list[WindowStat],
        load_s: float,
        *,
        error: str | None = None,
        pruned: bool = False,
        extra: dict[str, Any] | None = None,
        metrics: dict[str, float] | None = None,
    ) -> Outcome:
        return Outcome(
            measurement=m,
            error=error,
            pruned=pruned,
            windows=tuple(windows),
            window_s=sum(w.duration_ns for w in windows) / 1e9,
            load_s=load_s,
            extra=extra or {},
            metrics=metrics or {},
        )

    @staticmethod
    def _key(config: ModelConfig, batch: int) -> str:
        return f"{config_hash(config)}/b{batch}"

    # -- levels ----------------------------------------------------------------------------
    def _probe(
        self, config: ModelConfig, batch: int, windows: list[WindowStat], watch: WindowWatch
    ) -> Measurement:
        """The closed-loop probe: PROBE_WINDOWS windows at a moderate concurrency."""
        c = self.capacity.probe_concurrency or cap.probe_concurrency(config, batch)
        return self._level(batch, "concurrency", float(c), windows, watch, PROBE_WINDOWS)

    def _level(
        self,
        batch: int,
        mode: LoadMode,
        level: float,
        windows: list[WindowStat],
        watch: WindowWatch,
        max_windows: int | None = None,
    ) -> Measurement:
        """One level, at most `max_windows` (the sweep's max_windows) windows; an open-loop level
        warms up with at most one window's worth of requests and stops early once a window
        after the first answered less than half the offered rate."""
        from perfkit.load import measure_level

        settings = self.measure_settings
        most = max_windows or settings.max_windows
        spec: MeasureSpec = self._measure
        if mode == "request_rate":
            per_window = math.ceil(level * settings.window_ms / 1000.0)
            spec = replace(spec, warmup_request_count=min(spec.warmup_request_count, per_window))
        mine: list[WindowStat] = []

        def on_window(w: WindowStat) -> None:
            mine.append(w)
            windows.append(w)
            watch(w)

        def should_stop() -> bool:
            if len(mine) >= most:
                return True
            w = mine[-1]
            expected = level * w.duration_ns / 1e9
            return (
                mode == "request_rate"
                and len(mine) >= 2
                and w.request_count < expected / 2 - cap.SHORTFALL_REQUESTS
            )

        inputs = InputSpec(
            source=self.load_settings.input_data, batch_size=batch, shapes=self._shapes
        )
        target = TargetSpec(
            url=self.url, protocol="grpc" if self.protocol == "grpc" else "http", model=self.model
        )
        try:
            if self.metrics_url is None:
                return measure_level(
                    target, inputs, spec, mode, level, on_window=on_window,
                    should_stop=should_stop,
                )  # fmt: skip
            return self._measure_scraped(
                target, inputs, mode, level, on_window, should_stop, spec=spec
            )
        except UnstableLevel as exc:
            return exc.measurement

    # -- the derived budget ----------------------------------------------------------------
    def derive_budget(self, config: ModelConfig, batch: int) -> tuple[float, str]:
        """The budget of a capacity tune that has none (`perfkit.tune.capacity`): from `config`
        (the default) at a low rate; the probe and that level seed its search later."""
        try:
            self.load_variant(config)
        except ServerError as exc:
            raise ConfigError(
                f"cannot derive the latency budget: the server refused the default config: {exc}"
            ) from exc
        seen = self._seen.setdefault(self._key(config, batch), _Seen())
        windows: list[WindowStat] = []
        settings = self.capacity
        if settings.rate_max is None:
            if seen.probe is None:
                seen.probe = self._probe(config, batch, windows, lambda w: None)
            top = seen.probe.throughput_infer_per_s / batch
        else:
            top = settings.rate_max
        rate = cap.rate_key(max(settings.rate_min, cap.LOW_RATE_FRACTION * top))
        m = seen.levels.get(rate) or self._level(
            batch, "request_rate", rate, windows, lambda w: None
        )
        seen.levels[rate] = m
        if m.error_count or not m.request_count:
            raise ConfigError(
                f"cannot derive the latency budget: at {rate:,.1f} req/s the default config answered "
                f"{m.request_count} requests ({m.error_count} failed). Give "
                "constraints.latency_budget_ms"
            )
        low = (m.corrected_latency or m.latency).percentile_us(self.percentile)
        budget = cap.derived_budget_us(low)
        source = (
            f"derived: {cap.BUDGET_FACTOR:g} x the default config's p{self.percentile:g} "
            f"{low / 1000:.2f} ms at {rate:,.1f} req/s (at least {cap.BUDGET_FLOOR_US / 1000:g} ms)"
        )
        return budget, source


def evaluator_args(sweep: TuneSweep) -> dict[str, Any]:
    """`CapacityEvaluator`'s own arguments from the sweep."""
    return {
        "capacity": sweep.capacity,
        "percentile": sweep.constraints.latency_percentile,
        "budget_us": sweep.constraints.latency_budget_us,
    }


def with_budget(
    evaluator: object,
    objective: Objective,
    study: Any,
    base: ModelConfig,
    load: Mapping[str, Any],
    note: Callable[[str], None],
) -> tuple[Objective, str]:
    """The objective with the latency budget, derived (once per study, kept in the study's user
    attrs) when the sweep gives none; and a line saying which budget the rates are judged by."""
    assert isinstance(evaluator, CapacityEvaluator)
    pct = evaluator.percentile
    if evaluator.budget_us is None:
        stored = study.user_attrs.get(BUDGET_ATTR)
        if isinstance(stored, dict) and "budget_us" in stored:
            budget, source = float(stored["budget_us"]), str(stored.get("source", "derived"))
        else:
            note("capacity: no latency budget given; deriving it from the default config")
            budget, source = evaluator.derive_budget(base, int(load.get("batch_size", 1)))
            study.set_user_attr(BUDGET_ATTR, {"budget_us": budget, "source": source})
        evaluator.budget_us, evaluator.budget_source = budget, source
        objective = dataclasses.replace(
            objective,
            constraints=replace(objective.constraints, latency_budget_us=budget),
        )
    line = (
        f"capacity: the highest request rate with p{pct:g} (from the scheduled send time) within "
        f"{evaluator.budget_us / 1000:.2f} ms ({evaluator.budget_source})"
    )
    note(line)
    return objective, line


def attach_pruning(
    evaluator: object,
    best_value: Callable[[], float | None],
    base: ModelConfig,
    search: SearchSettings,
) -> None:
    """Let `evaluator` prune a variant whose capacity's upper bound is below prune_ratio x the
    best so far (never the default config)."""
    assert isinstance(evaluator, CapacityEvaluator)
    if not search.prune:
        return

    def floor(config: ModelConfig) -> float | None:
        if config == base:
            return None
        best = best_value()
        return None if best is None or best <= 0 else best * search.prune_ratio

    evaluator.prune_floor = floor


def result_settings(evaluator: object) -> dict[str, Any]:
    """results.json's `settings.capacity`: the rate search and the budget it judged by."""
    assert isinstance(evaluator, CapacityEvaluator)
    return {
        "capacity": {
            **dataclasses.asdict(evaluator.capacity),
            "percentile": evaluator.percentile,
            "latency_budget_us": evaluator.budget_us,
            "budget_source": evaluator.budget_source,
            "shortfall_pct": cap.SHORTFALL_PCT,
            "shortfall_requests": cap.SHORTFALL_REQUESTS,
            "capacity_is": "the highest passing offered rate x the client batch size",
        }
    }
