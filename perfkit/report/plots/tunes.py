"""Figures of tunes: trial history, Pareto front, parameter importances. Each takes `(label, tune)`
pairs and overlays them; returns None when it has nothing to show.
"""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from perfkit.report.labels import describe_load, metric_axis, metric_name
from perfkit.report.plots.figure import color_at, finish, latency_scale, new_figure
from perfkit.results import TrialRecord, TuneResult

LabelledTunes = Sequence[tuple[str, TuneResult]]


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
    fig = new_figure(12.0, 4.6)
    ax = fig.subplots()
    objective, direction = next(iter(tunes[0][1].objectives.items()))
    ylabel, scale = metric_axis(objective)
    for i, (label, tune) in enumerate(tunes):
        color = color_at(i)
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
    finish(
        ax,
        f"Trial history ({direction.removesuffix('e')}ing {metric_name(objective)})",
        "Trial number",
        ylabel,
    )
    return fig


def _staircase(points: list[tuple[float, float]], x_max: bool) -> tuple[list[float], list[float]]:
    """The Pareto front's attainment staircase through its points: along x from the worst x to
    the best, each step holding the y that point guarantees."""
    pts = sorted(points, reverse=not x_max)  # worst x first
    xs: list[float] = []
    ys: list[float] = []
    for x, y in pts:
        if xs:
            xs.append(x)
            ys.append(ys[-1])
        xs.append(x)
        ys.append(y)
    return xs, ys


def pareto_front(tunes: LabelledTunes) -> Figure | None:
    """The first two objectives of every completed trial, the Pareto front as a staircase, the
    default config marked, and the constraint bounds (the budget) on either objective drawn."""
    tunes = [(lb, t) for lb, t in tunes if len(t.objectives) >= 2]
    if not tunes:
        return None
    fig = new_figure(12.0, 5.0)
    ax = fig.subplots()
    (ox, dx), (oy, _) = list(tunes[0][1].objectives.items())[:2]
    xlabel, xs_scale = metric_axis(ox)
    ylabel, ys_scale = metric_axis(oy)
    for i, (label, tune) in enumerate(tunes):
        color = color_at(i)
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
        front = [t for t in done if t.number in tune.pareto_trials]
        if front:
            xs, ys = _staircase(
                [(t.objectives[ox] * xs_scale, t.objectives[oy] * ys_scale) for t in front],
                dx == "maximize",
            )
            ax.plot(xs, ys, "-", color=color, lw=2, label=f"{label}: Pareto front")
            for t in front:
                ax.plot(
                    [t.objectives[ox] * xs_scale], [t.objectives[oy] * ys_scale], "D", color=color
                )
                ax.annotate(
                    f"#{t.number}",
                    (t.objectives[ox] * xs_scale, t.objectives[oy] * ys_scale),
                    textcoords="offset points",
                    xytext=(5, 4),
                    fontsize="small",
                )
        default = tune.trial(tune.default_trial)
        if default is not None and ox in default.objectives and oy in default.objectives:
            ax.plot(
                [default.objectives[ox] * xs_scale],
                [default.objectives[oy] * ys_scale],
                "*",
                color=color,
                markersize=16,
                markeredgecolor="black",
                label=f"{label}: default",
            )
        for name, bound in tune.constraint_bounds.items():
            if name == ox:
                ax.axvline(
                    bound * xs_scale,
                    color="#c62828",
                    ls="--",
                    lw=1.2,
                    label=f"budget: {metric_name(ox)}",
                )
            elif name == oy:
                ax.axhline(
                    bound * ys_scale,
                    color="#c62828",
                    ls="--",
                    lw=1.2,
                    label=f"budget: {metric_name(oy)}",
                )
    finish(ax, f"Pareto front: {metric_name(ox)} against {metric_name(oy)}", xlabel, ylabel)
    return fig


def _load_order(t: TrialRecord) -> tuple[float, float, int]:
    p = t.params
    return (
        float(p.get("concurrency", 0)),
        float(p.get("request_rate", 0)),
        int(p.get("batch_size", 1)),
    )


def config_curves(tunes: LabelledTunes) -> Figure | None:
    """Throughput against p99 latency per configuration, across the client loads it was measured
    at (one line per config, points labelled by load); None when no config has two loads."""
    curves: list[tuple[str, list[TrialRecord]]] = []
    for label, tune in tunes:
        per: dict[str, list[TrialRecord]] = {}
        for t in tune.trials:
            if t.measurement is not None and t.state == "complete":
                per.setdefault(t.config_pbtxt or t.variant_name, []).append(t)
        prefix = f"{label}: " if len(tunes) > 1 else ""
        for trials in per.values():
            if len({describe_load(t.params) for t in trials}) > 1:
                trials.sort(key=_load_order)
                curves.append((prefix + trials[0].variant_name, trials))
    if not curves:
        return None
    fig = new_figure(12.0, 5.0)
    ax = fig.subplots()
    lat: list[float] = []
    for i, (name, trials) in enumerate(curves):
        pts = [
            (t.measurement.latency.p99_us / 1000.0, t.measurement.throughput_infer_per_s, t)
            for t in trials
            if t.measurement is not None
        ]
        lat += [x for x, _, _ in pts]
        ax.plot([x for x, _, _ in pts], [y for _, y, _ in pts], "-o", color=color_at(i), label=name)
        for x, y, t in pts:
            ax.annotate(
                describe_load(t.params),
                (x, y),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize="small",
                color=color_at(i),
            )
    latency_scale(ax, lat, "x")
    ax.set_ylim(0, 1.12 * max(ax.get_ylim()[1], 1.0))  # room for the load labels
    finish(
        ax,
        "Throughput against p99 latency per configuration, across client loads",
        "p99 latency (ms)",
        "Throughput (infer/s)",
    )
    return fig


def param_importances(tunes: LabelledTunes) -> Figure | None:
    tunes = [(lb, t) for lb, t in tunes if t.param_importances]
    if not tunes:
        return None
    names = sorted(
        {p for _, t in tunes for p in t.param_importances},
        key=lambda p: max(t.param_importances.get(p, 0.0) for _, t in tunes),
    )
    fig = new_figure(12.0, 1.4 + 0.4 * len(names) * len(tunes))
    ax = fig.subplots()
    height = 0.8 / len(tunes)
    for i, (label, tune) in enumerate(tunes):
        ys = [j - 0.4 + height * (i + 0.5) for j in range(len(names))]
        ax.barh(
            ys,
            [tune.param_importances.get(p, 0.0) for p in names],
            height * 0.9,
            color=color_at(i),
            label=label,
        )
    ax.set_yticks(range(len(names)), names)
    ax.set_xlim(0, 1)
    finish(
        ax,
        "Parameter importances (share of the objective variance)",
        "Importance (fraction)",
        "Parameter",
        legend=len(tunes) > 1,
    )
    return fig
