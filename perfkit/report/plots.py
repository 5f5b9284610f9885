"""Figure builders for the reports: pure functions from result values to matplotlib Figures (Agg/SVG).

No pyplot and no global state: each builder makes a fresh `Figure`, so builders are safe to call
from anywhere. `to_svg` turns a figure into an inline-ready `<svg>` string (no XML prolog, no
metadata, text kept as text). Every builder takes `(label, result)` pairs and overlays them, so
several results compare side by side; a builder returns None when it has nothing to show.
Times are stored in µs and drawn in ms (the report edge).
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import matplotlib
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from perfkit.results import Measurement, RunResult, TrialRecord, TuneResult

Labelled = Sequence[tuple[str, RunResult]]
LabelledTunes = Sequence[tuple[str, TuneResult]]

_PCTS = ("p50", "p90", "p95", "p99")
_PCT_STYLES = {"p50": "-", "p90": "--", "p95": "-.", "p99": ":"}
_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
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


def _color(i: int) -> str:
    return _COLORS[i % len(_COLORS)]


def _new_figure(width: float = 7.0, height: float = 4.0) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def to_svg(fig: Figure, *, salt: str) -> str:
    """The figure as an `<svg>` element for inline HTML. `salt` keeps clip-path ids unique and
    deterministic per figure of a report."""
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": salt, "svg.fonttype": "none"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    svg = buf.getvalue()
    svg = re.sub(r"<\?xml[^>]*\?>\s*", "", svg)
    svg = re.sub(r"<!DOCTYPE[^>]*>\s*", "", svg)
    svg = re.sub(r"<metadata>.*?</metadata>\s*", "", svg, flags=re.DOTALL)
    # Natural size (width/height in pt) with a viewBox: CSS may shrink it to the page, not grow it.
    return svg.replace("<svg ", '<svg class="plot" role="img" ', 1)


# ---------------------------------------------------------------------------------------------
# Runs


@dataclass(frozen=True, slots=True)
class _Series:
    label: str
    mode: str
    batch: int
    color: str
    points: tuple[Measurement, ...]  # sorted by level


def _series(runs: Labelled) -> list[_Series]:
    """One series per (result, mode, batch size), points sorted by load level for lines."""
    out: list[_Series] = []
    for i, (label, run) in enumerate(runs):
        keys = sorted({(m.mode, m.batch_size) for m in run.measurements})
        several_batches = len({b for _, b in keys}) > 1
        for mode, batch in keys:
            pts = sorted(
                (m for m in run.measurements if (m.mode, m.batch_size) == (mode, batch)),
                key=lambda m: m.level,
            )
            name = f"{label} (batch {batch})" if several_batches else label
            out.append(_Series(name, mode, batch, _color(i), tuple(pts)))
    return out


def _mode_axes(fig: Figure, series: Sequence[_Series]) -> dict[str, Axes]:
    modes = [m for m in _MODE_AXIS if any(s.mode == m for s in series)]
    axes = fig.subplots(1, len(modes), squeeze=False)[0]
    return dict(zip(modes, axes, strict=True))


def _finish(ax: Axes, title: str, xlabel: str, ylabel: str, legend: bool = True) -> None:
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")


def throughput_vs_load(runs: Labelled) -> Figure | None:
    series = _series(runs)
    if not series:
        return None
    fig = _new_figure()
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
        _finish(ax, "Throughput vs load", _MODE_AXIS[mode], "Throughput (infer/s)")
    return fig


def latency_vs_load(runs: Labelled) -> Figure | None:
    series = _series(runs)
    if not series:
        return None
    fig = _new_figure()
    axes = _mode_axes(fig, series)
    single = len(series) == 1
    for s in series:
        ax = axes[s.mode]
        for j, pct in enumerate(_PCTS):
            ax.plot(
                [m.level for m in s.points],
                [getattr(m.latency, f"{pct}_us") / 1000.0 for m in s.points],
                marker=".",
                linestyle=_PCT_STYLES[pct],
                color=_color(j) if single else s.color,
                label=pct if single else f"{s.label} {pct}",
            )
    for mode, ax in axes.items():
        ax.set_ylim(bottom=0)
        _finish(ax, "Latency percentiles vs load", _MODE_AXIS[mode], "Latency (ms)")
    return fig


def throughput_vs_latency(runs: Labelled, percentile: str = "p99") -> Figure | None:
    series = _series(runs)
    if not series:
        return None
    fig = _new_figure()
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
                fontsize="x-small",
                color=s.color,
            )
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    _finish(
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
    fig = _new_figure(min(width, 16.0), 4.5)
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
        _finish(
            ax,
            s.label,
            "Load level" if len(series) > 1 else "Load level (c = concurrency, r = request rate)",
            "Time per request (ms)" if ax is panels[0] else "",
            legend=False,
        )
    handles, labels = panels[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=4, fontsize="x-small")
    fig.suptitle("Where a request's time goes (server statistics, average per request)")
    return fig


def stability_windows(label: str, run: RunResult) -> Figure | None:
    """The measurement windows of each level: throughput and stability latency per window;
    filled markers are the windows merged into the reported numbers."""
    levels = [m for m in run.measurements if m.windows]
    if not levels:
        return None
    ncols = min(4, len(levels))
    nrows = math.ceil(len(levels) / ncols)
    fig = _new_figure(3.2 * ncols + 0.8, 2.6 * nrows + 0.6)
    grid = fig.subplots(nrows, ncols, squeeze=False)
    for ax in grid.flat[len(levels) :]:
        ax.set_visible(False)
    for ax, m in zip(grid.flat, levels, strict=False):
        xs = [w.index for w in m.windows]
        twin = ax.twinx()
        ax.plot(xs, [w.throughput_infer_per_s for w in m.windows], color=_color(0), lw=1)
        twin.plot(xs, [w.latency_stability_us / 1000.0 for w in m.windows], color=_color(1), lw=1)
        for w in m.windows:
            face = "full" if w.merged else "none"
            ax.plot([w.index], [w.throughput_infer_per_s], "o", color=_color(0), fillstyle=face)
            twin.plot(
                [w.index], [w.latency_stability_us / 1000.0], "s", color=_color(1), fillstyle=face
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
        ax.set_ylabel("Throughput (infer/s)", fontsize="small", color=_color(0))
        twin.set_ylabel("Latency (ms)", fontsize="small", color=_color(1))
        # Headroom above the highest window so that the markers are not cut by the frame.
        ax.set_ylim(0, 1.2 * max(w.throughput_infer_per_s for w in m.windows) or 1.0)
        twin.set_ylim(0, 1.2 * max(w.latency_stability_us for w in m.windows) / 1000.0 or 1.0)
        ax.tick_params(labelsize="x-small")
        twin.tick_params(labelsize="x-small")
    fig.suptitle(f"Stability windows: {label} (filled = merged, shaded = merged range)")
    fig.legend(
        [
            Line2D([], [], color=_color(0), marker="o"),
            Line2D([], [], color=_color(1), marker="s"),
            Line2D([], [], color="grey", marker="o", fillstyle="none", ls=""),
        ],
        ["window throughput", "window latency", "not merged"],
        loc="outside lower center",
        ncols=3,
        fontsize="small",
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
    fig = _new_figure()
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
    ax.set_ylim(bottom=0)
    _finish(
        ax,
        "Open loop: corrected (from intended send) vs service latency",
        _MODE_AXIS["request_rate"],
        "Latency (ms)",
    )
    return fig


# ---------------------------------------------------------------------------------------------
# Tunes


def metric_axis(name: str) -> tuple[str, float]:
    """Axis label and the factor that converts a stored metric to its display unit."""
    if name == "throughput_infer_per_s":
        return "Throughput (infer/s)", 1.0
    if name.endswith("_latency_us"):
        return f"{name.removesuffix('_latency_us')} latency (ms)", 1e-3
    if name.endswith("_us"):
        return f"{name.removesuffix('_us').replace('_', ' ')} (ms)", 1e-3
    if name.endswith("_per_s"):
        return f"{name.removesuffix('_per_s').replace('_', ' ')} (/s)", 1.0
    return name.replace("_", " "), 1.0


def _best_so_far(
    trials: Sequence[TrialRecord], objective: str, direction: str
) -> tuple[list[int], list[float]]:
    xs: list[int] = []
    ys: list[float] = []
    best: float | None = None
    better = max if direction == "maximize" else min
    for t in trials:
        value = t.objectives.get(objective)
        if t.state == "complete" and t.feasible and value is not None:
            best = value if best is None else better(best, value)
        if best is not None:
            xs.append(t.number)
            ys.append(best)
    return xs, ys


def trial_history(tunes: LabelledTunes) -> Figure | None:
    """The first objective per trial, the best feasible value so far, and failed, pruned and
    infeasible trials marked."""
    tunes = [(lb, t) for lb, t in tunes if t.trials and t.objectives]
    if not tunes:
        return None
    fig = _new_figure(7.5, 4.2)
    ax = fig.subplots()
    objective, direction = next(iter(tunes[0][1].objectives.items()))
    ylabel, scale = metric_axis(objective)
    for i, (label, tune) in enumerate(tunes):
        color = _color(i)
        trials = sorted(tune.trials, key=lambda t: t.number)
        ok = [t for t in trials if t.state == "complete" and objective in t.objectives]
        feas = [t for t in ok if t.feasible]
        infeas = [t for t in ok if not t.feasible]
        ax.plot(
            [t.number for t in feas],
            [t.objectives[objective] * scale for t in feas],
            "o",
            color=color,
            label=f"{label}: feasible",
        )
        if infeas:
            ax.plot(
                [t.number for t in infeas],
                [t.objectives[objective] * scale for t in infeas],
                "x",
                color=color,
                markersize=8,
                label=f"{label}: infeasible",
            )
        xs, ys = _best_so_far(trials, objective, direction)
        ax.step(
            xs,
            [y * scale for y in ys],
            where="post",
            color=color,
            alpha=0.6,
            label=f"{label}: best so far",
        )
        for state, marker in (("failed", "v"), ("pruned", "^")):
            sel = [t.number for t in trials if t.state == state]
            if sel:
                # No objective value: drawn on the bottom edge of the plot.
                ax.plot(
                    sel,
                    [0.02] * len(sel),
                    marker,
                    color=color,
                    alpha=0.7,
                    transform=ax.get_xaxis_transform(),
                    clip_on=False,
                    label=f"{label}: {state}",
                )
        marks = [(tune.default_trial, "default"), (tune.best_trial, "best")]
        if tune.default_trial == tune.best_trial:
            marks = [(tune.best_trial, "default = best")]
        for num, text in marks:
            t = next((t for t in trials if t.number == num), None)
            if t is not None and objective in t.objectives:
                ax.annotate(
                    text,
                    (t.number, t.objectives[objective] * scale),
                    textcoords="offset points",
                    xytext=(5, 6),
                    fontsize="small",
                    color=color,
                    weight="bold",
                )
    values = [
        v * scale for _, tune in tunes for t in tune.trials if (v := t.objectives.get(objective))
    ]
    ax.set_ylim(0, 1.12 * max(values, default=1.0))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _finish(ax, f"Trial history ({direction} {objective})", "Trial number", ylabel)
    return fig


def pareto_front(tunes: LabelledTunes) -> Figure | None:
    """The first two objectives of every completed trial; the Pareto-optimal ones joined."""
    tunes = [(lb, t) for lb, t in tunes if len(t.objectives) >= 2]
    if not tunes:
        return None
    fig = _new_figure()
    ax = fig.subplots()
    (ox, _), (oy, _) = list(tunes[0][1].objectives.items())[:2]
    xlabel, xs_scale = metric_axis(ox)
    ylabel, ys_scale = metric_axis(oy)
    for i, (label, tune) in enumerate(tunes):
        color = _color(i)
        done = [t for t in tune.trials if ox in t.objectives and oy in t.objectives]
        for feasible, marker in ((True, "o"), (False, "x")):
            sel = [t for t in done if t.feasible == feasible]
            if sel:
                ax.plot(
                    [t.objectives[ox] * xs_scale for t in sel],
                    [t.objectives[oy] * ys_scale for t in sel],
                    marker,
                    color=color,
                    alpha=0.45,
                    label=f"{label}: {'feasible' if feasible else 'infeasible'}",
                )
        front = sorted(
            (t for t in done if t.number in tune.pareto_trials), key=lambda t: t.objectives[ox]
        )
        if front:
            ax.plot(
                [t.objectives[ox] * xs_scale for t in front],
                [t.objectives[oy] * ys_scale for t in front],
                "-D",
                color=color,
                label=f"{label}: Pareto front",
            )
            for t in front:
                ax.annotate(
                    f"#{t.number}",
                    (t.objectives[ox] * xs_scale, t.objectives[oy] * ys_scale),
                    textcoords="offset points",
                    xytext=(5, 4),
                    fontsize="x-small",
                )
    _finish(ax, "Pareto front", xlabel, ylabel)
    return fig


def param_importances(tunes: LabelledTunes) -> Figure | None:
    tunes = [(lb, t) for lb, t in tunes if t.param_importances]
    if not tunes:
        return None
    names = sorted(
        {p for _, t in tunes for p in t.param_importances},
        key=lambda p: max(t.param_importances.get(p, 0.0) for _, t in tunes),
    )
    fig = _new_figure(7.0, 1.2 + 0.45 * len(names) * len(tunes))
    ax = fig.subplots()
    height = 0.8 / len(tunes)
    for i, (label, tune) in enumerate(tunes):
        ys = [j - 0.4 + height * (i + 0.5) for j in range(len(names))]
        ax.barh(
            ys,
            [tune.param_importances.get(p, 0.0) for p in names],
            height * 0.9,
            color=_color(i),
            label=label,
        )
    ax.set_yticks(range(len(names)), names)
    ax.set_xlim(0, 1)
    _finish(
        ax,
        "Parameter importances (share of the objective variance)",
        "Importance (fraction)",
        "Parameter",
        legend=len(tunes) > 1,
    )
    return fig
