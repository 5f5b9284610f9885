"""The runs section of the HTML report: the overlaid figures (GPU metrics among them when
collected), then per run its settings, levels table, scraped metrics, messages and stability
windows.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from perfkit.errors import ConfigError
from perfkit.report import compare, plots
from perfkit.report.gates import (
    DEFAULT_LATENCY_INCREASE,
    DEFAULT_THROUGHPUT_DROP_PCT,
    Comparison,
    GateCheck,
    Gates,
    change_text,
    ci_text,
    fmt,
    load_name,
)
from perfkit.report.html.parts import Figures, load, message_list, ms, num, table, tag
from perfkit.report.schema import level_gpus
from perfkit.report.stats import RawRequests
from perfkit.results import RunResult

# The delta table's gates: perfkit compare's defaults (throughput drop, p99 increase) plus p50.
_TABLE_GATES = Gates(
    max_throughput_drop_pct=DEFAULT_THROUGHPUT_DROP_PCT,
    max_latency_increase_pct={"p50": DEFAULT_LATENCY_INCREASE["p99"], **DEFAULT_LATENCY_INCREASE},
)
_VERDICT = {
    "pass": ("ok", "ok"),
    "fail": ("regression", "bad"),
    "inconclusive": ("inconclusive", "warn"),
}


def _change_cell(check: GateCheck) -> str:
    """The change, coloured by direction (green better, red worse), over its confidence interval
    and the gate's verdict."""
    worse = check.change_pct > 0 if check.gate != "throughput" else check.change_pct < 0
    kind = "bad" if worse else "ok" if check.change_pct else "warn"
    verdict, vkind = _VERDICT[check.status]
    return (
        f"{tag(change_text(check), kind)} {tag(verdict, vkind)}"
        f'<br><span class="muted">{escape(ci_text(check))}</span>'
    )


def _verdict(comparison: Comparison) -> str:
    n, k = len(comparison.regressions), len(comparison.inconclusive)
    if n:
        return tag(f"{n} regression{'s' if n != 1 else ''}", "bad")
    if k:
        return tag(f"no regression shown, {k} inconclusive (measure more)", "warn")
    return tag("no regression", "ok")


def _pair_table(
    base_label: str,
    base: RunResult,
    label: str,
    run: RunResult,
    base_raw: Sequence[RawRequests | None] | None,
    raw: Sequence[RawRequests | None] | None,
) -> str:
    try:
        comparison = compare.compare_runs(
            base,
            run,
            _TABLE_GATES,
            baseline_label=base_label,
            current_label=label,
            baseline_requests=base_raw,
            current_requests=raw,
        )
    except ConfigError as exc:  # another model, or no level in common
        return (
            f'<p class="muted">{escape(label)} against {escape(base_label)}: {escape(str(exc))}</p>'
        )
    gates = list(dict.fromkeys(c.gate for c in comparison.checks))
    units = {c.gate: c.unit for c in comparison.checks}
    head = ["Load", *(f"{escape(base_label)}: {escape(g)} ({escape(units[g])})" for g in gates)]
    head += [f"{escape(label)}: Δ {escape(g)}" for g in gates]
    rows = []
    for key in comparison.matched:
        checks = {c.gate: c for c in comparison.checks if c.key == key}
        row = [escape(load_name(key))]
        row += [
            escape(fmt(checks[g].baseline, checks[g].unit)) if g in checks else "" for g in gates
        ]
        row += [_change_cell(checks[g]) if g in checks else "" for g in gates]
        rows.append(row)
    notes = "".join(f"<li>{escape(n)}</li>" for n in comparison.notes)
    return (
        f'<p class="muted"><b>{escape(label)}</b> against <b>{escape(base_label)}</b>: '
        f"{_verdict(comparison)}</p>"
        + table(head, rows, left=1)
        + (f'<ul class="messages">{notes}</ul>' if notes else "")
    )


def delta_table(
    runs: Sequence[tuple[str, RunResult]],
    requests: Sequence[Sequence[RawRequests | None] | None] = (),
) -> str:
    """Every result after the first against the first (the baseline), level by level, as
    `perfkit compare` decides it: the change of throughput, p50 and p99 with its confidence
    interval (a bootstrap over repeats, windows or requests) and the gate's verdict. Empty for one
    result."""
    if len(runs) < 2:
        return ""
    (base_label, base), others = runs[0], runs[1:]
    intro = (
        '<p class="muted">Changes at the same load, decided as <code>perfkit compare</code> does '
        f"with its default gates (throughput drop ≤ {DEFAULT_THROUGHPUT_DROP_PCT:g}%, p50 and "
        f"p99 increase ≤ {DEFAULT_LATENCY_INCREASE['p99']:g}%): green is better, red worse; a "
        "regression only when the whole confidence interval is past the gate.</p>"
    )
    raws = list(requests) or [None] * len(runs)
    tables = [
        _pair_table(base_label, base, lb, run, raws[0], raw)
        for (lb, run), raw in zip(others, raws[1:], strict=True)
    ]
    return "<h3>Changes against the baseline</h3>" + intro + "".join(tables)


def _settings(settings: dict[str, object]) -> str:
    if not settings:
        return ""
    items = ", ".join(
        f"<code>{escape(str(k))}</code>={escape(str(v))}" for k, v in settings.items()
    )
    return f'<p class="muted">Load settings: {items}</p>'


def _run_table(run: RunResult) -> str:
    head = [
        "Load",
        "Batch",
        "Stable",
        "Requests",
        "Errors",
        "Throughput (infer/s)",
        "avg (ms)",
        "p50 (ms)",
        "p90 (ms)",
        "p95 (ms)",
        "p99 (ms)",
        "Corrected p99 (ms)",
        "Server queue (ms)",
        "Compute infer (ms)",
        "Client CPU (µs/req)",
    ]
    rows = []
    for m in run.measurements:
        lat = m.latency
        stable = tag("yes", "ok") if m.stable else tag("no", "bad")
        if m.generator_saturated:
            stable += " " + tag("generator saturated", "warn")
        rows.append(
            [
                escape(load(m)),
                str(m.batch_size),
                stable,
                f"{m.request_count:,}",
                str(m.error_count),
                num(m.throughput_infer_per_s),
                ms(lat.avg_us),
                ms(lat.p50_us),
                ms(lat.p90_us),
                ms(lat.p95_us),
                ms(lat.p99_us),
                ms(m.corrected_latency.p99_us) if m.corrected_latency else "",
                ms(m.server.queue_us) if m.server else "",
                ms(m.server.compute_infer_us) if m.server else "",
                num(m.client_cpu_us_per_request),
            ]
        )
    if any(m.mode == "request_rate" for m in run.measurements):
        # Open loop: did the generator keep to its schedule?
        head += ["Sent (req/s)", "Late sends", "Send lag p99 (ms)"]
        for row, m in zip(rows, run.measurements, strict=True):
            open_loop = m.mode == "request_rate"
            row += [
                num(m.send_rate_rps) if open_loop else "",
                f"{m.late_send_count:,}" if open_loop else "",
                ms(m.send_lag_p99_us) if open_loop else "",
            ]
    return table(head, rows, left=1)


def _metrics_table(run: RunResult) -> str:
    """Scraped server metrics (e.g. GPU utilization, memory, power), one column per metric and
    GPU, when --collect-metrics was on."""
    cols = sorted({(n, g) for m in run.measurements for n, per in m.metrics.items() for g in per})
    if not cols:
        return ""
    head = ["Load", *(escape(f"{n} ({g})" if g else n) for n, g in cols)]
    rows = [
        [escape(load(m)), *(num(m.metrics.get(n, {}).get(g), 3) for n, g in cols)]
        for m in run.measurements
    ]
    return "<h3>Scraped server metrics</h3>" + table(head, rows, left=1)


def _gpu_section(runs: Sequence[tuple[str, RunResult]], fig: Figures) -> str:
    """GPU utilization, memory and power against load, when a run collected GPU metrics."""
    figure = fig(
        plots.gpu_vs_load(runs),
        "GPU metrics against load, per GPU (--collect-metrics: the server's nv_gpu_* metrics, "
        "or NVML read on this host): utilization and power the mean over the level, memory "
        "used the peak.",
    )
    if not figure:
        return ""
    totals = {
        g.uuid: g.memory_total_mb
        for _, run in runs
        for m in run.measurements
        for g in level_gpus(m)
        if g.memory_total_mb is not None
    }
    listed = ", ".join(f"<code>{escape(u)}</code> ({t:,.0f} MB)" for u, t in sorted(totals.items()))
    gpus = f'<p class="muted">GPUs (total memory): {listed}</p>' if listed else ""
    return f"<h3>GPU metrics</h3>{gpus}{figure}"


def runs_section(
    runs: Sequence[tuple[str, RunResult]],
    fig: Figures,
    requests: Sequence[Sequence[RawRequests | None] | None] | None = None,
) -> str:
    """`requests`, aligned with `runs`: each run's per-request data (its profile export, one
    entry per measurement) or None."""
    raws = list(requests) if requests is not None else [None] * len(runs)
    several = len(runs) > 1
    side = " (results overlaid)" if several else ""
    parts = ["<h2>Runs</h2>", delta_table(runs, raws)]
    parts.append(fig(plots.throughput_vs_load(runs), "Throughput against load" + side + "."))
    parts.append(
        fig(
            plots.latency_vs_load(runs),
            "Service latency percentiles (p50, p90, p95, p99) against load" + side + ".",
        )
    )
    parts.append(
        fig(
            plots.throughput_vs_latency(runs),
            "Throughput against p99 latency: up and to the left is better" + side + ".",
        )
    )
    parts.append(
        fig(
            plots.server_breakdown(runs),
            "Server-side breakdown from the statistics extension: queue, compute input, "
            "infer and output, server overhead, network + server send/recv, client send/recv.",
        )
    )
    parts.append(
        fig(
            plots.open_loop_latency(runs),
            "Open loop: latency measured from the intended send time (corrected for "
            "coordinated omission) against the service latency from the actual send.",
        )
    )
    parts.append(_gpu_section(runs, fig))
    for (label, run), raw in zip(runs, raws, strict=True):
        parts.append(f"<h3>{escape(label)}: {escape(run.model)} on {escape(run.server.kind)}</h3>")
        parts.append(_settings(run.settings))
        parts.append(_run_table(run))
        parts.append(_metrics_table(run))
        parts.append(message_list(run.messages, run.measurements))
        parts.append(
            fig(
                plots.latency_histograms(label, run, raw),
                f"{label}: service latency histogram of each level; "
                + (
                    "the requests of its profile_export.json"
                    if raw
                    else "bins between the recorded percentiles (min, p50, p90, p95, p99, max)"
                )
                + ", bar area = share of requests.",
            )
        )
        parts.append(
            fig(
                plots.latency_over_time(label, run),
                f"{label}: latency of each measurement window over the run, one colour per "
                "level; filled markers are the windows merged into the reported numbers.",
            )
        )
        parts.append(
            fig(
                plots.stability_windows(label, run),
                f"{label}: measurement windows per load level; filled markers are the windows "
                "merged into the reported numbers.",
            )
        )
    return "".join(parts)
