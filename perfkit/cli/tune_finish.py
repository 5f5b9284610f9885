"""`perfkit tune`'s tables of what ran after the search: the top configs' load sweeps (--top-k)
and the validation on another server (--validate-on)."""

from __future__ import annotations

from rich.table import Table

from perfkit.report.labels import describe_load, level_text, metric_axis
from perfkit.results import TuneResult, Validation


def _ms(us: float) -> str:
    return f"{us / 1000.0:,.2f}"


def load_sweep_table(result: TuneResult) -> Table | None:
    """One row per config and level: throughput, p50 and p99 latency; None without sweeps."""
    if not result.load_sweeps:
        return None
    table = Table(title=f"{result.model}: top {len(result.load_sweeps)} configs over a load sweep")
    for col in ("#", "variant", "load", "infer/s", "p50 ms", "p99 ms", "note"):
        right = col in ("infer/s", "p50 ms", "p99 ms")
        table.add_column(col, justify="right" if right else "left", no_wrap=col != "note")
    for s in result.load_sweeps:
        name = s.variant_name.rsplit("_config_", 1)[-1]
        for m in s.measurements:
            load = level_text(m.mode, m.level) + (f" b{m.batch_size}" if m.batch_size != 1 else "")
            table.add_row(
                str(s.rank), name, load, f"{m.throughput_infer_per_s:,.1f}",
                _ms(m.latency.p50_us), _ms(m.latency.p99_us), "" if m.stable else "unstable",
            )  # fmt: skip
        for error in s.errors:
            table.add_row(str(s.rank), name, "", "", "", "", error)
    return table


def _value(metric: str, value: float | None) -> str:
    if value is None:
        return ""
    _, scale = metric_axis(metric)
    return f"{value * scale:,.3g}" if scale != 1.0 else f"{value:,.1f}"


def validation_table(result: TuneResult) -> Table | None:
    """Each validated config on both servers, with its rank on each; None without a validation."""
    v: Validation | None = result.validation
    if v is None:
        return None
    winner = "n/a" if v.same_winner is None else ("yes" if v.same_winner else "no")
    tau = "n/a" if v.kendall_tau is None else f"{v.kendall_tau:.2f}"
    label, _ = metric_axis(v.metric)
    table = Table(
        title=f"validation on {v.url} at {describe_load(v.load) or 'the best load'}: "
        f"same winner {winner}, Kendall tau {tau}",
        caption=v.error or None,
    )
    for col in ("variant", "rank tune", "rank there", f"{label} here", f"{label} there", "note"):
        table.add_column(col, justify="left" if col in ("variant", "note") else "right")
    for c in v.configs:
        here = v.search_ranking.index(c.trial) + 1 if c.trial in v.search_ranking else None
        there = v.target_ranking.index(c.trial) + 1 if c.trial in v.target_ranking else None
        table.add_row(
            c.variant_name.rsplit("_config_", 1)[-1],
            "" if here is None else str(here), "" if there is None else str(there),
            _value(v.metric, c.search_value), _value(v.metric, c.target_value), c.error,
        )  # fmt: skip
    return table
