"""`perfkit tune SWEEP` or `perfkit tune -m MODEL` (zero-config): flags -> a `TuneSweep` -> the space
table -> `perfkit.tune.run` -> the results table and summary."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from perfkit import tune as tuning
from perfkit.cli._auto import space_table, tune_spec
from perfkit.cli._console import err, out
from perfkit.cli._launch import launch_for_tune, launch_options
from perfkit.cli.progress import TuneView
from perfkit.cli.tune_finish import load_sweep_table, validation_table
from perfkit.report.summary import config_summary, summary_sentence
from perfkit.results import TrialRecord, TuneResult
from perfkit.sweepfile import METRICS, SAMPLERS
from perfkit.tune import auto, output
from perfkit.tune.describe import describe_space
from perfkit.tune.multi import model_texts
from perfkit.tune.objective import Objective
from perfkit.tune.space import LOAD_DIMS, describe, split_dim

CAPACITY = METRICS["capacity"]
# Max rows of the top-configs table (the default is always shown too).
TOP_N = 5


def _fmt(value: float | None, scale: float = 1.0, digits: int = 1) -> str:
    return "" if value is None else f"{value / scale:,.{digits}f}"


def _row(t: TrialRecord, tag: str, capacity: bool = False) -> list[str]:
    m = t.measurement
    load = ""
    if m is not None:
        load = f"{'c' if m.mode == 'concurrency' else 'r'}{m.level:g} b{m.batch_size}"
    # Capacity: the passing rate's p99 from the scheduled send times (what the budget judged).
    lat = (m.corrected_latency or m.latency) if capacity and m else m.latency if m else None
    return [
        tag,
        t.variant_name.removeprefix(f"{t.variant_name.rsplit('_config_', 1)[0]}_"),
        output.describe_config(t.config_pbtxt),
        load,
        *([_fmt(t.objectives.get(CAPACITY))] if capacity else []),
        _fmt(m.throughput_infer_per_s if m else None),
        _fmt(lat.p99_us if lat else None, 1000.0, 2),
        "yes" if t.feasible else "no",
    ]


def _models_row(t: TrialRecord, tag: str, names: list[str], score: str) -> list[str]:
    """A model group's trial ([[models]]): each model's infer/s and p99, then the score."""
    config = {k: v for k, v in t.params.items() if split_dim(k)[1] not in LOAD_DIMS}
    cells = [
        tag,
        t.variant_name.rsplit("_config_", 1)[-1],
        escape(describe(config) or "as on disk"),
    ]
    for name in names:
        m = t.models.get(name)
        cells += [_fmt(m.throughput_infer_per_s if m else None)]
        cells += [_fmt(m.latency.p99_us if m else None, 1000.0, 2)]
    value = t.objectives.get(score)
    return [*cells, "" if value is None else f"{value:.3f}", "yes" if t.feasible else "no"]


def results_table(result: TuneResult, objective: Objective | None = None) -> Table:
    """Top configs (or the Pareto front) against the default (measured at the best's load), and
    the default's best under the constraints; with `objective`, a caption says what was compared."""
    primary, direction = next(iter(result.objectives.items()))
    feasible = [t for t in result.trials if t.feasible and primary in t.objectives]
    feasible.sort(key=lambda t: t.objectives[primary], reverse=direction == "maximize")
    if result.pareto_trials:
        shown = [t for t in feasible if t.number in result.pareto_trials]
        title = f"{result.model}: Pareto front vs the default"
    else:
        shown = feasible[:TOP_N]
        title = f"{result.model}: top {len(shown)} config{'' if len(shown) == 1 else 's'} vs the default"
    table = Table(title=title)
    # Several models tuned together: each model's figures, and the weighted score ranked by.
    names = list(dict.fromkeys(n for t in result.trials for n in t.models))
    # The capacity objective: the highest request rate within the budget, x the batch size.
    capacity = primary == CAPACITY

    def row(t: TrialRecord, tag: str) -> list[str]:
        return _models_row(t, tag, names, primary) if names else _row(t, tag, capacity)

    figures = [f"{n} {c}" for n in names for c in ("infer/s", "p99 ms")] + ["score"]
    own = ["", "variant", "config", "load", *(["capacity"] if capacity else [])]
    head = ["", "variant", "config", *figures] if names else own
    for col in (*head, *([] if names else ["infer/s", "p99 ms"]), "ok"):
        table.add_column(
            col,
            justify="right" if col.endswith(("infer/s", "p99 ms", "score", "capacity")) else "left",
            no_wrap=col != "config",
        )
    for t in shown:
        tag = "best" if t.number == result.best_trial else ""
        if t.number == result.default_trial:
            tag = (tag + " default").strip()
        elif t.number == result.default_best_trial:
            tag = (tag + " default best").strip()
        table.add_row(*row(t, tag))
    # The default as compared (at the best's load), then its best under the constraints.
    for number, tag in (
        (result.default_trial, "default"),
        (result.default_best_trial, "default best"),
    ):
        extra = output.trial(result, number)
        if extra is not None and all(t.number != extra.number for t in shown):
            table.add_row(*row(extra, tag))
            shown.append(extra)
    if objective is not None:
        table.caption = output.comparison_text(result, objective) or None
    return table


def _progress(t: TrialRecord) -> None:
    m = t.measurement
    if t.state == "complete" and t.models:  # several models: each one's figures, the score
        detail = "; ".join(
            f"{name} {mm.throughput_infer_per_s:,.1f} infer/s, p99 {mm.latency.p99_us / 1000:.2f} ms"
            for name, mm in t.models.items()
        ) + "".join(f"; score {v:.3f}" for v in list(t.objectives.values())[:1])
        detail += "" if t.feasible else " (misses constraints)"
    elif t.state == "complete" and m is not None:
        detail = (
            f"{m.throughput_infer_per_s:,.1f} infer/s, p99 {m.latency.p99_us / 1000:.2f} ms"
            + ("" if t.feasible else " (misses constraints)")
        )
        if t.capacity is not None:  # the p99 the budget judged: from the scheduled send time
            lat = m.corrected_latency or m.latency
            detail = (
                f"capacity {t.capacity.capacity_infer_per_s:,.1f} infer/s at "
                f"{t.capacity.rate_rps:,.1f} req/s, p99 {lat.p99_us / 1000:.2f} ms"
                + ("" if t.feasible else f" ({t.reason or 'misses constraints'})")
            )
    else:
        reason = t.reason or ""
        detail = reason if reason.startswith(f"{t.state}:") else f"{t.state}: {reason}"
    err.print(f"trial {t.number:>3} {t.variant_name:<28} {detail}")


@click.command("tune")
@click.argument("sweep", required=False, type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "-m",
    "--model",
    help="Zero-config: tune this model (in --model-repository, or a zoo model built there) over "
    "a space built from its config and this machine; no SWEEP file.",
)
@click.option(
    "--objective",
    type=click.Choice(tuple(auto.OBJECTIVES)),
    help="Zero-config: capacity (default; the highest request rate within the latency budget) "
    "or throughput (the client concurrency searched too; needs --latency-budget-ms).",
)
@click.option(
    "--latency-budget-ms",
    type=click.FloatRange(min=0, min_open=True),
    help="The latency budget (overrides constraints.latency_budget_ms).",
)
@click.option(
    "--latency-percentile",
    type=click.Choice(["50", "90", "95", "99"]),
    help="The percentile the budget bounds (default 99; overrides constraints.latency_percentile).",
)
@click.option(
    "--max-instances",
    type=click.IntRange(min=1),
    help="Zero-config: the largest instance count searched (per GPU on GPUs).",
)
@click.option(
    "--max-batch-size",
    type=click.IntRange(min=1),
    help="Zero-config: the largest max_batch_size searched (default: the model's own).",
)
@click.option(
    "--concurrency",
    help="Zero-config, throughput: the client concurrency levels searched, e.g. 1,2,4,8 "
    f"(default: powers of two up to {auto.MAX_CONCURRENCY}).",
)
@click.option(
    "--show-space", is_flag=True, help="Print the search space and exit, measuring nothing."
)
@click.option(
    "--trials", type=click.IntRange(min=1), help="Variants to measure, the default included."
)
@click.option(
    "--timeout", "timeout_s", type=click.FloatRange(min=1), help="Wall-time budget in seconds."
)
@click.option(
    "-o",
    "--output",
    "output_dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Output directory (default tune-results/<model>).",
)
@click.option(
    "--storage",
    help="Optuna storage URL, e.g. postgresql://user@host/db (default: SQLite in the output dir).",
)
@click.option(
    "--study-name",
    help="Study name (default: model + hash of the sweep + hash of the target: server, GPUs, "
    "host); workers naming the same study share it, even on different targets (a merge).",
)
@click.option(
    "--sampler",
    type=click.Choice(SAMPLERS),
    help="tpe (default), nsga2 (several objectives), grid, random.",
)
@click.option("--seed", type=int, help="Sampler seed.")
@click.option(
    "-u",
    "--url",
    help="A running server in explicit model-control mode (default: start the embedded server).",
)
@click.option(
    "-i",
    "--protocol",
    type=click.Choice(["grpc", "http"]),
    help="Protocol for loads and measurements.",
)
@click.option(
    "--model-repository",
    type=click.Path(path_type=Path, file_okay=False),
    help="Repository holding the model (overrides the sweep's model.repository; with -m, "
    "default ./model_repository).",
)
@click.option(
    "--window-ms",
    type=click.IntRange(min=10),
    help="Measurement window (overrides measure.window_ms).",
)
@click.option("--no-prune", is_flag=True, help="Measure every trial to the end.")
@click.option(
    "--patience",
    type=click.IntRange(min=1),
    help="Stop after N measured trials without a better feasible best (budget.patience).",
)
@click.option(
    "--top-k",
    type=click.IntRange(min=0),
    help="After the search, re-measure the K best configs over a full load sweep (budget.top_k).",
)
@click.option(
    "--validate-on",
    metavar="URL",
    help="After the search, re-measure the top configs on this server (explicit model-control "
    "mode, the model in its repository) and report whether the ranking held.",
)
@click.option(
    "--dry-run", is_flag=True, help="Print the diff of the best config; do not write it back."
)
@launch_options
def tune(
    sweep: Path | None,
    model: str | None,
    objective: str | None,
    latency_budget_ms: float | None,
    latency_percentile: str | None,
    max_instances: int | None,
    max_batch_size: int | None,
    concurrency: str | None,
    show_space: bool,
    trials: int | None,
    timeout_s: float | None,
    output_dir: Path | None,
    storage: str | None,
    study_name: str | None,
    sampler: str | None,
    seed: int | None,
    url: str | None,
    protocol: str | None,
    model_repository: Path | None,
    window_ms: int | None,
    no_prune: bool,
    patience: int | None,
    top_k: int | None,
    validate_on: str | None,
    dry_run: bool,
    **launch_flags: Any,
) -> None:
    """Find the best config.pbtxt for a model under the sweep's constraints and write it back.

    With -m MODEL and no SWEEP, the space comes from the model's config and this machine
    (instances, max_batch_size, dynamic batching and its settings, the backend's thread and
    graph knobs; see perfkit.tune.auto), and configs are ranked by their capacity: the highest
    request rate whose latency stays within the budget."""
    spec = tune_spec(
        sweep, model, repository=model_repository, url=url,
        latency_budget_ms=latency_budget_ms,
        latency_percentile=None if latency_percentile is None else float(latency_percentile),
        flags={"objective": objective, "max_instances": max_instances,
               "max_batch_size": max_batch_size, "concurrency": concurrency},
    )  # fmt: skip
    # --server and its settings over the sweep's [server] launch keys; refused with a URL.
    launch = launch_for_tune(
        spec.launch, launch_flags, url=url or spec.url, source=spec.source,
        url_source="-u/--url" if url else f"{spec.source}:server.url",
    )  # fmt: skip
    search: dict[str, Any] = {}
    if sampler is not None:
        search["sampler"] = sampler
    if seed is not None:
        search["seed"] = seed
    if no_prune:
        search["prune"] = False
    spec = spec.with_overrides(
        trials=trials,
        timeout_s=timeout_s,
        output=output_dir,
        storage=storage,
        study_name=study_name,
        url=url,
        launch=launch,
        protocol=protocol,
        repository=None if model_repository is None else model_repository.resolve(),
        search=dataclasses.replace(spec.search, **search) if search else None,
        measure=None
        if window_ms is None
        else dataclasses.replace(spec.measure, window_ms=window_ms),
        patience=patience,
        top_k=top_k,
        validate_on=validate_on,
    )
    if sweep is None and not show_space:
        auto.check_objective(objective or "capacity")
    out.print(space_table(describe_space(spec, auto.composing_models(spec))))
    if show_space:
        return
    with TuneView(live=err.is_terminal) as view:

        def done(outcome: tuning.TuneOutcome) -> None:
            view.close()  # the progress display ends before the summary
            _print_summary(outcome)

        tuning.run(
            spec, dry_run=dry_run, on_trial=_progress, on_message=err.print, on_done=done,
            on_progress=view,
        )  # fmt: skip


def _print_summary(done: tuning.TuneOutcome) -> None:
    result, wb = done.result, done.write_back
    out.print(results_table(result, done.objective))
    out.print(summary_sentence(result))
    best = output.trial(result, result.best_trial)
    if best is not None and best.models:  # several models: each one's config
        for name, text in model_texts(best.config_pbtxt, result.model).items():
            out.print(f"  {name}: {config_summary(text)}", markup=False)
    for extra in (load_sweep_table(result), validation_table(result)):
        if extra is not None:
            out.print(extra)
    if wb.diff:
        out.print(wb.diff, markup=False, highlight=False, end="")
    out.print(wb.reason + (f" (original kept as {wb.backup})" if wb.backup else ""))
    if done.reload_note:
        out.print(done.reload_note)
    for message in result.messages:
        out.print(message)
    for path in done.paths:
        out.print(f"wrote {path}")


COMMANDS: list[click.Command] = [tune]
