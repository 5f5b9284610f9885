"""The self-contained HTML report: one file, inline SVG figures and inline CSS, no script and no
external reference of any kind, so it opens anywhere (CI artifact viewers, air-gapped hosts).

Pure: `build_report` turns labelled result values into an HTML string; the CLI writes the file.
`page` assembles the page (CSS, overview), `runs` and `tunes` write their sections from the
building blocks in `parts`. The tune summary is `perfkit.report.summary`'s, the console's too.
"""

from __future__ import annotations

from perfkit.report.html.page import build_report
from perfkit.report.summary import summary_sentence

__all__ = ["build_report", "summary_sentence"]
