"""What every figure shares: a fresh `Figure`, the colour cycle, axis finishing, and `to_svg`.

No pyplot and no global state: each builder makes a fresh `Figure` (Agg/SVG), so builders are safe
to call from anywhere.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable

import matplotlib
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

# Figures are drawn at the page's width (CSS scales the SVG to 100%): 12 in at ~1.4 px/pt on a
# 1280 px page, so the fonts below read at about 13-15 px.
PAGE_WIDTH_IN = 12.0
# A latency axis spanning more than this ratio (max/min) is drawn in log scale: a linear one would
# flatten everything near its bottom (an open loop spans 0.3 ms to seconds).
LOG_RATIO = 30.0

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def color_at(i: int) -> str:
    return COLORS[i % len(COLORS)]


def new_figure(width: float = PAGE_WIDTH_IN, height: float = 4.6) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def wide_range(values: Iterable[float]) -> bool:
    """Whether positive values span more than LOG_RATIO (max/min): a log axis shows them."""
    pos = [v for v in values if v > 0]
    return bool(pos) and max(pos) / min(pos) > LOG_RATIO


def log_axis(ax: Axes, axis: str = "y") -> None:
    """A log axis labelled in plain numbers (0.1, 1, 10, 100), not powers of ten."""
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
    scale = ax.yaxis if axis == "y" else ax.xaxis
    scale.set_major_formatter(plain)
    # Under a decade matplotlib labels the minor ticks too ("2×10⁻¹", ...), overprinting.
    scale.set_minor_formatter(NullFormatter())


def latency_scale(ax: Axes, values: Iterable[float], axis: str = "y") -> None:
    """Log scale for a latency axis whose range calls for it, else linear from 0."""
    vals = list(values)
    if wide_range(vals):
        log_axis(ax, axis)
    elif axis == "y":
        ax.set_ylim(bottom=0)
    else:
        ax.set_xlim(left=0)


def load_ticks(ax: Axes, mode: str) -> None:
    """Integer ticks on a concurrency axis (no "1.5 requests in flight")."""
    if mode == "concurrency":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


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


def finish(ax: Axes, title: str, xlabel: str, ylabel: str, legend: bool = True) -> None:
    ax.set_title(title, fontsize="large")
    ax.set_xlabel(xlabel, fontsize="medium")
    ax.set_ylabel(ylabel, fontsize="medium")
    ax.grid(True, alpha=0.3, which="both" if ax.get_yscale() == "log" else "major")
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="medium", framealpha=0.85)
