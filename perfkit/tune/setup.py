"""The pieces `perfkit.tune.api` assembles a tune from: the model on disk, the study's description,
the GPU metrics to record, the progress tracker, and the settings kept in results.json."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from perfkit.errors import ConfigError
from perfkit.results import TrialRecord
from perfkit.sweepfile import TuneSweep
from perfkit.tune import identity
from perfkit.tune.objective import Objective
from perfkit.tune.progress import Tracker, TuneProgress


def tracker(
    study: Any, trials: int, objective: Objective, sweep: TuneSweep,
    emit: Callable[[TuneProgress], None],
) -> Tracker:  # fmt: skip
    """The progress of this process's trials, counted on from the study's finished ones."""
    from perfkit.tune import records as rec

    frozen = study.get_trials(deepcopy=False)
    best = rec.best_trial(frozen, objective)
    return Tracker(
        trials=trials, done_before=rec.budget_used(frozen), objective=objective, emit=emit,
        windows=sweep.measure.max_windows,
        best=None if best is None or best.values is None else (float(best.values[0]), best.number),
    )  # fmt: skip


def told(
    tracker: Tracker, on_trial: Callable[[TrialRecord], None] | None
) -> Callable[[TrialRecord], None]:
    def told(record: TrialRecord) -> None:
        tracker.finished(record)
        if on_trial is not None:
            on_trial(record)

    return told


def launch_mode(sweep: TuneSweep) -> str:
    """How perfkit reached the server, for its target (`perfkit.tune.identity.LAUNCHES`)."""
    return sweep.launch.mode if sweep.url is None else "remote"


def describe_study(
    sweep: TuneSweep,
    study: Any,
    storage_url: str,
    target: identity.Target,
    points: int,
    trials: int,
    note: Callable[[str], None],
) -> None:
    done_before = sum(1 for t in study.get_trials(deepcopy=False) if t.state.is_finished())
    note(
        f"tuning {sweep.model}: {points} points in the space, budget {trials} trials, "
        f"sampler {sweep.search.sampler}, study {study.study_name!r} in {storage_url}, "
        f"target {target.describe()}"
        + (f" (resuming: {done_before} trials already finished)" if done_before else "")
    )


def target_settings(study: Any, target: identity.Target) -> dict[str, Any]:
    """For results.json: this worker's target, and every target's trials (several only when a
    study is shared by name across targets)."""
    return {
        "target": target.as_attr(),
        "trials_by_target": identity.targets_by_trial(study.get_trials(deepcopy=False)),
    }


def metrics_to_collect(
    sweep: TuneSweep, metrics_url: str, note: Callable[[str], None]
) -> str | None:
    """The metrics URL to scrape during each trial, or None: scraped when there are GPUs to record
    (the server's nv_gpu_* metrics, or NVML here for a server on this host that exports none).
    Raises ConfigError, before any trial, for a GPU objective or constraint and no GPU metrics."""
    from perfkit.tune.gpu import gpu_source

    needed = sweep.gpu_metrics_needed()
    try:
        source = gpu_source(metrics_url)
        problem = "" if source.gpus else "exports no nv_gpu_* metrics (no GPU, no NVML, or MIG)"
    except (OSError, ValueError) as exc:
        source, problem = None, f"cannot be read: {exc}"
    if needed and problem:
        raise ConfigError(
            f"{sweep.source}: {', '.join(needed)} needs GPU metrics, but the server's metrics "
            f"endpoint {metrics_url} {problem}. Remove the GPU objectives and constraints, "
            "or point server.metrics_url at the endpoint of a server that exports them."
        )
    if source is None or not source.gpus:
        return None
    note(f"recording the metrics of {len(source.gpus)} GPU(s) on every trial, from {source.where}")
    return metrics_url


def ensure_model(sweep: TuneSweep, note: Callable[[str], None]) -> Path:
    model_dir = sweep.repository / sweep.model
    if not (model_dir / "config.pbtxt").exists():
        if sweep.zoo is None:
            raise ConfigError(
                f"{sweep.source}:model.repository: {model_dir}/config.pbtxt does not exist. Point "
                "model.repository at the repository holding the model, or set model.zoo to build it."
            )
        from perfkit import zoo

        note(f"building zoo model {sweep.zoo!r} into {sweep.repository}")
        zoo.build(sweep.zoo, sweep.repository)
    return model_dir


def result_settings(sweep: TuneSweep, trials: int) -> dict[str, Any]:
    """The sweep's load and measure settings for results.json (JSON types only)."""
    doc = {
        "load": asdict(sweep.load),
        "measure": asdict(sweep.measure),
        "trials": trials,
        "timeout_s": sweep.timeout_s,
        "patience": sweep.patience,
        "top_k": sweep.top_k,
        "validate_on": sweep.validate_on,
        "min_gain_pct": sweep.search.min_gain_pct,
        "default_at_best_load": "one extra measurement on top of the trials budget",
    }
    loaded: dict[str, Any] = json.loads(json.dumps(doc, default=str))
    return loaded
