"""Regression gates: compare a current run with a baseline run level by level, with statistics.

Levels match on (mode, level, batch size); the repeats of a level (`perfkit run --repeats N`) are
pooled. A gate checks one metric per matched level: throughput may drop by at most N %, a latency
statistic may rise by at most N %, the current error rate may be at most N %. Throughput and
latency checks get a bootstrap confidence interval of the change (`perfkit.report.stats`, whose
docstring justifies the method) and fail only when the whole interval is past the limit; an
interval across the limit is "inconclusive" (`Comparison.inconclusive`; the CLI exits 0 with a
warning unless --fail-on-inconclusive). A side without per-window data (a perf_analyzer CSV, a
single --request-count window without its profile export) is compared by percentage only, and
the check says so. `to_markdown` and `to_junit` render a `Comparison` for CI. Results that
cannot be compared (another model, a tune, no level in common) raise `ConfigError`.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence

from perfkit.errors import ConfigError
from perfkit.report import stats
from perfkit.report.gates import (
    DEFAULT_GATES,
    LATENCY_STATS,
    Comparison,
    GateCheck,
    Gates,
    LevelKey,
    Status,
    change_text,
    ci_text,
    fmt,
    level_name,
    load_name,
    parse_latency_gate,
    parse_percent,
)
from perfkit.results import Measurement, RunResult, TuneResult

RawRequests = stats.RawRequests
NO_WINDOWS_NOTE = "baseline has no per-window data: compared by percentage only"

# ---------------------------------------------------------------------------------------------
# Comparison


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


_Level = list[tuple[Measurement, RawRequests | None]]


def _index(run: RunResult, raw: Sequence[RawRequests | None] | None) -> dict[LevelKey, _Level]:
    """Each level's repeats with their requests. Without --repeats, a level measured twice (e.g.
    by a binary search) counts with its last measurement."""
    out: dict[LevelKey, _Level] = {}
    aligned = raw is not None and len(raw) == len(run.measurements)
    for i, m in enumerate(run.measurements):
        r = raw[i] if aligned and raw is not None else None
        if m.repeat == 0:
            out[_key(m)] = []
        out.setdefault(_key(m), []).append((m, r))
    return out


def _as_run(result: RunResult | TuneResult, label: str) -> RunResult:
    if isinstance(result, RunResult):
        return result
    raise ConfigError(
        f"{label}: is a tune result; `perfkit compare` compares runs. Measure the tuned "
        "config with `perfkit run --output-dir DIR` and compare that."
    )


class _Decider:
    """Builds the throughput and latency checks of a level, with bootstrap intervals."""

    def __init__(self, confidence: float, resamples: int, seed: int) -> None:
        self.confidence, self.resamples, self.seed = confidence, resamples, seed
        self.percentage_only = False

    def check(self, key: LevelKey, gate: str, unit: str, base: float, cur: float, limit_pct: float,
              higher_is_worse: bool, blocks: tuple[stats.Blocks | None, stats.Blocks | None],
              stat: str) -> GateCheck:  # fmt: skip
        change = _change_pct(base, cur)
        low = high = None
        if stats.can_bootstrap(blocks[0], blocks[1], stat) and math.isfinite(change):
            assert blocks[0] is not None
            assert blocks[1] is not None
            iv = stats.change_interval(
                blocks[0], blocks[1], stat, baseline_value=base, current_value=cur,
                confidence=self.confidence, resamples=self.resamples, seed=self.seed,
            )  # fmt: skip
            low, high = iv.low_pct, iv.high_pct
        else:
            self.percentage_only = True
        lo, hi = (low, high) if low is not None and high is not None else (change, change)
        # How much worse, at the interval's worst and best ends (a drop is worse for throughput).
        worst, best = (hi, lo) if higher_is_worse else (-lo, -hi)
        status: Status = (
            "fail" if best > limit_pct else "pass" if worst <= limit_pct else "inconclusive"
        )
        return GateCheck(
            key=key, gate=gate, unit=unit, baseline=base, current=cur, change_pct=change,
            limit=f"{'increase' if higher_is_worse else 'drop'} ≤ {limit_pct:g}%",
            status=status, method="bootstrap" if low is not None else "percentage",
            low_pct=low, high_pct=high, confidence=self.confidence,
        )  # fmt: skip


def compare_runs(
    baseline: RunResult | TuneResult,
    current: RunResult | TuneResult,
    gates: Gates = DEFAULT_GATES,
    *,
    baseline_label: str = "baseline",
    current_label: str = "current",
    baseline_requests: Sequence[RawRequests | None] | None = None,
    current_requests: Sequence[RawRequests | None] | None = None,
    confidence: float = stats.DEFAULT_CONFIDENCE,
    resamples: int = stats.DEFAULT_RESAMPLES,
    seed: int = stats.DEFAULT_SEED,
) -> Comparison:
    """Check every gate at every level the two runs have in common.

    `*_requests` (optional, aligned with each run's measurements) are the per-request latencies
    of a run's profile export (`perfkit.report.pa_import.read_requests`); without them the
    bootstrap uses repeats or windows. A baseline with an empty `model` (a perf_analyzer CSV)
    matches any model.
    """
    baseline = _as_run(baseline, baseline_label)
    current = _as_run(current, current_label)
    if baseline.model and baseline.model != current.model:
        raise ConfigError(
            f"{baseline_label} measured model {baseline.model!r} but {current_label} measured "
            f"{current.model!r}; compare results of the same model."
        )
    if not 0.5 <= confidence < 1.0:
        raise ConfigError(f"--confidence {confidence * 100:g}%: give a value from 50% to 99.9%.")
    base, cur = _index(baseline, baseline_requests), _index(current, current_requests)
    matched = tuple(k for k in base if k in cur)
    if not matched:
        raise ConfigError(
            f"{baseline_label} and {current_label} have no load level in common "
            f"(baseline: {'; '.join(map(level_name, base)) or 'none'}; current: "
            f"{'; '.join(map(level_name, cur)) or 'none'}). Run both with the same "
            "--concurrency-range or --request-rate-range and batch size."
        )
    decide = _Decider(confidence, resamples, seed)
    checks: list[GateCheck] = []
    for key in matched:
        b, c = stats.pooled(base[key]), stats.pooled(cur[key])
        blocks = (stats.level_blocks(base[key]), stats.level_blocks(cur[key]))
        if gates.max_throughput_drop_pct is not None:
            checks.append(decide.check(
                key, "throughput", "infer/s", b.throughput_infer_per_s, c.throughput_infer_per_s,
                gates.max_throughput_drop_pct, False, blocks, "throughput",
            ))  # fmt: skip
        for stat, limit in gates.max_latency_increase_pct.items():
            bv, cv = _latency_us(b, stat) / 1000.0, _latency_us(c, stat) / 1000.0
            checks.append(decide.check(
                key, f"{stat} latency", "ms", bv, cv, limit, True, blocks, stat
            ))  # fmt: skip
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
                    status="pass" if ce <= gates.max_error_rate_pct else "fail",
                    method="absolute",
                    confidence=confidence,
                )
            )
    notes = []
    if not any(m.windows for m in baseline.measurements):
        notes.append(NO_WINDOWS_NOTE)
    elif decide.percentage_only:
        notes.append(
            "some checks had too little per-window data for an interval and were compared by "
            "percentage only: run with --repeats 3 or more (or keep the --output-dir's "
            "profile_export.json next to results.json)"
        )
    if baseline.config_hash and baseline.config_hash != current.config_hash:
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
        confidence=confidence,
    )


# ---------------------------------------------------------------------------------------------
# Renderings

_MD_RESULT = {
    "pass": "✅ ok",
    "fail": "❌ **regression**",
    "inconclusive": "⚠️ inconclusive, measure more",
}


def table_rows(comparison: Comparison) -> list[list[str]]:
    """Rows of the differences table (columns: TABLE_HEAD)."""
    return [
        [
            load_name(c.key),
            str(c.key[2]),
            f"{c.gate} ({c.unit})",
            fmt(c.baseline, c.unit),
            fmt(c.current, c.unit),
            change_text(c),
            ci_text(c),
            c.limit,
            c.verdict,
        ]
        for c in comparison.checks
    ]


TABLE_HEAD = (
    "Load",
    "Batch",
    "Gate",
    "Baseline",
    "Current",
    "Change",
    "Interval",
    "Limit",
    "Result",
)


def verdict_text(comparison: Comparison) -> str:
    n, k = len(comparison.regressions), len(comparison.inconclusive)
    if n:
        return f"❌ {n} regression{'s' if n != 1 else ''}"
    if k:
        return f"⚠️ no regression shown, {k} inconclusive (measure more)"
    return "✅ no regression"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(comparison: Comparison) -> str:
    """A GitHub step summary: verdict, what was compared, the table, notes."""
    c = comparison
    lines = [
        f"## perfkit compare: {verdict_text(c)}",
        "",
        f"Model `{_md_cell(c.model)}`: baseline `{_md_cell(c.baseline_label)}` "
        f"({_md_cell(c.baseline_started_at)}) against current `{_md_cell(c.current_label)}` "
        f"({_md_cell(c.current_started_at)}); {len(c.matched)} load level(s) compared, "
        f"{len(c.checks)} check(s). A check fails only when its whole "
        f"{c.confidence * 100:g}% confidence interval is past the limit; an interval across "
        "the limit is inconclusive.",
        "",
        "| " + " | ".join(TABLE_HEAD) + " |",
        "|---|---:|---|---:|---:|---:|---|---|---|",
    ]
    for row, check in zip(table_rows(c), c.checks, strict=True):
        row[-1] = _MD_RESULT[check.status]
        lines.append("| " + " | ".join(_md_cell(x) for x in row) + " |")
    extra = [
        *(f"only in baseline, not compared: {level_name(k)}" for k in c.only_baseline),
        *(f"only in current, not compared: {level_name(k)}" for k in c.only_current),
        *c.notes,
    ]
    if extra:
        lines += ["", *(f"- {_md_cell(x)}" for x in extra)]
    return "\n".join(lines) + "\n"


def to_junit(comparison: Comparison, *, fail_on_inconclusive: bool = False) -> str:
    """JUnit XML: one testcase per level x gate; a regression is a <failure>, an inconclusive
    check a <skipped> (a <failure> with `fail_on_inconclusive`)."""
    c = comparison
    failures = len(c.regressions) + (len(c.inconclusive) if fail_on_inconclusive else 0)
    skipped = 0 if fail_on_inconclusive else len(c.inconclusive)
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
        skipped=str(skipped),
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
        detail = (
            f"baseline {fmt(check.baseline, check.unit)} {check.unit}, current "
            f"{fmt(check.current, check.unit)} {check.unit}, change {change_text(check)} "
            f"({ci_text(check)}), limit {check.limit}"
        )
        if check.status == "fail" or (check.status == "inconclusive" and fail_on_inconclusive):
            kind = "regression" if check.status == "fail" else "inconclusive"
            failure = ET.SubElement(case, "failure", type=kind, message=check.describe)
            failure.text = detail
        elif check.status == "inconclusive":
            skip = ET.SubElement(case, "skipped", message="inconclusive, measure more")
            skip.text = detail
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
    k = len(comparison.inconclusive)
    if not regressions and k:
        shown = "; ".join(c.short for c in comparison.inconclusive[:3])
        more = f"; and {k - 3} more" if k > 3 else ""
        return (
            f"no regression shown in {len(comparison.checks)} check(s), but {k} inconclusive "
            f"(measure more, e.g. --repeats 5 or a larger --request-count): {shown}{more}"
        )
    if not regressions:
        return f"no regression in {len(comparison.checks)} check(s)"
    shown = "; ".join(c.short for c in regressions[:3])
    more = f"; and {len(regressions) - 3} more (see the table)" if len(regressions) > 3 else ""
    return f"{len(regressions)} regression(s): {shown}{more}"


__all__ = [
    "DEFAULT_GATES",
    "NO_WINDOWS_NOTE",
    "Comparison",
    "GateCheck",
    "Gates",
    "RawRequests",
    "compare_runs",
    "error_rate_pct",
    "level_name",
    "parse_latency_gate",
    "parse_percent",
    "summary_line",
    "table_rows",
    "to_junit",
    "to_markdown",
    "verdict_text",
]
