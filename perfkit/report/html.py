"""The self-contained HTML report: one file, inline SVG figures and inline CSS, no script and no
external reference of any kind, so it opens anywhere (CI artifact viewers, air-gapped hosts).

Pure: `build_report` turns labelled result values into an HTML string; the CLI writes the file.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from html import escape

from matplotlib.figure import Figure

from perfkit import __version__
from perfkit.report import plots
from perfkit.results import Measurement, RunResult, TrialRecord, TuneResult

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
figure svg.plot { max-width: 100%; height: auto; display: block; }
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
# Small helpers


def _ms(us: float | None) -> str:
    return "" if us is None else f"{us / 1000.0:.3f}"


def _num(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


def _table(
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


class _Figures:
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


def _tag(text: str, kind: str) -> str:
    return f'<span class="tag {kind}">{escape(text)}</span>'


def _load(m: Measurement) -> str:
    return f"concurrency {m.level:g}" if m.mode == "concurrency" else f"{m.level:g} req/s"


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
            status = _tag(r.status, "ok" if r.status == "ok" else "warn")
        else:
            what = escape(r.model)
            cfg = escape(f"study {r.study_name}, {r.sampler}")
            status = _tag(f"{len(r.trials)} trials", "ok")
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
    return "<h2>Results</h2>" + _table(head, rows, left=9)


# ---------------------------------------------------------------------------------------------
# Runs


def _settings(settings: dict[str, object]) -> str:
    if not settings:
        return ""
    items = ", ".join(
        f"<code>{escape(str(k))}</code>={escape(str(v))}" for k, v in settings.items()
    )
    return f'<p class="muted">Load settings: {items}</p>'


def _run_table(run: RunResult) -> str:
    head = [
        "Load",
        "Batch",
        "Stable",
        "Requests",
        "Errors",
        "Throughput (infer/s)",
        "avg (ms)",
        "p50 (ms)",
        "p90 (ms)",
        "p95 (ms)",
        "p99 (ms)",
        "Corrected p99 (ms)",
        "Server queue (ms)",
        "Compute infer (ms)",
        "Client CPU (µs/req)",
    ]
    rows = []
    for m in run.measurements:
        lat = m.latency
        stable = _tag("yes", "ok") if m.stable else _tag("no", "bad")
        if m.generator_saturated:
            stable += " " + _tag("generator saturated", "warn")
        rows.append(
            [
                escape(_load(m)),
                str(m.batch_size),
                stable,
                f"{m.request_count:,}",
                str(m.error_count),
                _num(m.throughput_infer_per_s),
                _ms(lat.avg_us),
                _ms(lat.p50_us),
                _ms(lat.p90_us),
                _ms(lat.p95_us),
                _ms(lat.p99_us),
                _ms(m.corrected_latency.p99_us) if m.corrected_latency else "",
                _ms(m.server.queue_us) if m.server else "",
                _ms(m.server.compute_infer_us) if m.server else "",
                _num(m.client_cpu_us_per_request),
            ]
        )
    if any(m.mode == "request_rate" for m in run.measurements):
        # Open loop: did the generator keep to its schedule?
        head += ["Sent (req/s)", "Late sends", "Send lag p99 (ms)"]
        for row, m in zip(rows, run.measurements, strict=True):
            open_loop = m.mode == "request_rate"
            row += [
                _num(m.send_rate_rps) if open_loop else "",
                f"{m.late_send_count:,}" if open_loop else "",
                _ms(m.send_lag_p99_us) if open_loop else "",
            ]
    return _table(head, rows, left=1)


def _metrics_table(run: RunResult) -> str:
    """Scraped server metrics (e.g. GPU utilization, memory, power), one column per metric and
    GPU, when --collect-metrics was on."""
    cols = sorted({(n, g) for m in run.measurements for n, per in m.metrics.items() for g in per})
    if not cols:
        return ""
    head = ["Load", *(escape(f"{n} ({g})" if g else n) for n, g in cols)]
    rows = [
        [escape(_load(m)), *(_num(m.metrics.get(n, {}).get(g), 3) for n, g in cols)]
        for m in run.measurements
    ]
    return "<h3>Scraped server metrics</h3>" + _table(head, rows, left=1)


def _messages(messages: Sequence[str], measurements: Sequence[Measurement] = ()) -> str:
    items = list(messages)
    for m in measurements:
        items += [f"{_load(m)}: {w}" for w in m.warnings]
    if not items:
        return ""
    return '<ul class="messages">' + "".join(f"<li>{escape(i)}</li>" for i in items) + "</ul>"


def _runs_section(runs: Sequence[tuple[str, RunResult]], fig: _Figures) -> str:
    several = len(runs) > 1
    side = " (results overlaid)" if several else ""
    parts = ["<h2>Runs</h2>"]
    parts.append(fig(plots.throughput_vs_load(runs), "Throughput against load" + side + "."))
    parts.append(
        fig(
            plots.latency_vs_load(runs),
            "Service latency percentiles (p50, p90, p95, p99) against load" + side + ".",
        )
    )
    parts.append(
        fig(
            plots.throughput_vs_latency(runs),
            "Throughput against p99 latency: up and to the left is better" + side + ".",
        )
    )
    parts.append(
        fig(
            plots.server_breakdown(runs),
            "Server-side breakdown from the statistics extension: queue, compute input, "
            "infer and output, server overhead, network + server send/recv, client send/recv.",
        )
    )
    parts.append(
        fig(
            plots.open_loop_latency(runs),
            "Open loop: latency measured from the intended send time (corrected for "
            "coordinated omission) against the service latency from the actual send.",
        )
    )
    for label, run in runs:
        parts.append(f"<h3>{escape(label)}: {escape(run.model)} on {escape(run.server.kind)}</h3>")
        parts.append(_settings(run.settings))
        parts.append(_run_table(run))
        parts.append(_metrics_table(run))
        parts.append(_messages(run.messages, run.measurements))
        parts.append(
            fig(
                plots.stability_windows(label, run),
                f"{label}: measurement windows per load level; filled markers are the windows "
                "merged into the reported numbers.",
            )
        )
    return "".join(parts)


# ---------------------------------------------------------------------------------------------
# Tunes


def _trial(tune: TuneResult, number: int | None) -> TrialRecord | None:
    return next((t for t in tune.trials if t.number == number), None)


def _pbtxt_summary(pbtxt: str) -> str:
    """Model Analyzer's description of a config: platform, max batch size, instances, batching."""
    parts = []
    platform = re.search(r'^\s*(?:platform|backend)\s*:\s*"([^"]+)"', pbtxt, re.M)
    if platform:
        parts.append(f"platform {platform.group(1)}")
    mbs = re.search(r"^\s*max_batch_size\s*:\s*(\d+)", pbtxt, re.M)
    parts.append(f"max batch size {mbs.group(1) if mbs else 0}")
    groups = re.findall(r"count\s*:\s*(\d+)[^}]*?kind\s*:\s*KIND_(\w+)", pbtxt)
    if groups:
        parts.append("instance group " + " + ".join(f"{c}:{k}" for c, k in groups))
    parts.append("dynamic batching " + ("enabled" if "dynamic_batching" in pbtxt else "disabled"))
    return ", ".join(parts)


def _metric_name(name: str) -> str:
    label = plots.metric_axis(name)[0].split(" (")[0]
    return label[:1].lower() + label[1:]


def summary_sentence(tune: TuneResult) -> str:
    """Model Analyzer's summary sentence, for the primary (first) objective. Plain text."""
    measured = sum(1 for t in tune.trials if t.measurement is not None)
    objective, direction = next(
        iter(tune.objectives.items()), ("throughput_infer_per_s", "maximize")
    )
    what = f"{direction.removesuffix('e')}ing {_metric_name(objective)}"
    constraints = ", ".join(
        f"{_metric_name(k)} {'≤' if k.endswith('_us') else '≥'} {v / 1000.0:g} ms"
        if k.endswith("_us")
        else f"{k} ≥ {v:g}"
        for k, v in tune.constraint_bounds.items()
    )
    on = (
        "GPU(s) " + ", ".join(tune.machine.gpus) if tune.machine.gpus else "CPU " + tune.machine.cpu
    )
    where = f"under the given constraints ({constraints}) on {on}" if constraints else f"on {on}"
    head = f"In {measured} measurements across {len(tune.trials)} configurations, "
    best, default = _trial(tune, tune.best_trial), _trial(tune, tune.default_trial)
    if best is None:
        return head + f"no configuration satisfied the constraints {where}."
    b = best.objectives.get(objective)
    d = default.objectives.get(objective) if default else None
    if best is default or b is None or d is None or d == 0:
        return (
            head + f"{best.variant_name} provides no gain over the default configuration "
            f"at {what}, {where}."
        )
    gain = (b - d) / abs(d) * 100.0 if direction == "maximize" else (d - b) / abs(d) * 100.0
    if gain <= 0:
        return (
            head + f"{best.variant_name} provides no gain over the default configuration "
            f"at {what}, {where}."
        )
    config = _pbtxt_summary(best.config_pbtxt or tune.best_config_pbtxt or "")
    return (
        head + f"{best.variant_name} is {gain:.0f}% better than the default configuration at "
        f"{what}, {where}. Its config: {config}."
    )


def _config_diff(tune: TuneResult) -> str:
    if not tune.best_config_pbtxt:
        return '<p class="muted">No best config: nothing to compare with the default.</p>'
    diff = list(
        difflib.unified_diff(
            tune.default_config_pbtxt.splitlines(),
            tune.best_config_pbtxt.splitlines(),
            "default/config.pbtxt",
            "best/config.pbtxt",
            lineterm="",
        )
    )
    if not diff:
        return '<p class="muted">The best config is the default config.</p>'
    lines = []
    for line in diff:
        cls = ""
        if line.startswith("@@"):
            cls = "hunk"
        elif line.startswith("+") and not line.startswith("+++"):
            cls = "add"
        elif line.startswith("-") and not line.startswith("---"):
            cls = "del"
        text = escape(line)
        lines.append(f'<span class="{cls}">{text}</span>' if cls else f"<span>{text}</span>")
    written = (
        f'<p class="muted">Written back to <code>{escape(tune.written_to)}</code>.</p>'
        if tune.written_to
        else ""
    )
    return '<pre class="diff">' + "".join(lines) + "</pre>" + written


def _best_vs_default(tune: TuneResult) -> str:
    best, default = _trial(tune, tune.best_trial), _trial(tune, tune.default_trial)
    if best is None or default is None:
        return ""
    rows: list[list[str]] = []

    def metric(name: str, get: float | None, dflt: float | None, scale: float, lower: bool) -> None:
        if get is None or dflt is None:
            return
        change = ""
        if dflt:
            pct = (get - dflt) / abs(dflt) * 100.0
            good = (pct < 0) if lower else (pct > 0)
            change = _tag(f"{pct:+.1f}%", "ok" if good else ("bad" if pct else "warn"))
        rows.append([escape(name), _num(dflt * scale, 3), _num(get * scale, 3), change])

    for obj, direction in tune.objectives.items():
        label, scale = plots.metric_axis(obj)
        metric(
            label,
            best.objectives.get(obj),
            default.objectives.get(obj),
            scale,
            direction == "minimize",
        )
    bm, dm = best.measurement, default.measurement
    if bm and dm:
        # The measured numbers, unless an objective already showed them.
        if "throughput_infer_per_s" not in tune.objectives:
            metric(
                "Throughput (infer/s)",
                bm.throughput_infer_per_s,
                dm.throughput_infer_per_s,
                1.0,
                False,
            )
        for p in ("p50", "p99"):
            if f"{p}_latency_us" not in tune.objectives:
                metric(
                    f"{p} latency (ms)",
                    getattr(bm.latency, f"{p}_us"),
                    getattr(dm.latency, f"{p}_us"),
                    1e-3,
                    True,
                )
    rows.extend(
        [
            f"param <code>{escape(p)}</code>",
            escape(str(default.params.get(p, ""))),
            escape(str(best.params.get(p, ""))),
            "",
        ]
        for p in sorted(set(best.params) | set(default.params))
    )
    head = [
        "",
        f"Default ({escape(default.variant_name)})",
        f"Best ({escape(best.variant_name)})",
        "Change",
    ]
    return _table(head, rows, left=1)


def _state_tag(t: TrialRecord) -> str:
    if t.state != "complete":
        return _tag(t.state, "bad" if t.state == "failed" else "warn")
    return _tag("feasible", "ok") if t.feasible else _tag("infeasible", "warn")


def _reason(t: TrialRecord) -> str:
    if t.reason:
        return t.reason
    violated = [f"{k} ({v:+.3g})" for k, v in t.constraints.items() if v > 0]
    if t.state == "complete" and not t.feasible and violated:
        return "violates " + ", ".join(violated)
    return ""


def _trials_table(tune: TuneResult) -> str:
    objectives = list(tune.objectives)
    params = sorted({p for t in tune.trials for p in t.params})
    head = [
        "#",
        "Variant",
        "State",
        "Reason",
        *(escape(plots.metric_axis(o)[0]) for o in objectives),
        *(f"<code>{escape(p)}</code>" for p in params),
        "Time (s)",
    ]
    rows, classes = [], []
    for t in sorted(tune.trials, key=lambda t: t.number):
        cells = [str(t.number), escape(t.variant_name), _state_tag(t), escape(_reason(t))]
        for o in objectives:
            value = t.objectives.get(o)
            cells.append("" if value is None else _num(value * plots.metric_axis(o)[1], 3))
        cells += [escape(str(t.params.get(p, ""))) for p in params]
        cells.append(_num(t.duration_s))
        rows.append(cells)
        classes.append(
            "best"
            if t.number == tune.best_trial
            else "default"
            if t.number == tune.default_trial
            else ""
        )
    return _table(head, rows, left=4, row_classes=classes)


def _tunes_section(tunes: Sequence[tuple[str, TuneResult]], fig: _Figures) -> str:
    side = " (results overlaid)" if len(tunes) > 1 else ""
    parts = ["<h2>Tunes</h2>"]
    for label, tune in tunes:
        parts.append(
            f'<p class="summary"><b>{escape(label)}:</b> {escape(summary_sentence(tune))}</p>'
        )
    parts.append(
        fig(
            plots.trial_history(tunes),
            "Trial history: the first objective per trial and the best feasible value so far; "
            "x = infeasible, ▼ = failed, ▲ = pruned" + side + ".",
        )
    )
    parts.append(
        fig(plots.pareto_front(tunes), "Pareto front of the first two objectives" + side + ".")
    )
    parts.append(fig(plots.param_importances(tunes), "Parameter importances" + side + "."))
    for label, tune in tunes:
        obj = ", ".join(f"{d} {o}" for o, d in tune.objectives.items())
        parts.append(f"<h3>{escape(label)}: {escape(tune.model)}, {escape(obj)}</h3>")
        parts.append("<h3>Best against default</h3>")
        parts.append(_best_vs_default(tune))
        parts.append("<h3>config.pbtxt: default → best</h3>")
        parts.append(_config_diff(tune))
        parts.append("<h3>All trials</h3>")
        parts.append(_trials_table(tune))
        parts.append(_messages(tune.messages))
    return "".join(parts)


# ---------------------------------------------------------------------------------------------


def build_report(
    results: Sequence[tuple[str, AnyResult]],
    *,
    title: str | None = None,
    generated_at: datetime | None = None,
) -> str:
    """The whole report for labelled results (runs and tunes may be mixed) as one HTML page."""
    runs = [(lb, r) for lb, r in results if isinstance(r, RunResult)]
    tunes = [(lb, r) for lb, r in results if isinstance(r, TuneResult)]
    models = sorted({r.model for _, r in results})
    title = title or f"perfkit report: {', '.join(models)}"
    when = (generated_at or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M:%S UTC")
    fig = _Figures()
    body = [
        f"<h1>{escape(title)}</h1>",
        f'<p class="muted">Generated {when} by perfkit {escape(__version__)} from '
        f"{len(results)} result(s).</p>",
        _overview(results),
    ]
    if runs:
        body.append(_runs_section(runs, fig))
    if tunes:
        body.append(_tunes_section(tunes, fig))
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(p for p in body if p)
        + "\n</body>\n</html>\n"
    )
