"""The page of the HTML report: its CSS, the overview table of every result, and `build_report`,
which puts the runs and tunes sections together.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from html import escape

from perfkit import __version__
from perfkit.report.html.parts import Figures, table, tag
from perfkit.report.html.runs import runs_section
from perfkit.report.html.tunes import tunes_section
from perfkit.report.stats import RawRequests
from perfkit.results import RunResult, TuneResult

AnyResult = RunResult | TuneResult

_CSS = """
:root { --fg:#1d2330; --muted:#5b6475; --line:#d9dde5; --bg:#ffffff; --accent:#1f5fbf;
        --ok:#1a7f37; --bad:#c62828; --warn:#9a6700; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: var(--fg); background: var(--bg); margin: 0 auto; padding: 24px 32px; max-width: 1280px; }
h1 { font-size: 1.6em; margin: 0 0 4px; }
h2 { font-size: 1.3em; margin: 32px 0 8px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
h3 { font-size: 1.08em; margin: 22px 0 6px; }
.muted { color: var(--muted); }
div.scroll { max-width: 100%; overflow-x: auto; }
table { border-collapse: collapse; margin: 8px 0 16px; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid var(--line); padding: 3px 8px; text-align: right; vertical-align: top; }
th { background: #f3f5f9; font-weight: 600; }
td.l, th.l { text-align: left; }
tr.best td { background: #eef7ee; }
tr.default td { background: #f4f6fb; }
.tag { display: inline-block; padding: 0 6px; border-radius: 8px; font-size: 0.85em; }
.tag.ok { background: #dcf1e0; color: var(--ok); }
.tag.bad { background: #fbe2e2; color: var(--bad); }
.tag.warn { background: #fdf0c9; color: var(--warn); }
figure { margin: 12px 0 20px; }
figure svg.plot { width: 100%; height: auto; display: block; }
td.delta-ok { color: var(--ok); } td.delta-bad { color: var(--bad); }
td:not(.l), td:first-child { white-space: nowrap; }
figcaption { color: var(--muted); font-size: 0.9em; }
pre.diff { background: #f6f8fa; border: 1px solid var(--line); padding: 8px 12px; overflow-x: auto;
           font: 12.5px/1.4 ui-monospace, "DejaVu Sans Mono", monospace; }
pre.diff span { display: block; min-height: 1.4em; }
pre.diff .add { color: var(--ok); background: #e6f6ea; }
pre.diff .del { color: var(--bad); background: #fdeaea; }
pre.diff .hunk { color: var(--accent); }
p.summary { font-size: 1.05em; background: #f4f8ff; border-left: 4px solid var(--accent);
            padding: 8px 12px; }
ul.messages li { color: var(--warn); }
"""

# ---------------------------------------------------------------------------------------------
# Overview


def _overview(results: Sequence[tuple[str, AnyResult]]) -> str:
    rows = []
    for label, r in results:
        kind = "run" if isinstance(r, RunResult) else "tune"
        srv = r.server
        gpus = ", ".join(r.machine.gpus) or "none"
        if isinstance(r, RunResult):
            what = f"{escape(r.model)} v{escape(r.model_version or '-')}"
            cfg = escape(r.config_hash or "-")
            status = tag(r.status, "ok" if r.status == "ok" else "warn")
        else:
            what = escape(r.model)
            cfg = escape(f"study {r.study_name}, {r.sampler}")
            merged = len(r.settings.get("trials_by_target") or {})  # perfkit.tune.identity
            if merged > 1:
                cfg += escape(f", merged from {merged} targets")
            status = tag(f"{len(r.trials)} trials", "ok")
        rows.append(
            [
                escape(label),
                kind,
                what,
                cfg,
                escape(f"{srv.kind} {srv.version} ({srv.protocol}, {srv.url})"),
                escape(
                    f"{r.machine.hostname}: {r.machine.cpu} x{r.machine.cpu_count}; GPUs: {gpus}"
                ),
                escape(r.started_at),
                escape(r.perfkit_version),
                status,
            ]
        )
    head = [
        "Result",
        "Kind",
        "Model",
        "Config / study",
        "Server",
        "Machine",
        "Started (UTC)",
        "perfkit",
        "Status",
    ]
    return "<h2>Results</h2>" + table(head, rows, left=9)


# ---------------------------------------------------------------------------------------------


def build_report(
    results: Sequence[tuple[str, AnyResult]],
    *,
    title: str | None = None,
    generated_at: datetime | None = None,
    requests: Sequence[Sequence[RawRequests | None] | None] | None = None,
) -> str:
    """The whole report for labelled results (runs and tunes may be mixed) as one HTML page.
    `requests`, aligned with `results`: a run's per-request data (`pa_import.requests_next_to`)
    or None; with it the histograms are the requests' own and the delta table's percentile
    intervals bootstrap over requests."""
    raws = list(requests) if requests is not None else [None] * len(results)
    run_raws = [raw for (_, r), raw in zip(results, raws, strict=True) if isinstance(r, RunResult)]
    runs = [(lb, r) for lb, r in results if isinstance(r, RunResult)]
    tunes = [(lb, r) for lb, r in results if isinstance(r, TuneResult)]
    models = sorted({r.model for _, r in results})
    title = title or f"perfkit report: {', '.join(models)}"
    when = (generated_at or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M:%S UTC")
    fig = Figures()
    body = [
        f"<h1>{escape(title)}</h1>",
        f'<p class="muted">Generated {when} by perfkit {escape(__version__)} from '
        f"{len(results)} result(s).</p>",
        _overview(results),
    ]
    if runs:
        body.append(runs_section(runs, fig, run_raws))
    if tunes:
        body.append(tunes_section(tunes, fig))
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(p for p in body if p)
        + "\n</body>\n</html>\n"
    )
