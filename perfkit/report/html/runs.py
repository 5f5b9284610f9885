"""The runs section of the HTML report: the overlaid figures, then per run its settings, levels
table, scraped metrics, messages and stability windows.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from perfkit.report import plots
from perfkit.report.html.parts import Figures, load, message_list, ms, num, table, tag
from perfkit.results import RunResult


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


def runs_section(runs: Sequence[tuple[str, RunResult]], fig: Figures) -> str:
    several = len(runs) > 1
    side = " (results overlaid)" if several else ""
    parts = ["<h2>Runs</h2>"]
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
    for label, run in runs:
        parts.append(f"<h3>{escape(label)}: {escape(run.model)} on {escape(run.server.kind)}</h3>")
        parts.append(_settings(run.settings))
        parts.append(_run_table(run))
        parts.append(_metrics_table(run))
        parts.append(message_list(run.messages, run.measurements))
        parts.append(
            fig(
                plots.stability_windows(label, run),
                f"{label}: measurement windows per load level; filled markers are the windows "
                "merged into the reported numbers.",
            )
        )
    return "".join(parts)
