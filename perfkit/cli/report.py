"""`perfkit report` (one self-contained HTML file from run/tune results) and `perfkit compare`
(regression gates for CI). Turns flags into values and calls `perfkit.report`; prints via Rich."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import click
from rich import box
from rich.table import Table

from perfkit.cli._console import out
from perfkit.errors import ConfigError, RegressionDetected
from perfkit.report import schema
from perfkit.report.labels import level_text, metric_axis
from perfkit.report.summary import summary_sentence
from perfkit.results import RunResult, TuneResult

AnyResult = RunResult | TuneResult


def _load_labelled(paths: Sequence[Path], labels: Sequence[str]) -> list[tuple[str, AnyResult]]:
    if labels and len(labels) != len(paths):
        raise ConfigError(
            f"--label was given {len(labels)} time(s) for {len(paths)} result(s); give one "
            "--label per RESULT, in the same order, or none."
        )
    from perfkit.report import pa_import

    # perf_analyzer -f CSVs are read as runs (single numbers per level, no windows).
    pa = {i for i, p in enumerate(paths) if pa_import.is_pa_csv(Path(p))}
    if not pa:
        return schema.load_labelled(paths, labels)
    out: list[tuple[str, AnyResult]] = []
    for i, p in enumerate(paths):
        if i in pa:
            out.append((labels[i] if labels else Path(p).stem, pa_import.read_pa_csv(p)))
        else:
            out += schema.load_labelled([p], [labels[i]] if labels else [])
    return out


def _ms(us: float) -> str:
    return f"{us / 1000.0:.3f}"


def _run_table(label: str, run: RunResult) -> Table:
    table = Table(
        title=f"{label}: {run.model} on {run.server.kind} {run.server.version} ({run.status})",
        title_justify="left",
    )
    for col in ("Load", "Batch", "infer/s", "p50 ms", "p90 ms", "p99 ms"):
        table.add_column(col, justify="left" if col == "Load" else "right", no_wrap=True)
    table.add_column("Stable")
    for m in run.measurements:
        table.add_row(
            level_text(m.mode, m.level),
            str(m.batch_size),
            f"{m.throughput_infer_per_s:,.1f}",
            _ms(m.latency.p50_us),
            _ms(m.latency.p90_us),
            _ms(m.latency.p99_us),
            "[green]yes[/]" if m.stable else "[red]no[/]",
        )
    return table


def _tune_table(label: str, tune: TuneResult) -> Table:
    table = Table(title=f"{label}: tune of {tune.model} ({tune.sampler})", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("Variant", no_wrap=True)
    table.add_column("State", no_wrap=True)
    for obj in tune.objectives:
        table.add_column(metric_axis(obj)[0], justify="right")
    # Best first, then the default, then the rest in trial order.
    order = sorted(
        tune.trials,
        key=lambda t: (t.number != tune.best_trial, t.number != tune.default_trial, t.number),
    )
    for t in order:
        state = t.state if t.state != "complete" else ("feasible" if t.feasible else "infeasible")
        mark = " (best)" if t.number == tune.best_trial else ""
        mark += " (default)" if t.number == tune.default_trial else ""
        cells = [str(t.number), t.variant_name + mark, state]
        for obj in tune.objectives:
            value = t.objectives.get(obj)
            cells.append("" if value is None else f"{value * metric_axis(obj)[1]:,.3f}")
        table.add_row(*cells)
    return table


@click.command("report")
@click.argument("results", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "-o",
    "--output",
    default=Path("report.html"),
    show_default=True,
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="The HTML file to write (one self-contained file: inline SVG and CSS).",
)
@click.option("--title", default=None, help="Report title (default: from the model names).")
@click.option(
    "--label",
    "labels",
    multiple=True,
    help="A name for each RESULT, in order (default: its directory or file name).",
)
def report(
    results: tuple[Path, ...], output: Path, title: str | None, labels: tuple[str, ...]
) -> None:
    """Write one self-contained HTML report for runs and/or tunes.

    RESULT is a results.json, or the output directory of `perfkit run --output-dir` or of
    `perfkit tune --output`. Several results are compared side by side.
    """
    from perfkit.report import html

    labelled = _load_labelled(results, labels)
    for label, r in labelled:
        if isinstance(r, RunResult):
            out.print(_run_table(label, r))
        else:
            out.print(_tune_table(label, r))
            out.print(summary_sentence(r), style="bold")
    from perfkit.report import pa_import

    # Each run's profile_export.json, when kept next to its results: real histograms, intervals.
    raws = [None if pa_import.is_pa_csv(p) else pa_import.requests_next_to(p) for p in results]
    page = html.build_report(labelled, title=title, requests=raws)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{output}: cannot write the report: {exc}") from exc
    out.print(f"Wrote {output} ({len(page) / 1024:.0f} KiB, {len(labelled)} result(s)).")


_METRIC_SHORT = {"throughput": "infer/s", "error rate": "error %"}


@click.command("compare")
@click.argument("baseline", type=click.Path(exists=True, path_type=Path))
@click.argument("current", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--max-throughput-drop",
    metavar="PCT",
    help="Fail when throughput at a level drops by more than PCT (e.g. 5%).",
)
@click.option(
    "--max-latency-increase",
    "latency_gates",
    multiple=True,
    metavar="STAT:PCT",
    help="Fail when a latency statistic (avg, p50, p90, p95, p99) rises by more than PCT, "
    "e.g. p99:10%. Repeatable.",
)
@click.option(
    "--max-error-rate",
    metavar="PCT",
    help="Fail when more than PCT of the current run's requests failed at a level (e.g. 1%).",
)
@click.option(
    "--markdown",
    "markdown_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help='Write the comparison as Markdown (e.g. --markdown "$GITHUB_STEP_SUMMARY").',
)
@click.option(
    "--junit",
    "junit_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write JUnit XML: one testcase per level and gate, a failure per regression.",
)
@click.option(
    "--confidence",
    default="95%",
    show_default=True,
    metavar="PCT",
    help="Confidence of the bootstrap intervals: a check fails only when its whole interval is "
    "past the limit.",
)
@click.option(
    "--fail-on-inconclusive",
    is_flag=True,
    help="Exit 1 when a check is inconclusive (its interval straddles the limit), not only on a "
    "regression. Default: exit 0 with a warning.",
)
def compare(
    baseline: Path,
    current: Path,
    max_throughput_drop: str | None,
    latency_gates: tuple[str, ...],
    max_error_rate: str | None,
    markdown_path: Path | None,
    junit_path: Path | None,
    confidence: str,
    fail_on_inconclusive: bool,
) -> None:
    """Compare CURRENT with BASELINE level by level; exit 1 on a regression.

    Each throughput and latency check gets a bootstrap confidence interval of the change (over
    the repeats of --repeats, the requests of the profile export, or the windows); it fails only
    when the whole interval is past the limit, and is "inconclusive, measure more" when the
    interval straddles it (exit 0 with a warning, or 1 with --fail-on-inconclusive). BASELINE
    may be a perf_analyzer -f CSV (compared by percentage only: it has no per-window data).

    Levels match on (mode, level, batch size). With no threshold flag, the gates are
    --max-throughput-drop 5% and --max-latency-increase p99:10%. Results of different models,
    or with no level in common, are an error (exit 3).
    """
    from perfkit.report import compare as cmp

    gates = cmp.Gates(
        max_throughput_drop_pct=(
            cmp.parse_percent(max_throughput_drop, "--max-throughput-drop")
            if max_throughput_drop is not None
            else None
        ),
        max_latency_increase_pct=dict(cmp.parse_latency_gate(g) for g in latency_gates),
        max_error_rate_pct=(
            cmp.parse_percent(max_error_rate, "--max-error-rate")
            if max_error_rate is not None
            else None
        ),
    )
    if gates.empty:
        gates = cmp.DEFAULT_GATES
    from perfkit.report import pa_import

    (b_label, b), (c_label, c) = _load_labelled([baseline, current], [])
    raws = [None if pa_import.is_pa_csv(p) else pa_import.requests_next_to(p)
            for p in (baseline, current)]  # fmt: skip
    result = cmp.compare_runs(
        b, c, gates, baseline_label=b_label, current_label=c_label,
        baseline_requests=raws[0], current_requests=raws[1],
        confidence=cmp.parse_percent(confidence, "--confidence") / 100.0,
    )  # fmt: skip

    table = Table(
        title=f"perfkit compare: {result.model}, {b_label} -> {c_label}",
        title_justify="left",
        caption_justify="left",
    )
    # Compact (no vertical rules, limits below the table): fits an 80-column CI log.
    table.box = box.SIMPLE_HEAD
    ci_col = f"{result.confidence * 100:g}% CI"
    for col in ("Level", "Metric", "Baseline", "Current", "Change", ci_col, "Result"):
        right = col in ("Baseline", "Current", "Change", ci_col)
        table.add_column(col, justify="right" if right else "left", no_wrap=True)
    limits: dict[str, str] = {}
    for row, check in zip(cmp.table_rows(result), result.checks, strict=True):
        mode, level, batch = check.key
        metric = _METRIC_SHORT.get(check.gate, check.gate.replace(" latency", " ms"))
        limits[metric] = check.limit.replace("increase ≤ ", "≤ +").replace("drop ≤ ", "≥ -")
        ci = (
            "-"
            if check.low_pct is None or check.high_pct is None
            else (f"{check.low_pct:+.1f}..{check.high_pct:+.1f}%")
        )
        table.add_row(
            f"{'c' if mode == 'concurrency' else 'r'}={level:g} b={batch}",
            metric, row[3], row[4], row[5], ci,
            {"pass": "[green]ok[/]", "fail": "[bold red]REGRESSION[/]",
             "inconclusive": "[yellow]inconclusive[/]"}[check.status],
        )  # fmt: skip
    table.caption = "limits: " + ", ".join(f"{m} {lim}" for m, lim in limits.items())
    out.print(table)
    for k in result.only_baseline:
        out.print(f"only in baseline, not compared: {cmp.level_name(k)}", style="yellow")
    for k in result.only_current:
        out.print(f"only in current, not compared: {cmp.level_name(k)}", style="yellow")
    for note in result.notes:
        out.print(note, style="yellow")
    junit = cmp.to_junit(result, fail_on_inconclusive=fail_on_inconclusive)
    for path, text in ((markdown_path, cmp.to_markdown(result)), (junit_path, junit)):
        if path is None:
            continue
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot write: {exc}") from exc
    if not result.passed or (fail_on_inconclusive and result.inconclusive):
        raise RegressionDetected(cmp.summary_line(result))
    if result.inconclusive:
        out.print(f"[yellow]warning: {cmp.summary_line(result)}[/]")
        return
    out.print(f"[green]{cmp.summary_line(result)}[/]")


COMMANDS: list[click.Command] = [report, compare]
