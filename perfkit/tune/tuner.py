"""The ask/tell loop: default config first, then sampled variants, each measured at most once per study.

Every trial carries its record in Optuna user attrs (params, variant key and name, config.pbtxt,
metrics, constraint violations, the `Measurement` as JSON, timings, failure reason), so a resumed or
shared study rebuilds every `TrialRecord` from storage alone. Rules:

- The default config is measured first, by the worker that created the study (`<model>_config_default`).
- A variant (config content hash + client load) already finished in the study is never measured
  again: the trial is told the stored result (`duplicate_of`) and does not count against the budget.
  Two workers that draw the same variant at once: the higher trial number waits for the lower one.
- A variant that the server refuses to load, or whose requests fail, is a FAIL trial with its
  reason (the server validates variants: it is the authority on what it accepts). When the server
  stops answering during a trial, that trial fails and `ServerUnavailable` propagates: the CLI
  restarts an embedded server and goes on.
- Single objective: each window is reported to the trial; a trial clearly worse than the best after
  its first windows is pruned (never a measurement of the default config). Constraints go to the
  sampler through `Trial.set_constraint`.
- Fair comparison: the client load is part of the space, so after the search the default config is
  also measured at the best trial's load (`ensure_default_at_best`), unless that (config, load) was
  measured already. That measurement is one extra on top of the trials budget (`A_FAIR` marks it).
"""

from __future__ import annotations

import json
import logging
import random
import signal
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.exc import SQLAlchemyError

from perfkit.errors import ConfigError, ServerUnavailable
from perfkit.model_repo.config import ModelConfig, format_config
from perfkit.model_repo.repository import write_text_atomic
from perfkit.results import Measurement, TrialRecord, WindowStat
from perfkit.sweepfile import SamplerName
from perfkit.tune import storage as st
from perfkit.tune.evaluate import Evaluator, Outcome, PruneTrial
from perfkit.tune.objective import Objective, metrics_of
from perfkit.tune.space import (
    Params,
    SearchSpace,
    build_variant,
    describe_load,
    load_params,
    variant_key,
)

logger = logging.getLogger(__name__)

A_KEY = "variant_key"
A_NAME = "variant_name"
A_PARAMS = "params"
A_DEFAULT = "is_default"
A_MEASURED = "measured"
A_DUP = "duplicate_of"
A_VIOL = "constraint_violations"
A_METRICS = "metrics"
A_MEAS = "measurement"
A_CONFIG = "config_pbtxt"
A_DURATION = "duration_s"
A_OVERHEAD = "overhead_s"
A_WINDOW = "window_s"
# On a measurement of the default config at the best's load: the number of that best trial.
A_FAIR = "default_at_load_of"

# Consecutive already-measured draws before the search space counts as exhausted.
MAX_CONSECUTIVE_DUPLICATES = 60
# Samplers that, after NEIGHBOUR_AFTER draws in a row of already-measured points, are handed the
# nearest unmeasured point instead of being asked again (see `Tuner._enqueue_neighbour`).
NEIGHBOUR_SAMPLERS = ("tpe", "nsga2")
NEIGHBOUR_AFTER = 3
WAIT_FOR_PEER_S = 900.0


@dataclass(frozen=True, slots=True, kw_only=True)
class LoopSettings:
    model: str
    study_name: str
    trials: int
    timeout_s: float | None = None
    sampler: SamplerName = "tpe"
    seed: int | None = None
    prune: bool = True
    prune_ratio: float = 0.5
    startup_trials: int = 2
    # Prune only after this many windows.
    prune_after_windows: int = 2


def _json_safe(params: Mapping[str, Any]) -> dict[str, Any]:
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


def _ask(study: optuna.Study) -> optuna.Trial:
    """`study.ask()`, with a Ctrl-C during it held back until the trial exists and is tagged: the
    interrupted trial is then failed (by the caller's handler) instead of being left RUNNING."""
    held: list[int] = []
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main else None
    if main:
        signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        with warnings.catch_warnings():
            # Heartbeats are recorded by the loop itself (after every window), not by optimize.
            warnings.filterwarnings("ignore", message="Heartbeat of storage", category=UserWarning)
            trial = study.ask()
    finally:
        if main:
            signal.signal(signal.SIGINT, previous or signal.default_int_handler)
    if held:
        # The trial is tagged with this worker: `Tuner._abandon_mine` fails it.
        raise KeyboardInterrupt
    return trial


class AskTellGridSampler(optuna.samplers.GridSampler):
    """GridSampler for ask/tell: its after_trial calls `study.stop()`, which only works inside
    `study.optimize`; the loop checks `is_exhausted` itself instead."""

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        return None


class TaggingSampler(optuna.samplers.BaseSampler):
    """Delegates to `inner`, and first tags every new trial with this worker ("host:pid").

    `before_trial` runs right after the trial row is created, before any (slow) relative sampling:
    a worker killed at any later point leaves a RUNNING trial that names its dead process, so a
    rerun can fail it and measure that variant again (see `storage.recover_orphans`).
    """

    def __init__(self, inner: optuna.samplers.BaseSampler) -> None:
        self.inner = inner

    def infer_relative_search_space(self, study: Any, trial: Any) -> Any:
        return self.inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study: Any, trial: Any, search_space: Any) -> Any:
        return self.inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study: Any, trial: Any, name: str, distribution: Any) -> Any:
        return self.inner.sample_independent(study, trial, name, distribution)

    def before_trial(self, study: Any, trial: Any) -> None:
        study._storage.set_trial_user_attr(trial._trial_id, st.WORKER_ATTR, st.worker_id())
        self.inner.before_trial(study, trial)

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        self.inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()


def make_sampler(settings: LoopSettings, space: SearchSpace) -> optuna.samplers.BaseSampler:
    """The study's sampler, wrapped in a `TaggingSampler`."""
    return TaggingSampler(_inner_sampler(settings, space))


def _inner_sampler(settings: LoopSettings, space: SearchSpace) -> optuna.samplers.BaseSampler:
    """The study's sampler. Constraints reach TPE/NSGA-II through `Trial.set_constraint`
    (Optuna 5's replacement of `constraints_func`): every told trial carries them."""
    if settings.sampler == "grid":
        return AskTellGridSampler(space.grid() or {"_": [0]}, seed=settings.seed)
    if settings.sampler == "random":
        return optuna.samplers.RandomSampler(seed=settings.seed)
    if settings.sampler == "nsga2":
        population = max(4, min(20, settings.trials // 3))
        return optuna.samplers.NSGAIISampler(population_size=population, seed=settings.seed)
    with warnings.catch_warnings():
        # multivariate/group are "experimental" since Optuna 2.2; they handle our conditional space.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=settings.seed,
            n_startup_trials=settings.startup_trials,
            multivariate=True,
            group=True,
            constant_liar=True,
        )


class Tuner:
    """Runs one worker's share of a study. See the module docstring for the rules."""

    def __init__(
        self,
        *,
        settings: LoopSettings,
        space: SearchSpace,
        objective: Objective,
        base_config: ModelConfig,
        baseline_load: Params,
        study: optuna.Study,
        created: bool,
        evaluator: Evaluator,
        variants_dir: Path | None = None,
        on_trial: Callable[[TrialRecord], None] | None = None,
    ) -> None:
        self.settings = settings
        self.space = space
        self.objective = objective
        self.base = base_config
        self.baseline_load = baseline_load
        self.study = study
        self.created = created
        self.evaluator = evaluator
        self.variants_dir = variants_dir
        self.on_trial = on_trial
        self.single = len(objective.targets) == 1
        # Seconds each trial of this worker spent outside its windows, ask to tell (benchmarks).
        self.overheads_s: list[float] = []
        self.measured_here = 0
        self.messages: list[str] = []
        self._rng = random.Random(settings.seed)
        self._last_params: Params = {}

    # -- study bookkeeping ---------------------------------------------------------------------
    def _trials(self) -> list[FrozenTrial]:
        return list(self.study.get_trials(deepcopy=False))

    def variant_name(self, number: int, is_default: bool) -> str:
        suffix = "default" if is_default else str(number)
        return f"{self.settings.model}_config_{suffix}"

    def budget_used(self) -> int:
        """Distinct variants finished in the study (any worker), default included; the default's
        measurement at the best's load (after the search) is on top of the budget."""
        return sum(
            1
            for t in self._trials()
            if t.state.is_finished()
            and t.user_attrs.get(A_MEASURED)
            and A_DUP not in t.user_attrs
            and A_FAIR not in t.user_attrs
        )

    def _default_done_or_running(self) -> bool:
        for t in self._trials():
            if not t.user_attrs.get(A_DEFAULT) or A_FAIR in t.user_attrs:
                continue
            if t.state == TrialState.RUNNING or t.user_attrs.get(A_MEASURED):
                return True
        return False

    def best_trial(self) -> FrozenTrial | None:
        """The complete, feasible, measured trial with the best primary objective (any worker)."""
        best: FrozenTrial | None = None
        best_value = 0.0
        for t in self._trials():
            if t.state != TrialState.COMPLETE or A_DUP in t.user_attrs or t.values is None:
                continue
            if any(float(v) > 0 for v in t.constraints.values()):
                continue
            value = float(t.values[0])
            if best is None or self.objective.better(value, best_value):
                best, best_value = t, value
        return best

    def best_value(self) -> float | None:
        best = self.best_trial()
        return None if best is None or best.values is None else float(best.values[0])

    def _finished_with_key(self, key: str) -> FrozenTrial | None:
        for t in self._trials():
            if t.user_attrs.get(A_KEY) != key or A_DUP in t.user_attrs:
                continue
            if t.state.is_finished() and t.user_attrs.get(A_MEASURED):
                return t
        return None

    def _find_same(self, key: str, number: int, trial: optuna.Trial) -> FrozenTrial | None:
        """A finished trial that measured `key`; waits while a lower-numbered peer measures it."""
        deadline = time.monotonic() + WAIT_FOR_PEER_S
        while True:
            waiting = False
            for t in self._trials():
                if t.number == number or t.user_attrs.get(A_KEY) != key or A_DUP in t.user_attrs:
                    continue
                if t.state.is_finished() and t.user_attrs.get(A_MEASURED):
                    return t
                if t.state == TrialState.RUNNING and t.number < number:
                    waiting = True
            if not waiting or time.monotonic() > deadline:
                return None
            st.record_heartbeat(self.study, trial)
            st.recover_orphans(self.study)
            time.sleep(0.25)

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> None:
        """Measure until the budget, the timeout or the space is used up."""
        try:
            self._run()
        except KeyboardInterrupt:
            self._abandon_mine()
            raise

    def _abandon_mine(self) -> None:
        """Ctrl-C backstop: fail the RUNNING trials tagged with this worker (e.g. one interrupted
        between its creation and the loop taking charge of it), so none is left running."""
        me = st.worker_id()
        storage = self.study._storage
        try:
            for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if t.user_attrs.get(st.WORKER_ATTR) != me:
                    continue
                storage.set_trial_user_attr(
                    t._trial_id, st.REASON_ATTR, "interrupted (Ctrl-C); measured again on resume"
                )
                storage.set_trial_user_attr(t._trial_id, A_MEASURED, False)
                storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        except (SQLAlchemyError, RuntimeError, ValueError) as exc:
            # Left RUNNING under this (soon dead) process: the next run's recovery fails them.
            logger.warning("could not mark interrupted trials as failed: %s", exc)

    def _run(self) -> None:
        started = time.monotonic()
        st.recover_orphans(self.study)
        if not self._default_done_or_running():
            self._measure_default()
        duplicates = 0
        grid = self.settings.sampler == "grid"
        sampler = getattr(self.study.sampler, "inner", self.study.sampler)
        while True:
            if self.budget_used() >= self.settings.trials:
                break
            if (
                self.settings.timeout_s is not None
                and time.monotonic() - started >= self.settings.timeout_s
            ):
                self.messages.append(f"stopped at the time budget ({self.settings.timeout_s:g} s)")
                break
            if (
                grid
                and isinstance(sampler, optuna.samplers.GridSampler)
                and sampler.is_exhausted(self.study)
            ):
                self.messages.append("the grid is exhausted")
                break
            if duplicates >= max(MAX_CONSECUTIVE_DUPLICATES, 2 * self.space.size()):
                self.messages.append("search space exhausted: every draw was already measured")
                break
            st.recover_orphans(self.study)
            measured = self._one_trial()
            duplicates = 0 if measured else duplicates + 1
            if duplicates >= NEIGHBOUR_AFTER and self.settings.sampler in NEIGHBOUR_SAMPLERS:
                self._enqueue_neighbour(self._last_params)
        st.settle_orphans(self.study)

    def _measure_default(self, load: Params | None = None, *, for_best: int | None = None) -> None:
        """Measure the default config at `load` (the sweep's baseline load by default)."""
        default_study = optuna.load_study(
            study_name=self.study.study_name,
            storage=self.study._storage,
            sampler=TaggingSampler(optuna.samplers.RandomSampler()),
        )
        trial = _ask(default_study)
        try:
            if for_best is not None:
                trial.set_user_attr(A_FAIR, for_best)
            params = dict(self.baseline_load if load is None else load)
            self._run_variant(default_study, trial, params, is_default=True)
        except KeyboardInterrupt:
            self._abandon(default_study, trial)
            raise

    def ensure_default_at_best(self) -> str | None:
        """After the search: make sure the default config was measured at the best trial's client
        load, so that "X % better than the default" compares the configs at the same load.

        Reuses a stored measurement of that (config, load); otherwise measures it once (one extra
        measurement on top of the trials budget, no pruning). Returns a note for the output, or
        None when there is no feasible best. Raises what a measurement raises (ServerUnavailable,
        KeyboardInterrupt), like `run`.
        """
        best = self.best_trial()
        if best is None:
            return None
        load = load_params(best.user_attrs.get(A_PARAMS) or {})
        key = variant_key(self.base, load)
        where = describe_load(load) or "the same load"
        if best.user_attrs.get(A_KEY) == key:
            return f"the best trial is the default config itself (at {where})"
        stored = self._finished_with_key(key)
        if stored is not None and stored.state == TrialState.FAIL:
            reason = stored.user_attrs.get(st.REASON_ATTR, "no reason recorded")
            return f"the default config failed at the best's load ({where}): {reason}"
        if stored is not None:
            return f"the default config was already measured at the best's load ({where}): reused"
        try:
            self._measure_default(load, for_best=best.number)
        except KeyboardInterrupt:
            self._abandon_mine()
            raise
        return (
            f"measured the default config at the best's load ({where}): one extra measurement "
            f"on top of the trials budget of {self.settings.trials}"
        )

    def _one_trial(self) -> bool:
        """Ask, then measure or copy. Returns True when a variant was measured (or failed) here."""
        t0 = time.perf_counter_ns()
        trial = _ask(self.study)
        try:
            params = self.space.suggest(trial, conditional=self.settings.sampler != "grid")
            measured = self._run_variant(self.study, trial, params, is_default=False, t0=t0)
        except KeyboardInterrupt:
            self._abandon(self.study, trial)
            raise
        self._last_params = params
        return measured

    def _enqueue_neighbour(self, params: Params) -> None:
        """The sampler keeps drawing measured points: queue the nearest unmeasured point to the
        last one (`Study.enqueue_trial`; the next ask takes it). On a small discrete space a
        model-based sampler that has settled on a region keeps drawing its best points; without
        this the loop would end at MAX_CONSECUTIVE_DUPLICATES with points still unmeasured."""
        taken: set[tuple[tuple[str, Any], ...]] = set()
        for t in self._trials():
            if t.user_attrs.get(A_DEFAULT):
                continue
            if t.state == TrialState.WAITING:
                fixed = t.system_attrs.get("fixed_params") or {}
                point = {
                    d.name: d.decode(fixed[d.param_name])
                    for d in self.space.dims
                    if d.param_name in fixed
                }
            elif (
                t.state == TrialState.RUNNING
                or t.user_attrs.get(A_MEASURED)
                or A_DUP in t.user_attrs
            ):
                point = t.user_attrs.get(A_PARAMS) or {}
            else:
                continue  # failed and not measured (interrupted): it may be measured again
            taken.add(self.space.point_key(point))
        rng = self._rng
        nearest = self.space.nearest_unmeasured(
            params, taken, lambda ties: ties[rng.randrange(len(ties))]
        )
        if nearest is not None:
            self.study.enqueue_trial(self.space.optuna_params(nearest), skip_if_exists=True)

    def _abandon(self, study: optuna.Study, trial: optuna.Trial) -> None:
        """Ctrl-C: fail the trial if it is still running, so a rerun measures it again."""
        storage = study._storage
        try:
            if storage.get_trial(trial._trial_id).state != TrialState.RUNNING:
                return
            storage.set_trial_user_attr(
                trial._trial_id, st.REASON_ATTR, "interrupted (Ctrl-C); measured again on resume"
            )
            storage.set_trial_user_attr(trial._trial_id, A_MEASURED, False)
            study.tell(trial, state=TrialState.FAIL)
        except (SQLAlchemyError, RuntimeError, ValueError) as exc:
            # Left RUNNING under this (soon dead) process: the next run's recovery fails it.
            logger.warning("could not mark trial %d as interrupted: %s", trial.number, exc)

    def _run_variant(
        self,
        study: optuna.Study,
        trial: optuna.Trial,
        params: Params,
        *,
        is_default: bool,
        t0: int | None = None,
    ) -> bool:
        t0 = t0 or time.perf_counter_ns()
        name = self.variant_name(trial.number, is_default)
        trial.set_user_attr(st.WORKER_ATTR, st.worker_id())
        trial.set_user_attr(A_PARAMS, _json_safe(params))
        trial.set_user_attr(A_DEFAULT, is_default)
        try:
            config = self.base if is_default else build_variant(self.base, params)
        except ConfigError as exc:
            return self._fail(study, trial, f"invalid variant: {exc}", t0, measured=True)
        key = variant_key(config, params)
        trial.set_user_attr(A_KEY, key)
        same = self._find_same(key, trial.number, trial)
        if same is not None:
            self._copy(study, trial, same)
            return False
        trial.set_user_attr(A_NAME, name)
        text = format_config(config)
        trial.set_user_attr(A_CONFIG, text)
        if self.variants_dir is not None:
            write_text_atomic(self.variants_dir / name / "config.pbtxt", text)
        logger.info("trial %d: %s", trial.number, name)
        try:
            watch = self._watch(study, trial, prune=not is_default)
            outcome = self.evaluator.evaluate(config, params, watch)
        except ServerUnavailable as exc:
            # Maybe this variant crashed the server: it fails (and is not retried on resume).
            self._fail(
                study, trial, f"the server stopped answering during this trial: {exc}", t0,
                measured=True,
            )  # fmt: skip
            raise
        self._finish(study, trial, outcome, t0)
        return True

    def _watch(
        self, study: optuna.Study, trial: optuna.Trial, *, prune: bool = True
    ) -> Callable[[WindowStat], None]:
        best = self.best_value() if (self.single and self.settings.prune and prune) else None
        seen: list[float] = []

        def watch(window: WindowStat) -> None:
            st.record_heartbeat(study, trial)
            value = self.objective.window_value(window)
            if value is None or not self.single:
                return
            seen.append(value)
            trial.report(value, len(seen))
            if best is None or len(seen) < self.settings.prune_after_windows:
                return
            mean = sum(seen) / len(seen)
            if self.objective.clearly_worse(mean, best, self.settings.prune_ratio):
                raise PruneTrial(f"{mean:.1f} after {len(seen)} windows vs best {best:.1f}")

        return watch

    def _set_timing(self, trial: optuna.Trial, t0: int, window_s: float) -> None:
        duration = (time.perf_counter_ns() - t0) / 1e9
        overhead = max(duration - window_s, 0.0)
        trial.set_user_attr(A_DURATION, duration)
        trial.set_user_attr(A_OVERHEAD, overhead)
        trial.set_user_attr(A_WINDOW, window_s)

    def _fail(
        self,
        study: optuna.Study,
        trial: optuna.Trial,
        reason: str,
        t0: int,
        *,
        measured: bool,
        window_s: float = 0.0,
    ) -> bool:
        logger.info("trial %d failed: %s", trial.number, reason)
        trial.set_user_attr(st.REASON_ATTR, reason)
        trial.set_user_attr(A_MEASURED, measured)
        if A_NAME not in trial.user_attrs:
            trial.set_user_attr(
                A_NAME, self.variant_name(trial.number, bool(trial.user_attrs.get(A_DEFAULT)))
            )
        self._set_timing(trial, t0, window_s)
        study.tell(trial, state=TrialState.FAIL)
        self._done(study, trial.number, t0, window_s)
        return measured

    def _done(self, study: optuna.Study, number: int, t0: int, window_s: float) -> None:
        # Ask to after tell, minus the windows (the stored overhead_s stops before the tell).
        self.overheads_s.append(max((time.perf_counter_ns() - t0) / 1e9 - window_s, 0.0))
        self.measured_here += 1
        if self.on_trial is not None:
            record = record_of(
                study._storage.get_trial(
                    study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
                ),
                self.objective,
            )
            if record is not None:
                self.on_trial(record)

    def _set_constraints(self, trial: optuna.Trial, violations: dict[str, float]) -> None:
        """Record constraint violations on the trial: samplers read them (<= 0 is feasible)."""
        trial.set_user_attr(A_VIOL, violations)
        for key in self.objective.bounds():
            trial.set_constraint(key, float(violations.get(key, 0.0)))

    def _finish(self, study: optuna.Study, trial: optuna.Trial, outcome: Outcome, t0: int) -> None:
        trial.set_user_attr(A_MEASURED, True)
        for key, value in outcome.extra.items():
            trial.set_user_attr(key, value)
        if outcome.pruned:
            partial = _window_metrics(outcome.windows)
            trial.set_user_attr(A_METRICS, partial)
            trial.set_user_attr(
                st.REASON_ATTR, "pruned: clearly worse than the best after its first windows"
            )
            self._set_constraints(trial, {})
            self._set_timing(trial, t0, outcome.window_s)
            study.tell(trial, state=TrialState.PRUNED)
            self._done(study, trial.number, t0, outcome.window_s)
            return
        m = outcome.measurement
        if m is not None:
            metrics = metrics_of(m)
            metrics["load_s"] = outcome.load_s
            trial.set_user_attr(A_METRICS, metrics)
            trial.set_user_attr(A_MEAS, encode_measurement(m))
        if outcome.error is not None or m is None:
            self._fail(
                study,
                trial,
                outcome.error or "no measurement",
                t0,
                measured=True,
                window_s=outcome.window_s,
            )
            return
        violations = self.objective.violations(metrics)
        self._set_constraints(trial, violations)
        self._set_timing(trial, t0, outcome.window_s)
        study.tell(trial, values=self.objective.values(metrics))
        self._done(study, trial.number, t0, outcome.window_s)

    def _copy(self, study: optuna.Study, trial: optuna.Trial, same: FrozenTrial) -> None:
        """Tell `trial` the stored result of `same` (no measurement)."""
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
        elif same.state == TrialState.PRUNED and self.single:
            last = same.last_step
            if last is not None:
                trial.report(same.intermediate_values[last], last)
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, state=TrialState.FAIL)


def _window_metrics(windows: tuple[WindowStat, ...]) -> dict[str, float]:
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
        duration_s=float(attrs.get(A_DURATION, 0.0)),
        overhead_s=float(attrs.get(A_OVERHEAD, 0.0)),
    )


def is_default(t: FrozenTrial) -> bool:
    return bool(t.user_attrs.get(A_DEFAULT))


def trial_metrics(t: FrozenTrial) -> dict[str, float]:
    raw = t.user_attrs.get(A_METRICS) or {}
    return {str(k): float(v) for k, v in raw.items()}


def dumps_params(params: Mapping[str, Any]) -> str:
    return json.dumps(_json_safe(params), sort_keys=True)
