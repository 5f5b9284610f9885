"""Regression gates: compare a current run with a baseline run level by level. Pure, stdlib only.

Levels match on (mode, level, batch size). A gate checks one metric per matched level:
throughput may drop by at most N %, a latency statistic may rise by at most N %, the current error
rate may be at most N %. `compare_runs` returns a `Comparison`; `to_markdown` and `to_junit` render
it for a CI step summary and for CI test reporters. Results that cannot be compared (another
model, a tune, no level in common) raise `ConfigError`.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field

from perfkit.errors import ConfigError
from perfkit.report.labels import level_text
from perfkit.results import Measurement, RunResult, TuneResult

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


@dataclass(frozen=True, slots=True, kw_only=True)
class GateCheck:
    """One gate at one matched level."""

    key: LevelKey
    gate: str  # "throughput", "p99 latency", "error rate"
    unit: str  # "infer/s", "ms", "%"
    baseline: float
    current: float
    change_pct: float  # (current - baseline) / baseline, in percent; error rate: percentage points
    limit: str  # "drop ≤ 5%", "increase ≤ 10%", "≤ 1%"
    passed: bool

    @property
    def describe(self) -> str:
        """One line: what changed against what limit."""
        verdict = "ok" if self.passed else "REGRESSION"
        if self.gate == "error rate":
            return (
                f"{level_name(self.key)}: error rate {self.current:.3g}% "
                f"(baseline {self.baseline:.3g}%, limit {self.limit}): {verdict}"
            )
        return (
            f"{level_name(self.key)}: {self.gate} {_fmt(self.baseline, self.unit)} -> "
            f"{_fmt(self.current, self.unit)} {self.unit} ({change_text(self)}, "
            f"limit {self.limit}): {verdict}"
        )

    @property
    def short(self) -> str:
        return f"{self.gate} at {level_name(self.key)} ({change_text(self)}, limit {self.limit})"


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

    @property
    def regressions(self) -> tuple[GateCheck, ...]:
        return tuple(c for c in self.checks if not c.passed)

    @property
    def passed(self) -> bool:
        return not self.regressions


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


# ---------------------------------------------------------------------------------------------
# Comparison


def level_name(key: LevelKey) -> str:
    return f"{load_name(key)}, batch {key[2]}"


def _key(m: Measurement) -> LevelKey:
    return (m.mode, float(m.level), m.batch_size)


def _latency_us(m: Measurement, stat: str) -> float:
    if stat == "avg":
        return m.latency.avg_us
    p = float(stat[1:])
    try:
        return m.latency.percentile_us(p)
    except KeyError as exc:
        raise ConfigError(
            f"{level_name(_key(m))}: latency {stat} was not measured; run with "
            f"--percentile {p:g} or gate on one of {', '.join(LATENCY_STATS)}."
        ) from exc


def error_rate_pct(m: Measurement) -> float:
    """Failed requests in percent of all requests (completed + failed)."""
    total = m.request_count + m.error_count
    return 100.0 * m.error_count / total if total else 0.0


def _change_pct(baseline: float, current: float) -> float:
    if baseline == 0:
        return 0.0 if current == 0 else math.inf
    return (current - baseline) / abs(baseline) * 100.0


def _index(run: RunResult) -> dict[LevelKey, Measurement]:
    # A level measured twice (e.g. by a binary search) counts with its last measurement.
    return {_key(m): m for m in run.measurements}


def _as_run(result: RunResult | TuneResult, label: str) -> RunResult:
    if isinstance(result, RunResult):
        return result
    raise ConfigError(
        f"{label}: is a tune result; `perfkit compare` compares runs. Measure the tuned "
        "config with `perfkit run --output-dir DIR` and compare that."
    )


def compare_runs(
    baseline: RunResult | TuneResult,
    current: RunResult | TuneResult,
    gates: Gates = DEFAULT_GATES,
    *,
    baseline_label: str = "baseline",
    current_label: str = "current",
) -> Comparison:
    """Check every gate at every level the two runs have in common."""
    baseline = _as_run(baseline, baseline_label)
    current = _as_run(current, current_label)
    if baseline.model != current.model:
        raise ConfigError(
            f"{baseline_label} measured model {baseline.model!r} but {current_label} measured "
            f"{current.model!r}; compare results of the same model."
        )
    base, cur = _index(baseline), _index(current)
    matched = tuple(k for k in base if k in cur)
    if not matched:
        raise ConfigError(
            f"{baseline_label} and {current_label} have no load level in common "
            f"(baseline: {'; '.join(map(level_name, base)) or 'none'}; current: "
            f"{'; '.join(map(level_name, cur)) or 'none'}). Run both with the same "
            "--concurrency-range or --request-rate-range and batch size."
        )
    checks: list[GateCheck] = []
    for key in matched:
        b, c = base[key], cur[key]
        if gates.max_throughput_drop_pct is not None:
            change = _change_pct(b.throughput_infer_per_s, c.throughput_infer_per_s)
            checks.append(
                GateCheck(
                    key=key,
                    gate="throughput",
                    unit="infer/s",
                    baseline=b.throughput_infer_per_s,
                    current=c.throughput_infer_per_s,
                    change_pct=change,
                    limit=f"drop ≤ {gates.max_throughput_drop_pct:g}%",
                    passed=change >= -gates.max_throughput_drop_pct,
                )
            )
        for stat, limit in gates.max_latency_increase_pct.items():
            bv, cv = _latency_us(b, stat) / 1000.0, _latency_us(c, stat) / 1000.0
            change = _change_pct(bv, cv)
            checks.append(
                GateCheck(
                    key=key,
                    gate=f"{stat} latency",
                    unit="ms",
                    baseline=bv,
                    current=cv,
                    change_pct=change,
                    limit=f"increase ≤ {limit:g}%",
                    passed=change <= limit,
                )
            )
        if gates.max_error_rate_pct is not None:
            be, ce = error_rate_pct(b), error_rate_pct(c)
            checks.append(
                GateCheck(
                    key=key,
                    gate="error rate",
                    unit="%",
                    baseline=be,
                    current=ce,
                    change_pct=ce - be,
                    limit=f"≤ {gates.max_error_rate_pct:g}%",
                    passed=ce <= gates.max_error_rate_pct,
                )
            )
    notes = []
    if baseline.config_hash != current.config_hash:
        notes.append(
            f"model config differs: {baseline.config_hash or '?'} -> {current.config_hash or '?'}"
        )
    for label, r in ((baseline_label, baseline), (current_label, current)):
        unstable = [level_name(_key(m)) for m in r.measurements if not m.stable]
        if unstable:
            notes.append(f"{label}: unstable measurement at {'; '.join(unstable)}")
        saturated = [level_name(_key(m)) for m in r.measurements if m.generator_saturated]
        if saturated:
            notes.append(f"{label}: load generator saturated at {'; '.join(saturated)}")
    return Comparison(
        model=current.model,
        baseline_label=baseline_label,
        current_label=current_label,
        baseline_started_at=baseline.started_at,
        current_started_at=current.started_at,
        checks=tuple(checks),
        matched=matched,
        only_baseline=tuple(k for k in base if k not in cur),
        only_current=tuple(k for k in cur if k not in base),
        notes=tuple(notes),
    )


# ---------------------------------------------------------------------------------------------
# Renderings


def _fmt(value: float, unit: str) -> str:
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


def load_name(key: LevelKey) -> str:
    mode, level, _ = key
    return level_text(mode, level)


def table_rows(comparison: Comparison) -> list[list[str]]:
    """Rows of the differences table (columns: TABLE_HEAD)."""
    return [
        [
            load_name(c.key),
            str(c.key[2]),
            f"{c.gate} ({c.unit})",
            _fmt(c.baseline, c.unit),
            _fmt(c.current, c.unit),
            change_text(c),
            c.limit,
            "ok" if c.passed else "REGRESSION",
        ]
        for c in comparison.checks
    ]


TABLE_HEAD = ("Load", "Batch", "Gate", "Baseline", "Current", "Change", "Limit", "Result")


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(comparison: Comparison) -> str:
    """A GitHub step summary: verdict, what was compared, the table, notes."""
    c = comparison
    n = len(c.regressions)
    verdict = "✅ no regression" if c.passed else f"❌ {n} regression{'s' if n != 1 else ''}"
    lines = [
        f"## perfkit compare: {verdict}",
        "",
        f"Model `{_md_cell(c.model)}`: baseline `{_md_cell(c.baseline_label)}` "
        f"({_md_cell(c.baseline_started_at)}) against current `{_md_cell(c.current_label)}` "
        f"({_md_cell(c.current_started_at)}); {len(c.matched)} load level(s) compared, "
        f"{len(c.checks)} check(s).",
        "",
        "| " + " | ".join(TABLE_HEAD) + " |",
        "|---|---:|---|---:|---:|---:|---|---|",
    ]
    for row, check in zip(table_rows(c), c.checks, strict=True):
        row[-1] = "✅ ok" if check.passed else "❌ **regression**"
        lines.append("| " + " | ".join(_md_cell(x) for x in row) + " |")
    extra = [
        *(f"only in baseline, not compared: {level_name(k)}" for k in c.only_baseline),
        *(f"only in current, not compared: {level_name(k)}" for k in c.only_current),
        *c.notes,
    ]
    if extra:
        lines += ["", *(f"- {_md_cell(x)}" for x in extra)]
    return "\n".join(lines) + "\n"


def to_junit(comparison: Comparison) -> str:
    """JUnit XML: one testcase per level x gate; a regression is a <failure>."""
    c = comparison
    failures = len(c.regressions)
    suites = ET.Element(
        "testsuites",
        name="perfkit compare",
        tests=str(len(c.checks)),
        failures=str(failures),
        errors="0",
        time="0",
    )
    suite = ET.SubElement(
        suites,
        "testsuite",
        name=f"perfkit compare {c.model}",
        tests=str(len(c.checks)),
        failures=str(failures),
        errors="0",
        skipped="0",
        time="0",
    )
    props = ET.SubElement(suite, "properties")
    for name, value in (
        ("model", c.model),
        ("baseline", c.baseline_label),
        ("baseline_started_at", c.baseline_started_at),
        ("current", c.current_label),
        ("current_started_at", c.current_started_at),
    ):
        ET.SubElement(props, "property", name=name, value=value)
    for check in c.checks:
        mode, level, batch = check.key
        case = ET.SubElement(
            suite,
            "testcase",
            classname=f"perfkit.compare.{c.model}.{mode}_{level:g}.batch_{batch}",
            name=f"{check.gate} {check.limit}",
            time="0",
        )
        if not check.passed:
            failure = ET.SubElement(case, "failure", type="regression", message=check.describe)
            failure.text = (
                f"baseline {_fmt(check.baseline, check.unit)} {check.unit}, current "
                f"{_fmt(check.current, check.unit)} {check.unit}, change {change_text(check)}, "
                f"limit {check.limit}"
            )
    if c.notes or c.only_baseline or c.only_current:
        out = ET.SubElement(suite, "system-out")
        out.text = "\n".join(
            [
                *c.notes,
                *(f"only in baseline: {level_name(k)}" for k in c.only_baseline),
                *(f"only in current: {level_name(k)}" for k in c.only_current),
            ]
        )
    ET.indent(suites)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"
    )


def summary_line(comparison: Comparison) -> str:
    regressions = comparison.regressions
    if not regressions:
        return f"no regression in {len(comparison.checks)} check(s)"
    shown = "; ".join(c.short for c in regressions[:3])
    more = f"; and {len(regressions) - 3} more (see the table)" if len(regressions) > 3 else ""
    return f"{len(regressions)} regression(s): {shown}{more}"


__all__ = [
    "DEFAULT_GATES",
    "Comparison",
    "GateCheck",
    "Gates",
    "compare_runs",
    "parse_latency_gate",
    "parse_percent",
    "summary_line",
    "table_rows",
    "to_junit",
    "to_markdown",
]
