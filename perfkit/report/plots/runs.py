"""Figures of runs: throughput and latency against load, throughput against latency, the
server-side breakdown, stability windows, open-loop corrected latency, GPU metrics against load. Each takes `(label, run)`
pairs and overlays them; returns None when it has nothing to show.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from perfkit.report.plots.figure import (
    color_at,
    finish,
    latency_scale,
    load_ticks,
    new_figure,
)
from perfkit.report.schema import GpuLevel, level_gpus
from perfkit.report.stats import pooled
from perfkit.results import Measurement, RunResult

Labelled = Sequence[tuple[str, RunResult]]

_PCTS = ("p50", "p90", "p95", "p99")
_PCT_STYLES = {"p50": "-", "p90": "--", "p95": "-.", "p99": ":"}
_MODE_AXIS = {
    "concurrency": "Concurrency (requests in flight)",
    "request_rate": "Request rate (requests/s)",
}
# Server-side breakdown components: (label, getter in µs), stacked bottom to top.
_BREAKDOWN: tuple[tuple[str, Callable[[Measurement], float]], ...] = (
    ("Queue", lambda m: m.server.queue_us if m.server else 0.0),
    ("Compute input", lambda m: m.server.compute_input_us if m.server else 0.0),
    ("Compute infer", lambda m: m.server.compute_infer_us if m.server else 0.0),
    ("Compute output", lambda m: m.server.compute_output_us if m.server else 0.0),
    ("Server overhead", lambda m: m.server.overhead_us if m.server else 0.0),
    (
        "Network + server send/recv",
        lambda m: m.server.network_server_send_recv_us if m.server else 0.0,
    ),
    ("Client send/recv", lambda m: m.client_send_us + m.client_recv_us),
)
_BREAKDOWN_COLORS = ("#d62728", "#9edae5", "#1f77b4", "#aec7e8", "#c7c7c7", "#ff9896", "#98df8a")


@dataclass(frozen=True, slots=True)
class _Series:
    label: str
    mode: str
    batch: int
    color: str
    points: tuple[Measurement, ...]  # sorted by level


def _series(runs: Labelled) -> list[_Series]:
    """One series per (result, mode, batch size), one point per load level sorted for lines: the
    repeats of a level (`perfkit run --repeats`) pooled into one point (`stats.pooled`), as the
    summary and `compare` see them, not a zig-zag through each repeat."""
    out: list[_Series] = []
    for i, (label, run) in enumerate(runs):
        keys = sorted({(m.mode, m.batch_size) for m in run.measurements})
        several_batches = len({b for _, b in keys}) > 1
        for mode, batch in keys:
            by_level: dict[float, list[Measurement]] = {}
            for m in run.measurements:  # a level measured again without --repeats: the last
                if (m.mode, m.batch_size) == (mode, batch):
                    if m.repeat == 0:
                        by_level[m.level] = []
                    by_level.setdefault(m.level, []).append(m)
            pts = [pooled([(m, None) for m in ms]) for _, ms in sorted(by_level.items())]
            name = f"{label} (batch {batch})" if several_batches else label
            out.append(_Series(name, mode, batch, color_at(i), tuple(pts)))
    return out


def _mode_axes(fig: Figure, series: Sequence[_Series]) -> dict[str, Axes]:
    modes = [m for m in _MODE_AXIS if any(s.mode == m for s in series)]
    axes = fig.subplots(1, len(modes), squeeze=False)[0]
    return dict(zip(modes, axes, strict=True))


def throughput_vs_load(runs: Labelled) -> Figure | None:
    series = _series(runs)
    if not series:
        return None
    fig = new_figure()
    axes = _mode_axes(fig, series)
    for s in series:
        ax = axes[s.mode]
        ax.plot(
            [m.level for m in s.points],
            [m.throughput_infer_per_s for m in s.points],
            marker="o",
            color=s.color,
            label=s.label,
        )
        unstable = [m for m in s.points if not m.stable]
        if unstable:
            ax.plot(
                [m.level for m in unstable],
                [m.throughput_infer_per_s for m in unstable],
                "x",
                color="black",
                markersize=9,
                label=f"{s.label}: unstable",
            )
    for mode, ax in axes.items():
        ax.set_ylim(bottom=0)
        load_ticks(ax, mode)
        finish(ax, "Throughput vs load", _MODE_AXIS[mode], "Throughput (infer/s)")
    return fig


def latency_vs_load(runs: Labelled) -> Figure | None:
    series = _series(runs)
    if not series:
        return None
    fig = new_figure()
    axes = _mode_axes(fig, series)
    single = len(series) == 1
    # Several results: p50 and p99 only (two lines per result, not four), the colour the result.
    pcts = _PCTS if single else ("p50", "p99")
    for s in series:
        ax = axes[s.mode]
        for j, pct in enumerate(pcts):
            ax.plot(
                [m.level for m in s.points],
                [getattr(m.latency, f"{pct}_us") / 1000.0 for m in s.points],
                marker=".",
                linestyle=_PCT_STYLES[pct],
                color=color_at(j) if single else s.color,
                label=pct if single else f"{s.label} {pct}",
            )
    for mode, ax in axes.items():
        values = [
            getattr(m.latency, f"{p}_us") / 1000.0
            for s in series
            if s.mode == mode
            for m in s.points
            for p in pcts
        ]
        latency_scale(ax, values)
        load_ticks(ax, mode)
        finish(ax, "Latency percentiles vs load", _MODE_AXIS[mode], "Latency (ms)")
    return fig


def throughput_vs_latency(runs: Labelled, percentile: str = "p99") -> Figure | None:
    series = _series(runs)
    if not series:
        return None
    fig = new_figure()
    ax = fig.subplots()
    for s in series:
        xs = [getattr(m.latency, f"{percentile}_us") / 1000.0 for m in s.points]
        ys = [m.throughput_infer_per_s for m in s.points]
        mode_tag = "" if len({x.mode for x in series}) == 1 else f" [{s.mode}]"
        ax.plot(xs, ys, marker="o", color=s.color, label=s.label + mode_tag)
        for m, x, y in zip(s.points, xs, ys, strict=True):
            ax.annotate(
                f"{m.level:g}",
                (x, y),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize="small",
                color=s.color,
            )
    latency_scale(
        ax, [getattr(m.latency, f"{percentile}_us") / 1000.0 for s in series for m in s.points], "x"
    )
    ax.set_ylim(bottom=0)
    finish(
        ax,
        f"Throughput vs {percentile} latency (points labelled by load level)",
        f"{percentile} latency (ms)",
        "Throughput (infer/s)",
    )
    return fig


def server_breakdown(runs: Labelled) -> Figure | None:
    """Stacked bars per load level of where a request's time goes; one panel per result, side by
    side on a shared time axis."""
    series = [s for s in _series(runs) if any(m.server for m in s.points)]
    if not series:
        return None
    width = max(7.0, 0.5 * sum(len(s.points) for s in series) + 2.5 * len(series))
    fig = new_figure(max(min(width, 16.0), 12.0), 4.8)
    panels = fig.subplots(1, len(series), squeeze=False, sharey=True)[0]
    for ax, s in zip(panels, series, strict=True):
        xs = list(range(len(s.points)))
        bottom = [0.0] * len(s.points)
        for (name, get), color in zip(_BREAKDOWN, _BREAKDOWN_COLORS, strict=True):
            vals = [get(m) / 1000.0 for m in s.points]
            ax.bar(xs, vals, 0.7, bottom=bottom, color=color, label=name)
            bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
        tag = "c" if s.mode == "concurrency" else "r"
        ax.set_xticks(xs, [f"{tag}={m.level:g}" for m in s.points])
        finish(
            ax,
            s.label,
            "Load level" if len(series) > 1 else "Load level (c = concurrency, r = request rate)",
            "Time per request (ms)" if ax is panels[0] else "",
            legend=False,
        )
    handles, labels = panels[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=4, fontsize="medium")
    fig.suptitle("Where a request's time goes (server statistics, average per request)")
    return fig


def stability_windows(label: str, run: RunResult) -> Figure | None:
    """The measurement windows of each level: throughput and stability latency per window;
    filled markers are the windows merged into the reported numbers."""
    # A level measured in one window has no stability to show (one point, no trend).
    levels = [m for m in run.measurements if len(m.windows) > 1]
    if not levels:
        return None
    ncols = min(4, len(levels))
    nrows = math.ceil(len(levels) / ncols)
    fig = new_figure(12.0, 3.0 * nrows + 1.0)
    grid = fig.subplots(nrows, ncols, squeeze=False)
    for ax in grid.flat[len(levels) :]:
        ax.set_visible(False)
    for ax, m in zip(grid.flat, levels, strict=False):
        xs = [w.index for w in m.windows]
        twin = ax.twinx()
        ax.plot(xs, [w.throughput_infer_per_s for w in m.windows], color=color_at(0), lw=1)
        twin.plot(xs, [w.latency_stability_us / 1000.0 for w in m.windows], color=color_at(1), lw=1)
        for w in m.windows:
            face = "full" if w.merged else "none"
            ax.plot([w.index], [w.throughput_infer_per_s], "o", color=color_at(0), fillstyle=face)
            twin.plot(
                [w.index], [w.latency_stability_us / 1000.0], "s", color=color_at(1), fillstyle=face
            )
        merged = [w.index for w in m.windows if w.merged]
        if merged:
            ax.axvspan(min(merged) - 0.4, max(merged) + 0.4, color="#2ca02c", alpha=0.08)
        tag = "c" if m.mode == "concurrency" else "r"
        ax.set_title(
            f"{tag}={m.level:g}, batch {m.batch_size}" + ("" if m.stable else " (unstable)"),
            fontsize="small",
        )
        ax.set_xlabel("Window", fontsize="small")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(min(xs) - 0.5, max(xs) + 0.5)
        ax.set_ylabel("Throughput (infer/s)", fontsize="small", color=color_at(0))
        twin.set_ylabel("Latency (ms)", fontsize="small", color=color_at(1))
        # Headroom above the highest window so that the markers are not cut by the frame.
        ax.set_ylim(0, 1.2 * max(w.throughput_infer_per_s for w in m.windows) or 1.0)
        twin.set_ylim(0, 1.2 * max(w.latency_stability_us for w in m.windows) / 1000.0 or 1.0)
        ax.tick_params(labelsize="small")
        twin.tick_params(labelsize="small")
    fig.suptitle(f"Stability windows: {label} (filled = merged, shaded = merged range)")
    fig.legend(
        [
            Line2D([], [], color=color_at(0), marker="o"),
            Line2D([], [], color=color_at(1), marker="s"),
            Line2D([], [], color="grey", marker="o", fillstyle="none", ls=""),
        ],
        ["window throughput", "window latency", "not merged"],
        loc="outside lower center",
        ncols=3,
        fontsize="medium",
    )
    return fig


def open_loop_latency(runs: Labelled) -> Figure | None:
    """Open loop: service latency (done - sent) against corrected latency (done - intended)."""
    series = [
        s
        for s in _series(runs)
        if s.mode == "request_rate" and any(m.corrected_latency for m in s.points)
    ]
    if not series:
        return None
    fig = new_figure()
    ax = fig.subplots()
    for s in series:
        pts = [m for m in s.points if m.corrected_latency]
        xs = [m.level for m in pts]
        for pct, style in (("p50", "-"), ("p99", "--")):
            ax.plot(
                xs,
                [getattr(m.latency, f"{pct}_us") / 1000.0 for m in pts],
                style,
                marker="o",
                color=s.color,
                fillstyle="none",
                label=f"{s.label} service {pct}",
            )
            ax.plot(
                xs,
                [getattr(m.corrected_latency, f"{pct}_us") / 1000.0 for m in pts],
                style,
                marker="o",
                color=s.color,
                label=f"{s.label} corrected {pct}",
            )
    latency_scale(
        ax,
        [
            getattr(lat, f"{pct}_us") / 1000.0
            for s in series
            for m in s.points
            for lat in (m.latency, m.corrected_latency)
            if lat is not None
            for pct in ("p50", "p99")
        ],
    )
    finish(
        ax,
        "Open loop: corrected (from intended send) vs service latency",
        _MODE_AXIS["request_rate"],
        "Latency (ms)",
    )
    return fig


# GPU panels: (title, y label, GpuLevel value -> plotted value or None).
_GPU_PANELS: tuple[tuple[str, str, Callable[[GpuLevel], float | None]], ...] = (
    (
        "GPU utilization",
        "Utilization (%, mean)",
        lambda g: None if g.utilization is None else g.utilization * 100.0,
    ),
    ("GPU memory used", "Memory used (MB, peak)", lambda g: g.memory_used_mb),
    ("GPU power", "Power (W, mean)", lambda g: g.power_w),
)
_GPU_STYLES = ("-", "--", "-.", ":")


def gpu_vs_load(runs: Labelled) -> Figure | None:
    """GPU utilization, memory used and power against load, one line per result and GPU (the
    metrics collected with --collect-metrics); None when no level has any."""
    lines: list[tuple[_Series, str, list[tuple[float, GpuLevel]]]] = []
    for s in _series(runs):
        per: dict[str, list[tuple[float, GpuLevel]]] = {}
        for m in s.points:
            for g in level_gpus(m):
                per.setdefault(g.uuid, []).append((m.level, g))
        lines += [(s, uuid, pts) for uuid, pts in sorted(per.items())]
    if not lines:
        return None
    modes = {s.mode for s, _, _ in lines}
    xlabel = _MODE_AXIS[next(iter(modes))] if len(modes) == 1 else "Load level"
    fig = new_figure(12.0, 3.8)
    axes = fig.subplots(1, len(_GPU_PANELS), squeeze=False)[0]
    several = len({s.label for s, _, _ in lines}) > 1
    for ax, (title, ylabel, get) in zip(axes, _GPU_PANELS, strict=True):
        for s, uuid, pts in lines:
            xy = [(x, v) for x, g in pts if (v := get(g)) is not None]
            if not xy:
                continue
            gpu_index = sorted({u for t, u, _ in lines if t is s}).index(uuid)
            ax.plot(
                [x for x, _ in xy],
                [v for _, v in xy],
                marker="o",
                color=s.color,
                linestyle=_GPU_STYLES[gpu_index % len(_GPU_STYLES)],
                label=f"{s.label}: {uuid}" if several else uuid,
            )
        ax.set_ylim(bottom=0)
        finish(ax, title, xlabel, ylabel, legend=ax is axes[0])
    return fig
