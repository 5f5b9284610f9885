"""`perfkit.tune.run`: a whole tune, as `perfkit tune` runs it, callable from Python.

Owns the orchestration around the ask/tell loop (`perfkit.tune.tuner`): the model on disk (built
from the zoo when asked), the study (created or resumed), the server (started, and restarted when
it crashes mid-study), the result files, the write-back of the winner and the server's reload of
the config on disk. Prints nothing: progress goes to the callbacks. Must not import `perfkit.cli`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from perfkit import formats
from perfkit.errors import ConfigError, ServerUnavailable
from perfkit.model_repo import ModelRepoError
from perfkit.results import TrialRecord, TuneResult
from perfkit.sweepfile import TuneSweep
from perfkit.tune import finish, identity, output, setup
from perfkit.tune import server as tune_server
from perfkit.tune.objective import Objective
from perfkit.tune.progress import ReportingEvaluator, Tracker, TuneProgress

logger = logging.getLogger(__name__)

# Restarts of a crashed server perfkit started (embedded, local or docker) within one tune.
MAX_SERVER_RESTARTS = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class TuneOutcome:
    """What `run` hands its `on_done` callback: the result and what was done with it.

    Attributes:
        result: the study's `TuneResult` (the value `run` returns).
        objective: the objectives and constraints the trials were scored with.
        write_back: the best config's diff against the file on disk and where it went (nothing
            is written on a dry run, or when the tune stopped early).
        paths: the result files written (Model Analyzer's CSV, trials.csv, results.json).
        reload_note: whether the server now serves the config on disk ("" when not reloaded).
    """

    result: TuneResult
    objective: Objective
    write_back: output.WriteBack
    paths: tuple[Path, ...]
    reload_note: str


def run(
    sweep: TuneSweep,
    *,
    dry_run: bool = False,
    on_trial: Callable[[TrialRecord], None] | None = None,
    on_message: Callable[[str], None] | None = None,
    on_done: Callable[[TuneOutcome], None] | None = None,
    server_env: Mapping[str, str] | None = None,
    on_progress: Callable[[TuneProgress], None] | None = None,
) -> TuneResult:
    """Search config.pbtxt variants of `sweep.model` on a live server and write the best one back.

    Measures the default config first, then up to `sweep.trials` variants (fewer on a grid that
    runs out, at `sweep.timeout_s`, or after `sweep.patience` trials without improvement), each
    variant at most once per study; then the default again at the best's client load, so the
    gain compares configs at the same load; then, when asked, the top configs over a full load
    sweep (`sweep.top_k`) and on another server (`sweep.validate_on`): `perfkit.tune.finish`. The study is
    stored (SQLite in the output directory unless `sweep.storage` says otherwise), so a rerun of
    the same sweep resumes it, and workers that share a storage and study name share the work.
    With no `sweep.url` the server `sweep.launch` says (the embedded perfkit_server, a local
    tritonserver or docker) is started in explicit model-control mode, its log kept in the
    output directory, and restarted up to `MAX_SERVER_RESTARTS` times when it stops answering.
    At the end the result files go to `sweep.output` (default `tune-results/<model>`), the best
    config replaces `<repository>/<model>/config.pbtxt` (the original kept as
    `config.pbtxt.orig`) when it beats the default by `sweep.search.min_gain_pct`, and the
    server is left serving the file on disk. With `space.formats`, the candidate model files are
    made and checked first, and only the one the config on disk reads is kept (perfkit.formats).
    A sweep with `[[models]]` (`sweep.models`) tunes those models together on one server,
    measured at the same time (`perfkit.tune.multi`).

    Args:
        sweep: what to tune and how, e.g. `perfkit.sweepfile.load_sweep(path)`.
        dry_run: compute the best config's diff but leave the model's config.pbtxt as it is.
        on_trial: called with each trial this process measured (or failed), as it finishes.
        on_message: called with progress notes (the study resumed, a server restarted, ...);
            they are logged at INFO when not given.
        on_done: called once with the result and what was written, before `run` returns, and
            also before it re-raises an interrupt or a server failure, so that a caller can
            show what the study holds so far.
        server_env: environment variables set for the server perfkit starts on top of this
            process's and `sweep.launch.env` (e.g. CUDA_VISIBLE_DEVICES); refused with `sweep.url`.
        on_progress: called with a `perfkit.tune.progress.TuneProgress` (trial k/N, elapsed,
            ETA, best so far, what the trial is doing) at each phase and window of each trial.

    Returns:
        The study's `TuneResult`: every measured trial, the default and best trials, the gain,
        the Pareto front for several objectives, and `written_to` (None when nothing was written).

    Raises:
        ConfigError: the model's config.pbtxt is missing (and no zoo model is named to build it),
            or the sweep does not fit the model, or it asks for a GPU objective or constraint
            and the server exports no GPU metrics, or `sweep.validate_on` is not in explicit
            model-control mode (checked before any trial).
        ServerUnavailable: no server answered at `sweep.url` or `sweep.validate_on`, or the started server stopped
            answering more than `MAX_SERVER_RESTARTS` times (the result files are written first).
        KeyboardInterrupt: on Ctrl-C, after the result files are written; the interrupted trial
            is failed, and a rerun resumes the study.
    """
    import optuna

    note = on_message or (lambda text: logger.info("%s", text))
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            # Heartbeats and grouped TPE are stable enough for us; their notices only add noise.
            warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
            return _run(
                sweep, dry_run=dry_run, on_trial=on_trial, note=note, on_done=on_done,
                server_env=server_env, on_progress=on_progress,
            )  # fmt: skip
    finally:
        optuna.logging.set_verbosity(verbosity)
        from perfkit.tune.storage import set_worker_attrs

        set_worker_attrs({})  # the trials' target tag is this run's only


def _run(
    sweep: TuneSweep,
    *,
    dry_run: bool,
    on_trial: Callable[[TrialRecord], None] | None,
    note: Callable[[str], None],
    on_done: Callable[[TuneOutcome], None] | None,
    server_env: Mapping[str, str] | None = None,
    on_progress: Callable[[TuneProgress], None] | None = None,
) -> TuneResult:
    from perfkit.model_repo.config import config_hash, load_config
    from perfkit.tune import capacity_live, ensemble, multi, multi_measure
    from perfkit.tune import storage as st
    from perfkit.tune.capacity import is_capacity
    from perfkit.tune.evaluate import LiveEvaluator
    from perfkit.tune.space import SearchSpace, check_instances
    from perfkit.tune.tuner import LoopSettings, Tuner, make_sampler

    model_dir = setup.ensure_model(sweep, note)
    # Several models tuned together on one server ([[models]]): perfkit.tune.multi.
    group = multi.load_group(sweep, note)
    try:
        base = load_config(model_dir / "config.pbtxt")
    except ModelRepoError as exc:  # the pure module's own error: a ConfigError to perfkit's users
        raise ConfigError(str(exc)) from exc
    # An ensemble is tuned as one unit: its composing models' configs (perfkit.tune.ensemble).
    pipeline = ensemble.load_pipeline(sweep.repository, sweep.model)
    default_text = ensemble.default_text(pipeline, model_dir)
    default_text = default_text if group is None else multi.group_text(group)
    out_dir = (sweep.output or Path("tune-results") / sweep.model).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    if server_env is not None and sweep.url is not None:
        raise ConfigError(
            "server_env is for a server perfkit starts; this sweep names a server.url"
        )
    # Format selection: candidates made and checked, "auto" resolved (perfkit.formats).
    prepared = formats.prepare(sweep, model_dir, base, note)
    sweep = prepared.sweep
    # The capacity objective: a rate search per config (perfkit.tune.capacity_live).
    capacity = is_capacity(sweep.objectives)
    if capacity:
        capacity_live.check_sweep(sweep, pipeline)
    if pipeline is None:
        space = SearchSpace.from_specs(
            sweep.space, capacity_live.space_load(sweep.load) if capacity else sweep.load
        )
        check_instances(base, sweep.space)
    else:
        space = ensemble.pipeline_space(pipeline, sweep.space, sweep.load)
    space = space if group is None else multi.group_space(sweep)
    objective = Objective(sweep.objectives, sweep.constraints)
    objective = objective if group is None else multi.group_objective(sweep)
    finish.check(sweep, pipeline=pipeline is not None)  # top_k, validate_on: before any trial
    trials = sweep.trials
    if sweep.search.sampler == "grid":
        trials = min(trials, space.size() + 1)
    settings = LoopSettings(
        model=sweep.model,
        study_name=sweep.study_name or "",  # the default name needs the target: set below
        trials=trials,
        timeout_s=sweep.timeout_s,
        sampler=sweep.search.sampler,
        seed=sweep.search.seed,
        prune=sweep.search.prune,
        prune_ratio=sweep.search.prune_ratio,
        startup_trials=sweep.search.startup_trials,
    )
    storage_url = sweep.storage or st.default_storage_url(out_dir)
    rdb = st.open_storage(storage_url)
    opened: identity.OpenedStudy | None = None
    started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    interrupted = False
    failure: ServerUnavailable | None = None
    messages: list[str] = []
    messages.extend(prepared.notes)
    restarts = 0
    tracker: Tracker | None = None
    while True:
        with tune_server.server(sweep, server_env, out_dir, restarts, note) as (
            url,
            info,
            metrics_url,
        ):
            # The study's identity includes the target, known once the server answers.
            target = identity.target_of(
                info, launch=setup.launch_mode(sweep), docker_gpus=sweep.launch.gpus,
                server_env={**dict(sweep.launch.env), **(server_env or {})},
            )  # fmt: skip
            st.set_worker_attrs({identity.TARGET_ATTR: target.as_attr()})
            if opened is None:
                opened = identity.open_target_study(
                    rdb, sweep,
                    multi.group_hash(group, sweep) if group else
                    config_hash(base) if pipeline is None else ensemble.pipeline_hash(pipeline),
                    target, objective.directions(),
                    make_sampler(settings, space),
                )  # fmt: skip
                study, created = opened.study, opened.created
                settings = dataclasses.replace(settings, study_name=study.study_name)
                setup.describe_study(sweep, study, storage_url, target, space.size(), trials, note)
                for line in opened.notes:
                    note(line)
                messages.extend(opened.notes)
            scrape = setup.metrics_to_collect(sweep, metrics_url, note)
            if on_progress is not None and tracker is None:
                tracker = setup.tracker(study, trials, objective, sweep, on_progress)
            kind: Callable[..., LiveEvaluator] = (
                LiveEvaluator if pipeline is None else ensemble.PipelineEvaluator
            )
            if capacity:  # refused for ensembles and several models (capacity_live.check_sweep)
                kind = capacity_live.CapacityEvaluator
            own = multi_measure.evaluator_args(group, objective, study, pipeline)
            evaluator = (kind if group is None else multi_measure.GroupEvaluator)(
                url=url,
                protocol=sweep.protocol,
                model=sweep.model,
                load=sweep.load,
                measure=sweep.measure,
                metrics_url=scrape,
                **own,
                **(capacity_live.evaluator_args(sweep) if capacity else {}),
            )
            if capacity:
                objective, line = capacity_live.with_budget(
                    evaluator, objective, study, base, space.baseline_load(sweep.load), note
                )
                if line not in messages:
                    messages.append(line)
            tuner = Tuner(
                settings=settings,
                space=space,
                objective=objective,
                base_config=group or (base if pipeline is None else pipeline),
                baseline_load=multi.baseline_load(space)
                if group
                else space.baseline_load(sweep.load),
                study=study,
                created=created,
                evaluator=evaluator
                if tracker is None
                else ReportingEvaluator(evaluator, tracker, group or pipeline or base),
                variants_dir=out_dir / output.VARIANTS_DIR,
                on_trial=on_trial if tracker is None else setup.told(tracker, on_trial),
                variants=multi.GroupVariants(space)
                if group
                else None
                if pipeline is None
                else ensemble.PipelineVariants(),
                patience=sweep.patience,
            )
            if capacity:
                capacity_live.attach_pruning(evaluator, tuner.best_value, base, sweep.search)
            try:
                tuner.run()
                # The gain must compare configs, not loads: the default at the best's load.
                fair = tuner.ensure_default_at_best()
                if fair:
                    tuner.messages.append(fair)
            except KeyboardInterrupt:
                interrupted = True
                messages.append("interrupted (Ctrl-C): rerun the same command to resume")
            except ServerUnavailable as exc:
                evaluator.close()
                if sweep.url is None and restarts < MAX_SERVER_RESTARTS:
                    restarts += 1
                    restarted = (
                        f"the {sweep.launch.mode} server stopped answering; restarted it "
                        f"({restarts}/{MAX_SERVER_RESTARTS})"
                    )
                    note(f"{restarted}: {exc}")
                    messages.extend([*tuner.messages, restarted])
                    continue
                failure = exc
                messages.append(f"stopped: {exc}. Rerun the same command to resume")
            messages.extend(tuner.messages)
            finished = finish.Finished()
            if not interrupted and failure is None:  # the top-k load sweep, --validate-on
                finished = finish.finish(study, sweep, objective, url, note)
                messages.extend(finished.messages)
                interrupted = finished.interrupted
            result = output.build_result(
                study,
                objective,
                model=sweep.model,
                sampler=sweep.search.sampler,
                default_config_pbtxt=default_text,
                server=info,
                started_at=started_at,
                min_gain_pct=sweep.search.min_gain_pct,
                messages=messages,
                settings={
                    **setup.result_settings(sweep, trials),
                    **setup.target_settings(study, target),
                    **prepared.settings(),
                    **(capacity_live.result_settings(evaluator) if capacity else {}),
                },
            )
            result = dataclasses.replace(
                result, load_sweeps=finished.load_sweeps, validation=finished.validation
            )
            stopped = interrupted or failure is not None
            wb = output.WriteBack("", None, None, "stopped early: nothing written")
            write, reload = ensemble.finishers(pipeline, output.write_back, tune_server.reload)
            write, reload = multi.finishers(group, write, reload)
            if not stopped:
                wb = write(result, model_dir, dry_run=dry_run)
            result = prepared.finish(result)  # the winner's model file kept, the rest removed
            result = output.with_written(result, wb)
            paths = output.write_outputs(result, out_dir)
            reload_note = "" if stopped else reload(url, sweep)
            evaluator.close()
        break
    if on_done is not None:
        on_done(
            TuneOutcome(
                result=result,
                objective=objective,
                write_back=wb,
                paths=tuple(paths),
                reload_note=reload_note,
            )
        )
    if interrupted:
        raise KeyboardInterrupt
    if failure is not None:
        raise failure
    return result
