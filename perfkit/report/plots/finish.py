"""The figure of a tune's top-k load sweep (`TuneResult.load_sweeps`): throughput and p99 latency
against the load, one line per config."""

from __future__ import annotations

from matplotlib.figure import Figure

from perfkit.report.plots.figure import color_at, finish, latency_scale, load_ticks, new_figure
from perfkit.results import TuneResult


def load_sweep_curves(label: str, tune: TuneResult) -> Figure | None:
    """Two panels against the load (concurrency or request rate): throughput, and p99 latency;
    one line per config of the sweep. None when no config measured two levels."""
    sweeps = [s for s in tune.load_sweeps if len(s.measurements) > 1]
    if not sweeps:
        return None
    fig = new_figure(12.0, 4.6)
    left, right = fig.subplots(1, 2)
    mode = sweeps[0].mode
    lat: list[float] = []
    for i, s in enumerate(sweeps):
        ms = sorted(s.measurements, key=lambda m: m.level)
        xs = [m.level for m in ms]
        name = f"#{s.rank} {s.variant_name}"
        left.plot(xs, [m.throughput_infer_per_s for m in ms], "-o", color=color_at(i), label=name)
        p99 = [m.latency.p99_us / 1000.0 for m in ms]
        lat += p99
        right.plot(xs, p99, "-o", color=color_at(i), label=name)
    xlabel = "Concurrency" if mode == "concurrency" else "Request rate (req/s)"
    left.set_ylim(bottom=0)
    latency_scale(right, lat)
    for ax in (left, right):
        load_ticks(ax, mode)
    finish(left, f"{label}: throughput over the load sweep", xlabel, "Throughput (infer/s)")
    finish(right, f"{label}: p99 latency over the load sweep", xlabel, "p99 latency (ms)")
    return fig
