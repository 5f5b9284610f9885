"""What every figure shares: a fresh `Figure`, the colour cycle, axis finishing, and `to_svg`.

No pyplot and no global state: each builder makes a fresh `Figure` (Agg/SVG), so builders are safe
to call from anywhere.
"""

from __future__ import annotations

import io
import re

import matplotlib
from matplotlib.axes import Axes
from matplotlib.figure import Figure

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def color_at(i: int) -> str:
    return COLORS[i % len(COLORS)]


def new_figure(width: float = 7.0, height: float = 4.0) -> Figure:
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


def finish(ax: Axes, title: str, xlabel: str, ylabel: str, legend: bool = True) -> None:
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
