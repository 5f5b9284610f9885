"""The values of a regression gate: thresholds (`Gates`), one check's outcome (`GateCheck`, with
its status pass / fail / inconclusive and confidence interval), a whole `Comparison`, and the
parsing of the CLI's threshold flags. Pure, stdlib only; `perfkit.report.compare` computes them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from perfkit.errors import ConfigError
from perfkit.report.labels import level_text

LevelKey = tuple[str, float, int]  # (mode, level, batch size)

LATENCY_STATS = ("avg", "p50", "p90", "p95", "p99")
DEFAULT_THROUGHPUT_DROP_PCT = 5.0
DEFAULT_LATENCY_INCREASE = {"p99": 10.0}


@dataclass(frozen=True, slots=True, kw_only=True)
class Gates:
    """Thresholds in percent. None / empty disables a gate."""

    max_throughput_drop_pct: float | None = None
    # Latency statistic ("avg", "p50", ..., "p99", or an extra percentile such as "p99.9") -> %.
    max_latency_increase_pct: Mapping[str, float] = field(default_factory=dict)
    # Upper bound on the current run's error rate, in percent of requests.
    max_error_rate_pct: float | None = None

    def __post_init__(self) -> None:
        values = [self.max_throughput_drop_pct, self.max_error_rate_pct]
        values += list(self.max_latency_increase_pct.values())
        if any(v is not None and (v < 0 or not math.isfinite(v)) for v in values):
            raise ConfigError("compare thresholds must be finite and not negative.")
        for stat in self.max_latency_increase_pct:
            _check_stat(stat)

    @property
    def empty(self) -> bool:
        return (
            self.max_throughput_drop_pct is None
            and not self.max_latency_increase_pct
            and self.max_error_rate_pct is None
        )


Status = Literal["pass", "fail", "inconclusive"]
# How a check was decided: a bootstrap interval, the bare percentage (a side had no per-window
# data), or an absolute bound on the current run (error rate).
Method = Literal["bootstrap", "percentage", "absolute"]


@dataclass(frozen=True, slots=True, kw_only=True)
class GateCheck:
    """One gate at one matched level.

    `status` is "fail" only when the whole confidence interval of the change is past the limit
    (a regression with the stated confidence), "pass" when the whole interval is within it, and
    "inconclusive" otherwise (the data cannot tell: measure more, e.g. more --repeats)."""

    key: LevelKey
    gate: str  # "throughput", "p99 latency", "error rate"
    unit: str  # "infer/s", "ms", "%"
    baseline: float
    current: float
    change_pct: float  # (current - baseline) / baseline, in percent; error rate: percentage points
    limit: str  # "drop ≤ 5%", "increase ≤ 10%", "≤ 1%"
    status: Status
    method: Method = "percentage"
    # The confidence interval of change_pct (bootstrap only) and its confidence (0..1).
    low_pct: float | None = None
    high_pct: float | None = None
    confidence: float = 0.95

    @property
    def passed(self) -> bool:
        """Not a regression (pass or inconclusive)."""
        return self.status != "fail"

    @property
    def verdict(self) -> str:
        return {"pass": "ok", "fail": "REGRESSION", "inconclusive": "INCONCLUSIVE"}[self.status]

    @property
    def describe(self) -> str:
        """One line: what changed against what limit."""
        if self.gate == "error rate":
            return (
                f"{level_name(self.key)}: error rate {self.current:.3g}% "
                f"(baseline {self.baseline:.3g}%, limit {self.limit}): {self.verdict}"
            )
        ci = f", {ci_text(self)}" if self.low_pct is not None else ""
        return (
            f"{level_name(self.key)}: {self.gate} {fmt(self.baseline, self.unit)} -> "
            f"{fmt(self.current, self.unit)} {self.unit} ({change_text(self)}{ci}, "
            f"limit {self.limit}): {self.verdict}"
        )

    @property
    def short(self) -> str:
        ci = f", {ci_text(self)}" if self.low_pct is not None else ""
        return (
            f"{self.gate} at {level_name(self.key)} ({change_text(self)}{ci}, limit {self.limit})"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Comparison:
    model: str
    baseline_label: str
    current_label: str
    baseline_started_at: str
    current_started_at: str
    checks: tuple[GateCheck, ...]
    matched: tuple[LevelKey, ...]
    only_baseline: tuple[LevelKey, ...]
    only_current: tuple[LevelKey, ...]
    notes: tuple[str, ...] = ()
    confidence: float = 0.95

    @property
    def regressions(self) -> tuple[GateCheck, ...]:
        return tuple(c for c in self.checks if c.status == "fail")

    @property
    def inconclusive(self) -> tuple[GateCheck, ...]:
        return tuple(c for c in self.checks if c.status == "inconclusive")

    @property
    def passed(self) -> bool:
        return not self.regressions


def level_name(key: LevelKey) -> str:
    return f"{load_name(key)}, batch {key[2]}"


def load_name(key: LevelKey) -> str:
    mode, level, _ = key
    return level_text(mode, level)


def fmt(value: float, unit: str) -> str:
    if unit == "ms":
        return f"{value:.3f}"
    if unit == "%":
        return f"{value:.2f}%"
    return f"{value:,.1f}"


def change_text(check: GateCheck) -> str:
    if check.gate == "error rate":
        return f"{check.change_pct:+.2f}pp"
    if math.isinf(check.change_pct):
        return "new (baseline 0)"
    return f"{check.change_pct:+.1f}%"


def ci_text(check: GateCheck) -> str:
    """'95% CI -4.1% .. +0.8%', or 'by percentage only' without an interval."""
    if check.low_pct is None or check.high_pct is None:
        return "absolute bound" if check.method == "absolute" else "by percentage only"
    return f"{check.confidence * 100:g}% CI {check.low_pct:+.1f}% .. {check.high_pct:+.1f}%"


# ---------------------------------------------------------------------------------------------
# Threshold parsing (the CLI's flag values)


def parse_percent(text: str, what: str = "threshold") -> float:
    """'5%', '5' or '0.5%' -> 5.0 / 5.0 / 0.5 (percent)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*%?\s*", text)
    if not m:
        raise ConfigError(f"{what}: {text!r} is not a percentage; write it as e.g. 5% or 2.5%.")
    return float(m.group(1))


def _check_stat(stat: str) -> None:
    if stat in LATENCY_STATS or re.fullmatch(r"p[0-9]+(\.[0-9]+)?", stat):
        return
    raise ConfigError(
        f"latency statistic {stat!r} is not one of {', '.join(LATENCY_STATS)} "
        "(or another percentile such as p99.9)."
    )


def parse_latency_gate(text: str) -> tuple[str, float]:
    """'p99:10%' -> ('p99', 10.0). A bare '10%' means p99."""
    stat, sep, pct = text.partition(":")
    if not sep:
        stat, pct = "p99", text
    stat = stat.strip().lower()
    _check_stat(stat)
    return stat, parse_percent(pct, f"--max-latency-increase {text}")


DEFAULT_GATES = Gates(
    max_throughput_drop_pct=DEFAULT_THROUGHPUT_DROP_PCT,
    max_latency_increase_pct=DEFAULT_LATENCY_INCREASE,
)
