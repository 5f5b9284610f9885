"""`perfkit tune SWEEP`: search config.pbtxt variants on a live server and write the best one back."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from perfkit.cli._console import err, out
from perfkit.errors import ConfigError, ServerUnavailable
from perfkit.results import ServerInfo, TrialRecord, TuneResult
from perfkit.sweepfile import SAMPLERS, SweepSpec, load_sweep
from perfkit.tune import output
from perfkit.tune.objective import Objective

# Max rows of the top-configs table (the default is always shown too).
TOP_N = 5
# Restarts of a crashed embedded server within one `perfkit tune`.
MAX_SERVER_RESTARTS = 3


def study_name_for(spec: SweepSpec, base_hash: str) -> str:
    """Study name: the model plus a hash of what makes results comparable: the model's config on
    disk (after a write-back, a rerun tunes from the new baseline), space, load and objective."""
    key = json.dumps(
        {
            "base": base_hash,
            "space": dataclasses.asdict(spec.space),
            "load": dataclasses.asdict(spec.load),
            "measure": dataclasses.asdict(spec.measure),
            "objectives": spec.objectives,
            "constraints": dataclasses.asdict(spec.constraints),
        },
        sort_keys=True,
        default=str,
    )
    return f"{spec.model}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


@contextlib.contextmanager
def _server(spec: SweepSpec) -> Iterator[tuple[str, ServerInfo]]:
    from perfkit.launch import EmbeddedServer, server_info, wait_ready

    if spec.url is not None:
        wait_ready(spec.url, spec.protocol, spec.startup_timeout_s)
        yield spec.url, server_info(spec.url, spec.protocol)
        return
    with EmbeddedServer(
        spec.repository,
        model_control_mode="explicit",
        load_models=[spec.model],
        startup_timeout_s=spec.startup_timeout_s,
    ) as server:
        url = server.grpc_url if spec.protocol == "grpc" else server.http_url
        try:
            info = dataclasses.replace(server_info(url, spec.protocol), embedded=True)
        except Exception:  # the CLI boundary: metadata is nice to have
            info = ServerInfo(
                url=url, protocol=spec.protocol, kind="perfkit_server", version="", embedded=True
            )
        yield url, info


def _ensure_model(spec: SweepSpec) -> Path:
    model_dir = spec.repository / spec.model
    if not (model_dir / "config.pbtxt").exists():
        if spec.zoo is None:
            raise ConfigError(
                f"{spec.source}:model.repository: {model_dir}/config.pbtxt does not exist. Point "
                "model.repository at the repository holding the model, or set model.zoo to build it."
            )
        from perfkit import zoo

        err.print(f"building zoo model {spec.zoo!r} into {spec.repository}")
        zoo.build(spec.zoo, spec.repository)
    return model_dir


def _fmt(value: float | None, scale: float = 1.0, digits: int = 1) -> str:
    return "" if value is None else f"{value / scale:,.{digits}f}"


def _row(t: TrialRecord, tag: str) -> list[str]:
    m = t.measurement
    load = ""
    if m is not None:
        load = f"{'c' if m.mode == 'concurrency' else 'r'}{m.level:g} b{m.batch_size}"
    return [
        tag,
        t.variant_name.removeprefix(f"{t.variant_name.rsplit('_config_', 1)[0]}_"),
        output.describe_config(t.config_pbtxt),
        load,
        _fmt(m.throughput_infer_per_s if m else None),
        _fmt(m.latency.p99_us if m else None, 1000.0, 2),
        "yes" if t.feasible else "no",
    ]


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
    for col in ("", "variant", "config", "load", "infer/s", "p99 ms", "ok"):
        table.add_column(
            col,
            justify="right" if col in ("infer/s", "p99 ms") else "left",
            no_wrap=col != "config",
        )
    for t in shown:
        tag = "best" if t.number == result.best_trial else ""
        if t.number == result.default_trial:
            tag = (tag + " default").strip()
        elif t.number == result.default_best_trial:
            tag = (tag + " default best").strip()
        table.add_row(*_row(t, tag))
    # The default as compared (at the best's load), then its best under the constraints.
    for number, tag in (
        (result.default_trial, "default"),
        (result.default_best_trial, "default best"),
    ):
        extra = output.trial(result, number)
        if extra is not None and all(t.number != extra.number for t in shown):
            table.add_row(*_row(extra, tag))
            shown.append(extra)
    if objective is not None:
        table.caption = output.comparison_text(result, objective) or None
    return table


def _progress(t: TrialRecord) -> None:
    m = t.measurement
    if t.state == "complete" and m is not None:
        detail = (
            f"{m.throughput_infer_per_s:,.1f} infer/s, p99 {m.latency.p99_us / 1000:.2f} ms"
            + ("" if t.feasible else " (misses constraints)")
        )
    else:
        reason = t.reason or ""
        detail = reason if reason.startswith(f"{t.state}:") else f"{t.state}: {reason}"
    err.print(f"trial {t.number:>3} {t.variant_name:<28} {detail}")


@click.command("tune")
@click.argument("sweep", type=click.Path(path_type=Path, dir_okay=False))
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
    help="Study name (default: model + hash of the sweep); workers sharing a study use the same.",
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
    help="Repository holding the model (overrides the sweep's model.repository).",
)
@click.option(
    "--window-ms",
    type=click.IntRange(min=10),
    help="Measurement window (overrides measure.window_ms).",
)
@click.option("--no-prune", is_flag=True, help="Measure every trial to the end.")
@click.option(
    "--dry-run", is_flag=True, help="Print the diff of the best config; do not write it back."
)
def tune(
    sweep: Path,
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
    dry_run: bool,
) -> None:
    """Find the best config.pbtxt for a model under the sweep's constraints and write it back."""
    spec = load_sweep(sweep)
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
        protocol=protocol,
        repository=None if model_repository is None else model_repository.resolve(),
        search=dataclasses.replace(spec.search, **search) if search else None,
        measure=None
        if window_ms is None
        else dataclasses.replace(spec.measure, window_ms=window_ms),
    )
    run_tune(spec, dry_run=dry_run)


def run_tune(spec: SweepSpec, *, dry_run: bool = False) -> TuneResult:
    """The whole `perfkit tune`: study, server, loop, outputs, write-back, summary."""
    import optuna

    from perfkit.model_repo.config import config_hash, load_config
    from perfkit.tune import storage as st
    from perfkit.tune.evaluate import LiveEvaluator
    from perfkit.tune.space import SearchSpace
    from perfkit.tune.tuner import LoopSettings, Tuner, make_sampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Heartbeats and grouped TPE are stable enough for us; their notices only add noise here.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    model_dir = _ensure_model(spec)
    base = load_config(model_dir / "config.pbtxt")
    default_text = (model_dir / "config.pbtxt").read_text(encoding="utf-8")
    out_dir = (spec.output or Path("tune-results") / spec.model).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    space = SearchSpace.from_specs(spec.space, spec.load)
    objective = Objective(spec.objectives, spec.constraints)
    trials = spec.trials
    if spec.search.sampler == "grid":
        trials = min(trials, space.size() + 1)
    settings = LoopSettings(
        model=spec.model,
        study_name=spec.study_name or study_name_for(spec, config_hash(base)),
        trials=trials,
        timeout_s=spec.timeout_s,
        sampler=spec.search.sampler,
        seed=spec.search.seed,
        prune=spec.search.prune,
        prune_ratio=spec.search.prune_ratio,
        startup_trials=spec.search.startup_trials,
    )
    storage_url = spec.storage or st.default_storage_url(out_dir)
    rdb = st.open_storage(storage_url)
    study, created = st.open_study(
        rdb, settings.study_name, objective.directions(), make_sampler(settings, space)
    )
    done_before = sum(1 for t in study.get_trials(deepcopy=False) if t.state.is_finished())
    err.print(
        f"tuning {spec.model}: {space.size()} points in the space, budget {trials} trials, sampler "
        f"{spec.search.sampler}, study {settings.study_name!r} in {storage_url}"
        + (f" (resuming: {done_before} trials already finished)" if done_before else "")
    )
    started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    interrupted = False
    failure: ServerUnavailable | None = None
    messages: list[str] = []
    restarts = 0
    while True:
        with _server(spec) as (url, info):
            evaluator = LiveEvaluator(
                url=url,
                protocol=spec.protocol,
                model=spec.model,
                load=spec.load,
                measure=spec.measure,
            )
            tuner = Tuner(
                settings=settings,
                space=space,
                objective=objective,
                base_config=base,
                baseline_load=space.baseline_load(spec.load),
                study=study,
                created=created,
                evaluator=evaluator,
                variants_dir=out_dir / output.VARIANTS_DIR,
                on_trial=_progress,
            )
            try:
                tuner.run()
                # The gain must compare configs, not loads: the default at the best's load.
                note = tuner.ensure_default_at_best()
                if note:
                    tuner.messages.append(note)
            except KeyboardInterrupt:
                interrupted = True
                messages.append("interrupted (Ctrl-C): rerun the same command to resume")
            except ServerUnavailable as exc:
                evaluator.close()
                if spec.url is None and restarts < MAX_SERVER_RESTARTS:
                    restarts += 1
                    note = f"the embedded server stopped answering; restarted it ({restarts}/{MAX_SERVER_RESTARTS})"
                    err.print(f"{note}: {exc}")
                    messages.extend([*tuner.messages, note])
                    continue
                failure = exc
                messages.append(f"stopped: {exc}. Rerun the same command to resume")
            messages.extend(tuner.messages)
            result = output.build_result(
                study,
                objective,
                model=spec.model,
                sampler=spec.search.sampler,
                default_config_pbtxt=default_text,
                server=info,
                started_at=started_at,
                min_gain_pct=spec.search.min_gain_pct,
                messages=messages,
                settings=_settings(spec, trials),
            )
            stopped = interrupted or failure is not None
            wb = output.WriteBack("", None, None, "stopped early: nothing written")
            if not stopped:
                wb = output.write_back(result, model_dir, dry_run=dry_run)
            result = output.with_written(result, wb)
            paths = output.write_outputs(result, out_dir)
            reload_note = "" if stopped else _reload(url, spec)
            evaluator.close()
        break
    _print_summary(result, objective, wb, paths, reload_note)
    if interrupted:
        raise KeyboardInterrupt
    if failure is not None:
        raise failure
    return result


def _settings(spec: SweepSpec, trials: int) -> dict[str, Any]:
    """The sweep's load and measure settings for results.json (JSON types only)."""
    doc = {
        "load": dataclasses.asdict(spec.load),
        "measure": dataclasses.asdict(spec.measure),
        "trials": trials,
        "timeout_s": spec.timeout_s,
        "min_gain_pct": spec.search.min_gain_pct,
        "default_at_best_load": "one extra measurement on top of the trials budget",
    }
    loaded: dict[str, Any] = json.loads(json.dumps(doc, default=str))
    return loaded


def _reload(url: str, spec: SweepSpec) -> str:
    """Leave the server serving the file on disk (the written best, or the original)."""
    from perfkit.tune.evaluate import ModelControl

    control = ModelControl(url, spec.protocol, spec.model)
    try:
        control.reload_from_disk()
        return "the server reloaded the config on disk"
    except Exception as exc:  # the CLI boundary: report, do not lose the results
        return f"the server could not reload the config on disk: {exc}"
    finally:
        control.close()


def _print_summary(
    result: TuneResult,
    objective: Objective,
    wb: output.WriteBack,
    paths: list[Path],
    reload_note: str,
) -> None:
    out.print(results_table(result, objective))
    out.print(output.summary_sentence(result, objective))
    if wb.diff:
        out.print(wb.diff, markup=False, highlight=False, end="")
    out.print(wb.reason + (f" (original kept as {wb.backup})" if wb.backup else ""))
    if reload_note:
        out.print(reload_note)
    for message in result.messages:
        out.print(message)
    for path in paths:
        out.print(f"wrote {path}")


COMMANDS: list[click.Command] = [tune]
