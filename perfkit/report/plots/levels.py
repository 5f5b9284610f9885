"""Figures of one run's levels: each level's latency histogram and the latency over the run's time.

What a result keeps per level is its latency summary (min, p50/p90/p95/p99, any --percentile,
max over every request of the merged windows) and its measurement windows (start, throughput,
average and stability latency); the raw per-request timestamps go to --profile-export-file only.
So the histogram's bins are the quantiles the summary holds: exact shares of requests (50 % between
min and p50, 40 % between p50 and p90, ...), bins of unequal width, drawn as densities (share per
ms) so that a bar's area is its share.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from matplotlib.figure import Figure

from perfkit.report.labels import level_text
from perfkit.report.plots.figure import color_at, finish, log_axis, new_figure, wide_range
from perfkit.report.stats import RawRequests
from perfkit.results import LatencySummary, Measurement, RunResult


def quantile_bins(lat: LatencySummary) -> list[tuple[float, float, float]]:
    """(low ms, high ms, share of requests) per bin between consecutive recorded quantiles;
    empty when the level has no request."""
    if lat.count <= 0:
        return []
    points = {0.0: lat.min_us, 100.0: lat.max_us}
    points.update({50.0: lat.p50_us, 90.0: lat.p90_us, 95.0: lat.p95_us, 99.0: lat.p99_us})
    points.update({float(p): v for p, v in lat.extra_percentiles_us.items()})
    qs = sorted(points)
    bins = []
    for lo_q, hi_q in itertools.pairwise(qs):
        lo, hi = points[lo_q] / 1000.0, points[hi_q] / 1000.0
        if hi > lo:
            bins.append((lo, hi, (hi_q - lo_q) / 100.0))
    return bins


def _label(m: Measurement, repeats: bool = False) -> str:
    text = level_text(m.mode, m.level) + (f", batch {m.batch_size}" if m.batch_size != 1 else "")
    if repeats:  # --repeats: each repeat of a level is its own measurement, kept apart
        text += f", repeat {m.repeat + 1}"
    return text + ("" if m.stable else " (unstable)")


def _has_repeats(run: RunResult) -> bool:
    return any(m.repeat > 0 for m in run.measurements)


def request_bins(latencies_us: npt.NDArray[np.float64]) -> list[tuple[float, float, float]]:
    """(low ms, high ms, share of requests) of 40 bins over a level's per-request latencies,
    spaced logarithmically when their range is wide (empty without requests)."""
    ms = np.asarray(latencies_us, dtype=np.float64) / 1000.0
    ms = ms[ms > 0]
    if ms.size == 0:
        return []
    lo, hi = float(ms.min()), float(ms.max())
    if hi <= lo:
        return [(lo * 0.99, hi * 1.01, 1.0)]
    edges = np.geomspace(lo, hi, 41) if wide_range([lo, hi]) else np.linspace(lo, hi, 41)
    counts, _ = np.histogram(ms, bins=edges)
    total = float(counts.sum())
    return [
        (float(a), float(b), float(c) / total)
        for a, b, c in zip(edges[:-1], edges[1:], counts, strict=True)
    ]


def latency_histograms(
    label: str, run: RunResult, requests: Sequence[RawRequests | None] | None = None
) -> Figure | None:
    """One panel per level: the service latency histogram of its requests when `requests` (the
    run's profile export, one entry per measurement) has them, else over its recorded quantiles."""
    raw = requests if requests is not None and len(requests) == len(run.measurements) else None
    levels = []
    for i, m in enumerate(run.measurements):
        r = raw[i] if raw is not None else None
        bins = request_bins(r[0]) if r is not None else quantile_bins(m.latency)
        if bins:
            levels.append((m, bins))
    if not levels:
        return None
    ncols = min(4, len(levels))
    nrows = math.ceil(len(levels) / ncols)
    fig = new_figure(12.0, 2.8 * nrows + 0.8)
    grid = fig.subplots(nrows, ncols, squeeze=False)
    for ax in grid.flat[len(levels) :]:
        ax.set_visible(False)
    for ax, (m, bins) in zip(grid.flat, levels, strict=False):
        lefts = [lo for lo, _, _ in bins]
        widths = [hi - lo for lo, hi, _ in bins]
        # Density (share per ms): the area of a bar is its share of the requests.
        heights = [share * 100.0 / w for w, (_, _, share) in zip(widths, bins, strict=True)]
        ax.bar(lefts, heights, widths, align="edge", color=color_at(0), alpha=0.75, lw=0.5)
        ax.axvline(m.latency.p50_us / 1000.0, color=color_at(2), lw=1.2, label="p50")
        ax.axvline(m.latency.p99_us / 1000.0, color=color_at(3), lw=1.2, ls="--", label="p99")
        if wide_range([bins[0][0], bins[-1][1]]):
            log_axis(ax, "x")
        ax.set_title(_label(m, _has_repeats(run)), fontsize="medium")
        ax.set_xlabel("Latency (ms)", fontsize="small")
        ax.set_ylabel("% of requests per ms", fontsize="small")
        ax.tick_params(labelsize="small")
        ax.grid(True, alpha=0.3)
    handles, names = grid.flat[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncols=2, fontsize="medium")
    how = "per-request latencies" if raw is not None else "bins between recorded percentiles"
    fig.suptitle(f"Latency histogram per level: {label} ({how})")
    return fig


def latency_over_time(label: str, run: RunResult) -> Figure | None:
    """The windows of every level on the run's time axis: each window's average latency (solid)
    and stability latency (dashed), one colour per level; hollow markers are windows not merged."""
    levels = [m for m in run.measurements if m.windows]
    if not levels:
        return None
    t0 = min(w.start_ns for m in levels for w in m.windows)
    fig = new_figure(12.0, 4.2)
    ax = fig.subplots()
    values: list[float] = []
    # One colour per level: the repeats of a level (--repeats, interleaved in time) share it.
    keys = list(dict.fromkeys((m.mode, m.level, m.batch_size) for m in levels))
    labelled: set[tuple[str, float, int]] = set()
    for m in levels:
        key = (m.mode, m.level, m.batch_size)
        color = color_at(keys.index(key))
        name = "_nolegend_" if key in labelled else _label(m)
        labelled.add(key)
        xs = [(w.start_ns + w.duration_ns / 2 - t0) / 1e9 for w in m.windows]
        avg = [w.latency_avg_us / 1000.0 for w in m.windows]
        stab = [w.latency_stability_us / 1000.0 for w in m.windows]
        values += avg + stab
        ax.plot(xs, avg, "-", color=color, lw=1.5, label=name)
        ax.plot(xs, stab, "--", color=color, lw=1)
        for x, y, w in zip(xs, avg, m.windows, strict=True):
            ax.plot([x], [y], "o", color=color, fillstyle="full" if w.merged else "none")
    if wide_range(values):
        log_axis(ax)
    else:
        ax.set_ylim(bottom=0)
    finish(
        ax,
        f"Latency over time: {label} (solid: window average; dashed: stability latency)",
        "Time since the first window (s)",
        "Latency (ms)",
        legend=False,
    )
    # Beside the plot, not over the windows.
    fig.legend(loc="outside right upper", fontsize="medium")
    return fig
