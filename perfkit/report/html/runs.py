"""The runs section of the HTML report: the overlaid figures (GPU metrics among them when
collected), then per run its settings, levels table, scraped metrics, messages and stability
windows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from html import escape

from perfkit.report import plots
from perfkit.report.html.parts import Figures, load, message_list, ms, num, table, tag
from perfkit.report.schema import level_gpus
from perfkit.results import Measurement, RunResult

# Per result, the columns of the delta table: (heading, value getter, whether lower is better).
_DELTAS: tuple[tuple[str, Callable[[Measurement], float], bool], ...] = (
    ("Throughput", lambda m: m.throughput_infer_per_s, False),
    ("p50 latency", lambda m: m.latency.p50_us, True),
    ("p99 latency", lambda m: m.latency.p99_us, True),
)


def _key(m: Measurement) -> tuple[str, float, int]:
    return (m.mode, m.level, m.batch_size)


def _delta_cell(base: float, cur: float, lower_better: bool) -> str:
    # Hook: perfkit.report.compare offers percentage changes only so far; when it gives a
    # confidence interval for a change, this cell shows it ("+4.1% [+1.2, +7.0]").
    if not base:
        return ""
    pct = (cur - base) / abs(base) * 100.0
    good = (pct < 0) if lower_better else (pct > 0)
    return tag(f"{pct:+.1f}%", "ok" if good else ("bad" if pct else "warn"))


def delta_table(runs: Sequence[tuple[str, RunResult]]) -> str:
    """Every result after the first against the first (the baseline), level by level: the
    baseline's throughput, p50 and p99 and each other result's change in percent. Empty for one
    result or no level in common."""
    if len(runs) < 2:
        return ""
    (base_label, base), others = runs[0], runs[1:]
    index = [{_key(m): m for m in run.measurements} for _, run in others]
    keys = [k for k in (_key(m) for m in base.measurements) if any(k in i for i in index)]
    if not keys:
        return ""
    head = ["Load", "Batch"]
    head += [f"{escape(base_label)}: {name}" for name, _, _ in _DELTAS]
    head += [f"{escape(lb)}: Δ {name}" for lb, _ in others for name, _, _ in _DELTAS]
    rows = []
    base_index = {_key(m): m for m in base.measurements}
    for k in keys:
        bm = base_index[k]
        row = [escape(load(bm)), str(bm.batch_size)]
        row += [
            num(bm.throughput_infer_per_s),
            ms(bm.latency.p50_us) + " ms",
            ms(bm.latency.p99_us) + " ms",
        ]
        for i in index:
            cm = i.get(k)
            row += [
                _delta_cell(get(bm), get(cm), lower) if cm else "not measured"
                for _, get, lower in _DELTAS
            ]
        rows.append(row)
    note = (
        f'<p class="muted">Change of each result against <b>{escape(base_label)}</b> at the '
        "same load (throughput up and latency down are green). One measurement each: a change "
        "within the levels' noise is no regression; <code>perfkit compare</code> gates it.</p>"
    )
    return "<h3>Changes against the baseline</h3>" + note + table(head, rows, left=1)


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


def runs_section(runs: Sequence[tuple[str, RunResult]], fig: Figures) -> str:
    several = len(runs) > 1
    side = " (results overlaid)" if several else ""
    parts = ["<h2>Runs</h2>", delta_table(runs)]
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
    for label, run in runs:
        parts.append(f"<h3>{escape(label)}: {escape(run.model)} on {escape(run.server.kind)}</h3>")
        parts.append(_settings(run.settings))
        parts.append(_run_table(run))
        parts.append(_metrics_table(run))
        parts.append(message_list(run.messages, run.measurements))
        parts.append(
            fig(
                plots.latency_histograms(label, run),
                f"{label}: service latency histogram of each level; bins between the recorded "
                "percentiles (min, p50, p90, p95, p99, max), bar area = share of requests.",
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
