"""HTML building blocks the report's sections share: number cells, tables, tags, numbered figures,
the messages list. Cells are escaped by the callers; these only assemble markup.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from matplotlib.figure import Figure

from perfkit.report import plots
from perfkit.report.labels import level_text
from perfkit.results import Measurement


def ms(us: float | None) -> str:
    return "" if us is None else f"{us / 1000.0:.3f}"


def num(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


def table(
    head: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    left: int = 1,
    row_classes: Sequence[str] | None = None,
) -> str:
    """An HTML table; cells are already escaped; the first `left` columns are left-aligned."""

    def cls(i: int) -> str:
        return ' class="l"' if i < left else ""

    out = ['<div class="scroll"><table><thead><tr>']
    out += [f"<th{cls(i)}>{h}</th>" for i, h in enumerate(head)]
    out.append("</tr></thead><tbody>")
    for k, row in enumerate(rows):
        rc = row_classes[k] if row_classes else ""
        out.append(f'<tr class="{rc}">' if rc else "<tr>")
        out += [f"<td{cls(i)}>{c}</td>" for i, c in enumerate(row)]
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


class Figures:
    """Numbers the figures of one report, so that SVG ids stay unique within the page."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, fig: Figure | None, caption: str) -> str:
        if fig is None:
            return ""
        self.count += 1
        svg = plots.to_svg(fig, salt=f"perfkit-fig{self.count}")
        return (
            f"<figure>{svg}<figcaption>Figure {self.count}. {escape(caption)}</figcaption></figure>"
        )


def tag(text: str, kind: str) -> str:
    return f'<span class="tag {kind}">{escape(text)}</span>'


def load(m: Measurement) -> str:
    return level_text(m.mode, m.level)


def message_list(messages: Sequence[str], measurements: Sequence[Measurement] = ()) -> str:
    items = list(messages)
    for m in measurements:
        items += [f"{load(m)}: {w}" for w in m.warnings]
    if not items:
        return ""
    return '<ul class="messages">' + "".join(f"<li>{escape(i)}</li>" for i in items) + "</ul>"
