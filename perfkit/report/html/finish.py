"""The parts of a tune's section on what ran after the search: the top configs over a full load
sweep (`TuneResult.load_sweeps`, a table and a figure) and the validation on another server
(`TuneResult.validation`, both rankings and each config's numbers on both servers)."""

from __future__ import annotations

from html import escape

from perfkit.report import plots
from perfkit.report.html.parts import Figures, ms, num, table, tag
from perfkit.report.labels import describe_load, level_text, metric_axis
from perfkit.results import TuneResult, Validation


def _load_sweeps(label: str, tune: TuneResult, fig: Figures) -> str:
    if not tune.load_sweeps:
        return ""
    rows: list[list[str]] = []
    for s in tune.load_sweeps:
        rows.extend(
            [
                str(s.rank), escape(s.variant_name), escape(level_text(m.mode, m.level)),
                str(m.batch_size), num(m.throughput_infer_per_s), ms(m.latency.p50_us),
                ms(m.latency.p99_us), "" if m.stable else tag("unstable", "warn"),
            ]
            for m in sorted(s.measurements, key=lambda m: m.level)
        )  # fmt: skip
        rows.extend(
            [str(s.rank), escape(s.variant_name), "", "", "", "", "", escape(e)] for e in s.errors
        )
    head = ["Rank", "Variant", "Load", "Batch", "Throughput (infer/s)", "p50 (ms)", "p99 (ms)", ""]
    return (
        "<h3>Top configs over a full load sweep</h3>"
        + fig(
            plots.load_sweep_curves(label, tune),
            "The top configs of the search re-measured at every load level: throughput and p99 "
            "latency against the load, one line per config (rank = the search's order).",
        )
        + table(head, rows, left=3)
    )


def _value(metric: str, value: float | None) -> str:
    return "" if value is None else num(value * metric_axis(metric)[1], 3)


def _validation(v: Validation) -> str:
    where = describe_load(v.load) or "the best's load"
    head_text = f"<h3>Validation on {escape(v.url)}</h3>"
    server = "" if v.server is None else f" ({v.server.kind} {v.server.version})"
    if v.error and not v.configs:
        return head_text + f'<p class="muted">Not done: {escape(v.error)}</p>'
    if v.same_winner is None:
        verdict = tag("not comparable", "warn")
    else:
        verdict = tag("same winner", "ok") if v.same_winner else tag("different winner", "bad")
    tau = "n/a" if v.kendall_tau is None else f"{v.kendall_tau:.2f}"
    label = escape(metric_axis(v.metric)[0])
    intro = (
        f"<p>The top {len(v.configs)} configs of the search measured at {escape(where)} on "
        f"{escape(v.url)}{escape(server)} and again on the tune's server, ranked by {label}: "
        f"{verdict}, Kendall tau {escape(tau)}. The search's ranking: "
        f"{escape(_ranks(v.search_ranking))}; the target's: {escape(_ranks(v.target_ranking))}."
        "</p>"
    )
    rows = []
    for c in v.configs:
        here = v.search_ranking.index(c.trial) + 1 if c.trial in v.search_ranking else ""
        there = v.target_ranking.index(c.trial) + 1 if c.trial in v.target_ranking else ""
        rows.append(
            [
                escape(c.variant_name), str(here), str(there),
                _value(v.metric, c.search_value), _value(v.metric, c.target_value),
                escape(c.error),
            ]
        )  # fmt: skip
    head = [
        "Variant", "Rank in the search", "Rank there", f"{label} here", f"{label} there", "Note"
    ]  # fmt: skip
    error = f'<p class="muted">{escape(v.error)}</p>' if v.error else ""
    return head_text + intro + table(head, rows, left=1) + error


def _ranks(ranking: tuple[int, ...]) -> str:
    return " > ".join(f"#{n}" for n in ranking) or "none"


def finish_parts(label: str, tune: TuneResult, fig: Figures) -> str:
    """The load-sweep and validation parts of one tune ("" when the tune has neither)."""
    parts = [_load_sweeps(label, tune, fig)]
    if tune.validation is not None:
        parts.append(_validation(tune.validation))
    return "".join(parts)
