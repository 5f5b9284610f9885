"""A study's trial bookkeeping: the user-attr names every trial carries, the queries over a study's
trials the loop decides by, and `record_of` (a finished trial -> `TrialRecord`).

Every measured trial carries its whole record in Optuna user attrs, so a resumed or shared study
rebuilds every `TrialRecord` from storage alone. Must not import the loop (`perfkit.tune.tuner`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.exc import SQLAlchemyError

from perfkit.errors import ConfigError
from perfkit.results import CapacityRecord, Measurement, TrialRecord, WindowStat
from perfkit.tune import storage as st
from perfkit.tune.objective import Objective
from perfkit.tune.space import SearchSpace

logger = logging.getLogger(__name__)

A_KEY = st.KEY_ATTR
A_NAME = st.NAME_ATTR
A_PARAMS = "params"
A_DEFAULT = "is_default"
A_MEASURED = st.MEASURED_ATTR
A_DUP = st.DUP_ATTR
A_VIOL = "constraint_violations"
A_METRICS = "metrics"
A_MEAS = "measurement"
A_CONFIG = "config_pbtxt"
# The capacity objective's search of the trial's config (`CapacityRecord` as JSON).
A_CAPACITY = "capacity"
A_DURATION = "duration_s"
A_OVERHEAD = "overhead_s"
A_WINDOW = "window_s"
# A model group's trial: every model's measurement, by name (perfkit.tune.multi_measure).
A_MODELS = "models"
# On a measurement of the default config at the best's load: the number of that best trial.
A_FAIR = "default_at_load_of"
# True while a trial holds the claim to measure its variant (`Tuner._find_same`); False once it
# gave the claim up to a lower-numbered peer.
A_CLAIM = "measuring"

INTERRUPTED = "interrupted (Ctrl-C); measured again on resume"


def json_safe(params: Mapping[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}


def encode_measurement(m: Measurement) -> Any:
    from perfkit.report.schema import encode_value

    return encode_value(m)


def decode_measurement(value: Any) -> Measurement | None:
    if not isinstance(value, dict):
        return None
    from perfkit.report.schema import decode_value

    try:
        return decode_value(Measurement, value, "measurement")
    except ConfigError as exc:
        logger.warning("stored measurement unreadable: %s", exc)
        return None


def decode_capacity(value: Any) -> CapacityRecord | None:
    if not isinstance(value, dict):
        return None
    from perfkit.report.schema import decode_value

    try:
        return decode_value(CapacityRecord, value, "capacity")
    except ConfigError as exc:
        logger.warning("stored capacity search unreadable: %s", exc)
        return None


# -- queries over a study's trials (any worker's) ---------------------------------------------
def budget_used(trials: Iterable[FrozenTrial]) -> int:
    """Distinct variants finished, default included; the default's measurement at the best's load
    (after the search) is on top of the budget."""
    return sum(
        1
        for t in trials
        if t.state.is_finished()
        and t.user_attrs.get(A_MEASURED)
        and A_DUP not in t.user_attrs
        and A_FAIR not in t.user_attrs
    )


def default_done_or_running(trials: Iterable[FrozenTrial]) -> bool:
    """Whether the default config (at the baseline load) is measured or being measured."""
    for t in trials:
        if not t.user_attrs.get(A_DEFAULT) or A_FAIR in t.user_attrs:
            continue
        if t.state == TrialState.RUNNING or t.user_attrs.get(A_MEASURED):
            return True
    return False


def best_trial(trials: Iterable[FrozenTrial], objective: Objective) -> FrozenTrial | None:
    """The complete, feasible, measured trial with the best primary objective."""
    best: FrozenTrial | None = None
    best_value = 0.0
    for t in trials:
        if t.state != TrialState.COMPLETE or A_DUP in t.user_attrs or t.values is None:
            continue
        if any(float(v) > 0 for v in t.constraints.values()):
            continue
        value = float(t.values[0])
        if best is None or objective.better(value, best_value):
            best, best_value = t, value
    return best


def retries_due(trials: Iterable[FrozenTrial]) -> list[dict[str, Any]]:
    """The params of each variant whose measurement was cut short (its worker killed, or Ctrl-C)
    and that no trial has measured or is measuring since: the next run measures each once more
    (the kill rule in `perfkit.tune.storage`). The default config is left out: the loop measures
    it again anyway (`default_done_or_running`)."""
    trials = list(trials)
    settled = {
        t.user_attrs.get(A_KEY)
        for t in trials
        if t.state == TrialState.RUNNING or (t.state.is_finished() and t.user_attrs.get(A_MEASURED))
    }
    due: dict[Any, dict[str, Any]] = {}
    for t in trials:
        attrs = t.user_attrs
        key = attrs.get(A_KEY)
        if (
            t.state == TrialState.FAIL
            and A_NAME in attrs
            and not attrs.get(A_MEASURED)
            and not attrs.get(A_DEFAULT)
            and A_DUP not in attrs
            and key not in settled
            and A_PARAMS in attrs
        ):
            due.setdefault(key, dict(attrs[A_PARAMS]))
    return list(due.values())


def finished_with_key(trials: Iterable[FrozenTrial], key: str) -> FrozenTrial | None:
    """The finished trial that measured variant `key` (copies left out), if any."""
    for t in trials:
        if t.user_attrs.get(A_KEY) != key or A_DUP in t.user_attrs:
            continue
        if t.state.is_finished() and t.user_attrs.get(A_MEASURED):
            return t
    return None


def taken_points(
    trials: Iterable[FrozenTrial], space: SearchSpace
) -> set[tuple[tuple[str, Any], ...]]:
    """Points (`space.point_key`) queued, running, measured or copied: not worth queueing again."""
    taken: set[tuple[tuple[str, Any], ...]] = set()
    for t in trials:
        if t.user_attrs.get(A_DEFAULT):
            continue
        if t.state == TrialState.WAITING:
            fixed = t.system_attrs.get("fixed_params") or {}
            point = {
                d.name: d.decode(fixed[d.param_name]) for d in space.dims if d.param_name in fixed
            }
        elif t.state == TrialState.RUNNING or t.user_attrs.get(A_MEASURED) or A_DUP in t.user_attrs:
            point = t.user_attrs.get(A_PARAMS) or {}
        else:
            continue  # failed and not measured (interrupted): it may be measured again
        taken.add(space.point_key(point))
    return taken


# -- telling trials ------------------------------------------------------------------------------
def fail_interrupted(study: optuna.Study, trial: optuna.Trial) -> None:
    """Ctrl-C: fail the trial if it is still running, so a rerun measures it again."""
    storage = study._storage
    try:
        if storage.get_trial(trial._trial_id).state != TrialState.RUNNING:
            return
        storage.set_trial_user_attr(trial._trial_id, st.REASON_ATTR, INTERRUPTED)
        storage.set_trial_user_attr(trial._trial_id, A_MEASURED, False)
        study.tell(trial, state=TrialState.FAIL)
    except (SQLAlchemyError, RuntimeError, ValueError) as exc:
        # Left RUNNING under this (soon dead) process: the next run's recovery fails it.
        logger.warning("could not mark trial %d as interrupted: %s", trial.number, exc)


def fail_mine_running(study: optuna.Study) -> None:
    """Ctrl-C backstop: fail the RUNNING trials tagged with this worker (e.g. one interrupted
    between its creation and the loop taking charge of it), so none is left running."""
    me = st.worker_id()
    storage = study._storage
    try:
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.user_attrs.get(st.WORKER_ATTR) != me:
                continue
            storage.set_trial_user_attr(t._trial_id, st.REASON_ATTR, INTERRUPTED)
            storage.set_trial_user_attr(t._trial_id, A_MEASURED, False)
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
    except (SQLAlchemyError, RuntimeError, ValueError) as exc:
        # Left RUNNING under this (soon dead) process: the next run's recovery fails them.
        logger.warning("could not mark interrupted trials as failed: %s", exc)


def tell_copy(study: optuna.Study, trial: optuna.Trial, same: FrozenTrial, *, single: bool) -> None:
    """Tell `trial` the stored result of `same` (no measurement); `single`: one objective."""
    trial.set_user_attr(A_DUP, same.number)
    trial.set_user_attr(A_NAME, same.user_attrs.get(A_NAME, ""))
    for key in (A_METRICS, A_VIOL, st.REASON_ATTR):
        if key in same.user_attrs:
            trial.set_user_attr(key, same.user_attrs[key])
    if same.state in (TrialState.COMPLETE, TrialState.PRUNED):
        for key, value in same.constraints.items():
            trial.set_constraint(key, float(value))
    if same.state == TrialState.COMPLETE and same.values is not None:
        study.tell(trial, values=list(same.values))
    elif same.state == TrialState.PRUNED and single:
        last = same.last_step
        if last is not None:
            trial.report(same.intermediate_values[last], last)
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, state=TrialState.FAIL)


# -- finished trials as values -------------------------------------------------------------------
def window_metrics(windows: tuple[WindowStat, ...]) -> dict[str, float]:
    """The partial metrics of a pruned trial: means over the windows it ran."""
    if not windows:
        return {}
    n = len(windows)
    return {
        "throughput_infer_per_s": sum(w.throughput_infer_per_s for w in windows) / n,
        "avg_latency_us": sum(w.latency_avg_us for w in windows) / n,
        "windows": float(n),
    }


_STATES = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}


def record_of(t: FrozenTrial, objective: Objective) -> TrialRecord | None:
    """The TrialRecord of a finished, measured trial (None for copies and unfinished ones)."""
    state = _STATES.get(t.state)
    attrs = t.user_attrs
    if state is None or A_DUP in attrs or not attrs.get(A_MEASURED):
        return None
    violations = {str(k): float(v) for k, v in (attrs.get(A_VIOL) or {}).items()}
    objectives: dict[str, float] = {}
    if t.state == TrialState.COMPLETE and t.values is not None:
        objectives = {
            name: float(v) for (name, _), v in zip(objective.targets, t.values, strict=False)
        }
    params = dict(attrs.get(A_PARAMS) or {})
    return TrialRecord(
        number=t.number,
        variant_name=str(attrs.get(A_NAME, f"trial_{t.number}")),
        params=params,
        config_pbtxt=str(attrs.get(A_CONFIG, "")),
        state=state,  # type: ignore[arg-type]
        feasible=state == "complete" and all(v <= 0 for v in violations.values()),
        reason=attrs.get(st.REASON_ATTR),
        objectives=objectives,
        constraints=violations,
        measurement=decode_measurement(attrs.get(A_MEAS)),
        capacity=decode_capacity(attrs.get(A_CAPACITY)),
        duration_s=float(attrs.get(A_DURATION, 0.0)),
        overhead_s=float(attrs.get(A_OVERHEAD, 0.0)),
        models=_models_of(attrs),
    )


def _models_of(attrs: Mapping[str, Any]) -> dict[str, Measurement]:
    """A model group's per-model measurements (perfkit.tune.multi's A_MODELS attr)."""
    out: dict[str, Measurement] = {}
    for name, value in (attrs.get(A_MODELS) or {}).items():
        m = decode_measurement(value)
        if m is not None:
            out[str(name)] = m
    return out


def is_default(t: FrozenTrial) -> bool:
    return bool(t.user_attrs.get(A_DEFAULT))
