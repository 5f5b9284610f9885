"""Figure builders for the reports: pure functions from result values to matplotlib Figures (Agg/SVG).

No pyplot and no global state: each builder makes a fresh `Figure`, so builders are safe to call
from anywhere. `to_svg` turns a figure into an inline-ready `<svg>` string (no XML prolog, no
metadata, text kept as text). Every builder takes `(label, result)` pairs and overlays them, so
several results compare side by side; a builder returns None when it has nothing to show.
Times are stored in µs and drawn in ms (the report edge).

`figure` holds what every figure shares, `runs` the figures of runs, `tunes` those of tunes,
`finish` that of a tune's top-k load sweep.
"""

from __future__ import annotations

from perfkit.report.plots.figure import to_svg
from perfkit.report.plots.finish import load_sweep_curves
from perfkit.report.plots.levels import latency_histograms, latency_over_time
from perfkit.report.plots.runs import (
    gpu_vs_load,
    latency_vs_load,
    open_loop_latency,
    server_breakdown,
    stability_windows,
    throughput_vs_latency,
    throughput_vs_load,
)
from perfkit.report.plots.tunes import (
    config_curves,
    param_importances,
    pareto_front,
    trial_history,
)

__all__ = [
    "config_curves",
    "gpu_vs_load",
    "latency_histograms",
    "latency_over_time",
    "latency_vs_load",
    "load_sweep_curves",
    "open_loop_latency",
    "param_importances",
    "pareto_front",
    "server_breakdown",
    "stability_windows",
    "throughput_vs_latency",
    "throughput_vs_load",
    "to_svg",
    "trial_history",
]
