"""The tunes section of the HTML report: the summary sentence, the overlaid figures, then per tune
the best against the default, the config diff, the top configs' load sweep and the validation on
another server when the tune ran them (`perfkit.report.html.finish`), and every trial.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from html import escape

from perfkit.report import plots
from perfkit.report.html.finish import finish_parts
from perfkit.report.html.parts import Figures, message_list, num, table, tag
from perfkit.report.labels import metric_axis, metric_name
from perfkit.report.summary import summary_sentence
from perfkit.results import TrialRecord, TuneResult


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


def config_params(pbtxt: str) -> dict[str, object]:
    """The tuner's config parameters as a config.pbtxt sets them (the default trial's params hold
    only its client load): instance count and kind of the first group, max batch size, dynamic
    batching, preferred sizes, queue delay. Triton's defaults for fields the text omits."""
    out: dict[str, object] = {}
    group = re.search(r"instance_group\s*(?::\s*)?\[(.*?)\]\s*(?:\n\S|$)", pbtxt, re.S)
    count = re.search(r"\bcount\s*:\s*(\d+)", group.group(1) if group else "")
    out["instance_count"] = int(count.group(1)) if count else 1
    kind = re.search(r"\bkind\s*:\s*(KIND_\w+)", pbtxt)
    out["instance_kind"] = kind.group(1) if kind else "KIND_AUTO"
    mbs = re.search(r"^\s*max_batch_size\s*:\s*(\d+)", pbtxt, re.M)
    out["max_batch_size"] = int(mbs.group(1)) if mbs else 0
    dyn = "dynamic_batching" in pbtxt
    out["dynamic_batching"] = dyn
    if dyn:
        listed = re.search(r"preferred_batch_size\s*:\s*\[([^\]]*)\]", pbtxt)
        sizes = (
            re.findall(r"\d+", listed.group(1))
            if listed
            else re.findall(r"preferred_batch_size\s*:\s*(\d+)", pbtxt)
        )
        out["preferred_batch_sizes"] = [int(x) for x in sizes]
        delay = re.search(r"max_queue_delay_microseconds\s*:\s*(\d+)", pbtxt)
        out["max_queue_delay_us"] = int(delay.group(1)) if delay else 0
    return out


def _best_vs_default(tune: TuneResult) -> str:
    best, default = tune.trial(tune.best_trial), tune.trial(tune.default_trial)
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
            change = tag(f"{pct:+.1f}%", "ok" if good else ("bad" if pct else "warn"))
        rows.append([escape(name), num(dflt * scale, 3), num(get * scale, 3), change])

    for obj, direction in tune.objectives.items():
        label, scale = metric_axis(obj)
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
    # The default trial's params are its load only: its config's values come from its pbtxt.
    from_config = config_params(default.config_pbtxt or tune.default_config_pbtxt)
    default_params = {**from_config, **default.params}
    for p in sorted(set(best.params) | set(default.params)):
        dflt, value = default_params.get(p, ""), best.params.get(p, "")
        changed = str(dflt) != str(value)
        rows.append(
            [
                f"param <code>{escape(p)}</code>",
                escape(str(dflt)),
                escape(str(value)),
                tag("changed", "warn") if changed else "",
            ]
        )
    head = [
        "",
        f"Default ({escape(default.variant_name)})",
        f"Best ({escape(best.variant_name)})",
        "Change",
    ]
    return table(head, rows, left=1)


def _state_tag(t: TrialRecord) -> str:
    if t.state != "complete":
        return tag(t.state, "bad" if t.state == "failed" else "warn")
    return tag("feasible", "ok") if t.feasible else tag("infeasible", "warn")


def _violation(name: str, excess: float) -> str:
    """A constraint missed, in words and display units: "p99 latency (+2.1 ms)"."""
    label, scale = metric_axis(name)
    unit = label.rsplit("(", 1)[1].rstrip(")") if "(" in label else ""
    return f"{metric_name(name)} ({excess * scale:+.3g} {unit})".replace(" )", ")")


def _reason(t: TrialRecord) -> str:
    if t.reason:
        return t.reason
    violated = [_violation(k, v) for k, v in t.constraints.items() if v > 0]
    if t.state == "complete" and not t.feasible and violated:
        return "violates " + ", ".join(violated)
    return ""


def _trials_table(tune: TuneResult) -> str:
    objectives = list(tune.objectives)
    params = sorted({p for t in tune.trials for p in t.params})
    # A trial of the default config records only its load: its config values from its pbtxt.
    defaults = config_params(tune.default_config_pbtxt)
    head = [
        "#",
        "Variant",
        "State",
        "Reason",
        *(escape(metric_axis(o)[0]) for o in objectives),
        *(f"<code>{escape(p)}</code>" for p in params),
        "Time (s)",
    ]
    rows, classes = [], []
    for t in sorted(tune.trials, key=lambda t: t.number):
        cells = [str(t.number), escape(t.variant_name), _state_tag(t), escape(_reason(t))]
        for o in objectives:
            value = t.objectives.get(o)
            cells.append("" if value is None else num(value * metric_axis(o)[1], 3))
        given = {**defaults, **t.params} if t.variant_name.endswith("_config_default") else t.params
        cells += [escape(str(given.get(p, ""))) for p in params]
        cells.append(num(t.duration_s))
        rows.append(cells)
        classes.append(
            "best"
            if t.number == tune.best_trial
            else "default"
            if t.number == tune.default_trial
            else ""
        )
    return table(head, rows, left=4, row_classes=classes)


def tunes_section(tunes: Sequence[tuple[str, TuneResult]], fig: Figures) -> str:
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
        fig(
            plots.pareto_front(tunes),
            "Pareto front of the first two objectives: the staircase bounds what the tune "
            "attained; ★ = the default config, dashed red = the budget (a constraint bound)"
            + side
            + ".",
        )
    )
    parts.append(
        fig(
            plots.config_curves(tunes),
            "Throughput against p99 latency of each configuration measured at several client "
            "loads (points labelled by load)" + side + ".",
        )
    )
    parts.append(fig(plots.param_importances(tunes), "Parameter importances" + side + "."))
    for label, tune in tunes:
        obj = ", ".join(f"{d} {metric_name(o)}" for o, d in tune.objectives.items())
        parts.append(f"<h3>{escape(label)}: {escape(tune.model)}, {escape(obj)}</h3>")
        parts.append("<h3>Best against default</h3>")
        parts.append(_best_vs_default(tune))
        parts.append("<h3>config.pbtxt: default → best</h3>")
        parts.append(_config_diff(tune))
        parts.append(finish_parts(label, tune, fig))
        parts.append("<h3>All trials</h3>")
        parts.append(_trials_table(tune))
        parts.append(message_list(tune.messages))
    return "".join(parts)
