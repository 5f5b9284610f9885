"""Capacity under a latency SLO: the rules and the rate search of the `capacity` objective. Pure.

A config's capacity is the highest open-loop request rate at which the chosen latency percentile
stays within the latency budget, times the client batch size (`capacity_infer_per_s`, inferences
per second). The rate is offered, not achieved: a deployment is sized by the arrival rate it can
take, and a rate only passes when the server answers about as fast as it is asked (below).

Latency is measured from each request's SCHEDULED send time, not from when it was sent:
`perfkit.load.schedule` gives absolute send times (a late send never shifts the next ones), the
driver records the scheduled time of every request (`RawWindow.intended_ns`), and
`Measurement.corrected_latency` is `done - scheduled` (wrk2's correction for coordinated
omission). `Measurement.latency` (`done - sent`) is the service time, kept as
`CapacityStep.service_latency_us`; the verdict uses the corrected one.

A rate FAILS (`judge`) when any of its requests failed, when the corrected percentile is over the
budget, or when the server answered clearly less than it was offered: fewer answers than
`1 - SHORTFALL_PCT/100` of the offered count and more than `SHORTFALL_REQUESTS` short (the server
cannot keep up; its queue grows without bound, and the requests still queued at the end are in no
percentile). The answers are counted over the windows after the first one (the first starts with
an empty pipeline and would count short by one service time).

The search (`search`): a start rate (the closed-loop probe's throughput x `START_FRACTION`, or
`rate_max`, or `rate_min`); then up by doubling while rates pass (the first step up stops at the
probe's throughput x (1 + `PROBE_MARGIN`), which the capacity can hardly exceed) or down by halving
while they fail, until a passing and a failing rate bracket the capacity; then bisection until the
bracket is within `tolerance_pct` of its lower end, or `max_steps` measurements were made. A rate
measured once (in this search, or given as already measured) is never measured again; every
step is kept. No passing rate down to `rate_min`: capacity 0.

The derived budget (`derived_budget_us`), when a capacity tune has no latency budget:
`BUDGET_FACTOR` x the default config's percentile at a low rate (`LOW_RATE_FRACTION` of the
probe's rate), at least `BUDGET_FLOOR_US`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from perfkit.model_repo.config import ModelConfig
from perfkit.results import CapacityRecord, CapacityStep, Measurement
from perfkit.sweepfile import CapacitySettings
from perfkit.tune.objective import CAPACITY_KEY

__all__ = [
    "CAPACITY_KEY", "CapacityStep", "SearchResult", "capacity_metrics", "derived_budget_us",
    "is_capacity", "judge", "probe_concurrency", "rate_key", "search",
]  # fmt: skip

SHORTFALL_PCT = 10.0
SHORTFALL_REQUESTS = 2
# The first level at 3/4 of the probe's rate: near full utilization a short stall of the machine
# queues requests that take long to drain, and one such level would end the bracket low.
START_FRACTION = 0.75
PROBE_MARGIN = 0.1
BUDGET_FACTOR = 5.0
BUDGET_FLOOR_US = 10_000.0
LOW_RATE_FRACTION = 0.1
# A variant is pruned on its probe alone when the probe's throughput x this is below the floor.
PROBE_PRUNE_SLACK = 1.25
PROBE_MIN, PROBE_MAX = 4, 64
# Rates are kept to this many decimals (a bisection never asks for a rate finer than this).
RATE_DECIMALS = 3


def is_capacity(targets: Iterable[tuple[str, str]]) -> bool:
    """Whether capacity is the primary (first) objective."""
    first = next(iter(targets), None)
    return first is not None and first[0] == CAPACITY_KEY


def answered_rps(m: Measurement) -> float:
    """Requests/s the server answered in `m`: over its windows after the first when it has
    several (the first starts with an empty pipeline), else over the merged measurement."""
    later = [w for w in m.windows[1:] if w.duration_ns > 0]
    if later:
        return sum(w.request_count for w in later) / (sum(w.duration_ns for w in later) / 1e9)
    return m.request_count / max(m.duration_ns / 1e9, 1e-9)


def judge(m: Measurement, rate_rps: float, budget_us: float, percentile: float) -> CapacityStep:
    """The verdict on one measured rate (see the module docstring for the rule)."""
    corrected = m.corrected_latency or m.latency
    latency = corrected.percentile_us(percentile)
    service = m.latency.percentile_us(percentile)
    answered = answered_rps(m)
    duration_s = m.duration_ns / 1e9
    reason = ""
    if m.error_count:
        total = m.request_count + m.error_count
        reason = f"{m.error_count} of {total} requests failed"
    elif latency > budget_us:
        reason = (
            f"p{percentile:g} {latency / 1000:.2f} ms over the budget {budget_us / 1000:.2f} ms"
        )
    else:
        later = [w for w in m.windows[1:] if w.duration_ns > 0]
        span_s = sum(w.duration_ns for w in later) / 1e9 if later else duration_s
        short = (rate_rps - answered) * span_s
        if short > rate_rps * span_s * SHORTFALL_PCT / 100.0 and short > SHORTFALL_REQUESTS:
            reason = f"answered {answered:.1f} req/s of {rate_rps:,.1f} offered: the server cannot keep up"
    return CapacityStep(
        rate_rps=rate_rps,
        throughput_infer_per_s=answered * m.batch_size,
        latency_us=latency,
        service_latency_us=service,
        request_count=m.request_count,
        error_count=m.error_count,
        duration_s=duration_s,
        passed=not reason,
        reason=reason,
    )


def probe_concurrency(config: ModelConfig, batch_size: int) -> int:
    """The probe's moderate concurrency: twice the requests the config executes at once (its
    instances, times max_batch_size / the client batch with dynamic batching), between PROBE_MIN
    and PROBE_MAX."""
    instances = sum(max(g.count, 1) for g in config.instance_group) or 1
    per_instance = 1
    if config.HasField("dynamic_batching") and config.max_batch_size > batch_size:
        per_instance = config.max_batch_size // max(batch_size, 1)
    return min(max(2 * instances * per_instance, PROBE_MIN), PROBE_MAX)


def capacity_metrics(
    m: Measurement, capacity: float, rate_rps: float, percentile: float
) -> dict[str, float]:
    """The trial metrics of the reported rate: the capacity, the rate, and the latencies from the
    scheduled send time (over the measurement's service-time ones); the service time's
    percentile as `service_p<N>_latency_us`."""
    lat = m.corrected_latency or m.latency
    return {
        CAPACITY_KEY: capacity,
        "capacity_rate_rps": rate_rps,
        "avg_latency_us": lat.avg_us,
        "std_latency_us": lat.std_us,
        "p50_latency_us": lat.p50_us,
        "p90_latency_us": lat.p90_us,
        "p95_latency_us": lat.p95_us,
        "p99_latency_us": lat.p99_us,
        "max_latency_us": lat.max_us,
        f"service_p{percentile:g}_latency_us": m.latency.percentile_us(percentile),
    }


def derived_budget_us(low_rate_latency_us: float) -> float:
    """The budget of a capacity tune that has none: BUDGET_FACTOR x the default config's latency
    percentile at a low rate, at least BUDGET_FLOOR_US."""
    return max(BUDGET_FACTOR * low_rate_latency_us, BUDGET_FLOOR_US)


def rate_key(rate: float) -> float:
    return round(float(rate), RATE_DECIMALS)


@dataclass(slots=True)
class SearchResult:
    """What `search` found: the highest passing rate (0: none), the lowest failing rate above it
    (None: none failed), why it stopped, and every step in the order measured (given ones first)."""

    rate_rps: float
    upper_rps: float | None
    stop_reason: str
    steps: list[CapacityStep] = field(default_factory=list)

    def best(self) -> CapacityStep | None:
        """The step of the highest passing rate (None: none passed)."""
        passed = [s for s in self.steps if s.passed and s.rate_rps == self.rate_rps]
        return passed[0] if passed else None

    def record(
        self,
        *,
        batch_size: int,
        percentile: float,
        budget_us: float,
        budget_source: str,
        probe_infer_per_s: float | None,
    ) -> CapacityRecord:
        return CapacityRecord(
            capacity_infer_per_s=self.rate_rps * batch_size,
            rate_rps=self.rate_rps,
            percentile=percentile,
            latency_budget_us=budget_us,
            budget_source=budget_source,
            upper_rps=self.upper_rps,
            stop_reason=self.stop_reason,
            probe_infer_per_s=probe_infer_per_s,
            steps=tuple(self.steps),
        )


class _Stop(Exception):
    """Ends a search early (max_steps, or pruned): the reason."""


def _bracket(steps: Iterable[CapacityStep]) -> tuple[float | None, float | None]:
    """The highest passing rate, and the lowest failing rate above it."""
    steps = list(steps)
    lo = max((s.rate_rps for s in steps if s.passed), default=None)
    hi = min(
        (s.rate_rps for s in steps if not s.passed and (lo is None or s.rate_rps > lo)),
        default=None,
    )
    return lo, hi


def search(
    measure: Callable[[float], CapacityStep],
    settings: CapacitySettings,
    *,
    hint_rps: float | None = None,
    known: Iterable[CapacityStep] = (),
    prune: Callable[[float], bool] | None = None,
) -> SearchResult:
    """Bracket, then bisect, the highest passing rate.

    Args:
        measure: measures and judges one rate (requests/s, `rate_key`-rounded).
        settings: rate_min, rate_max, tolerance_pct, max_steps.
        hint_rps: an upper estimate of the capacity (the closed-loop probe's request rate); it
            sets the start rate and the first step up. None: start at rate_max, else rate_min.
        known: steps already measured for this config (never measured again).
        prune: called with the capacity's upper bound (requests/s: the lowest failing rate) after
            each failing step; True ends the search ("pruned").

    Returns:
        The bracket and every step; `stop_reason` is "converged" (within tolerance_pct),
        "max_steps", "rate_max" (rate_max passed), "rate_min" (rate_min failed: no capacity),
        "pruned", or "no finer rate" (the bracket is down to rounding).
    """
    steps: dict[float, CapacityStep] = {}
    order: list[CapacityStep] = []
    for s in known:
        if rate_key(s.rate_rps) not in steps:
            steps[rate_key(s.rate_rps)] = s
            order.append(s)
    made = 0
    rate_min = settings.rate_min
    rate_max = settings.rate_max

    def at(rate: float) -> CapacityStep:
        nonlocal made
        key = rate_key(rate)
        if key in steps:
            return steps[key]
        if made >= settings.max_steps:
            raise _Stop("max_steps")
        made += 1
        step = measure(key)
        steps[key] = step
        order.append(step)
        if not step.passed and prune is not None:
            _, hi = _bracket(order)
            if hi is not None and prune(hi):
                raise _Stop("pruned")
        return step

    # The first step up from below the probe's rate stops just above it.
    ceiling = None
    if hint_rps is not None and hint_rps > 0:
        ceiling = rate_key(hint_rps * (1 + PROBE_MARGIN))
        start = max(rate_min, hint_rps * START_FRACTION)
    else:
        start = rate_max if rate_max is not None else rate_min
    if rate_max is not None:
        start = min(start, rate_max)
    reason = ""
    try:
        lo, hi = _bracket(order)
        if (lo is None or start > lo) and (hi is None or start < hi):
            at(start)
        while True:
            lo, hi = _bracket(order)
            if lo is None:
                assert hi is not None
                if hi <= rate_min:
                    reason = "rate_min"
                    break
                nxt = max(hi / 2, rate_min)
            elif hi is None:
                if rate_max is not None and lo >= rate_max:
                    reason = "rate_max"
                    break
                nxt = lo * 2
                if ceiling is not None and lo < ceiling:
                    nxt = min(nxt, ceiling)
                if rate_max is not None:
                    nxt = min(nxt, rate_max)
            else:
                if (hi - lo) / lo * 100.0 <= settings.tolerance_pct:
                    reason = "converged"
                    break
                nxt = (lo + hi) / 2
            if rate_key(nxt) in steps:
                reason = "no finer rate"
                break
            at(nxt)
    except _Stop as stop:
        reason = str(stop)
    lo, hi = _bracket(order)
    return SearchResult(rate_rps=lo or 0.0, upper_rps=hi, stop_reason=reason, steps=order)
