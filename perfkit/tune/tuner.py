"""The ask/tell loop (`Tuner`): default config first, then sampled variants, each measured at most once per study.

Every trial carries its record in Optuna user attrs (params, variant key and name, config.pbtxt,
metrics, the GPU ones included, constraint violations, the `Measurement` as JSON, timings, failure
reason), so a resumed or shared study rebuilds every `TrialRecord` from storage alone. Rules:

- The default config is measured first, by the worker that created the study (`<model>_config_default`).
- A variant (config content hash + client load) already finished in the study is never measured
  again: the trial is told the stored result (`duplicate_of`) and does not count against the budget.
  Two workers that draw the same variant at once: the higher trial number waits for the lower one.
- A variant whose measurement was cut short (its worker killed, or Ctrl-C) is measured again
  first thing by the next run, once; a variant killed twice is a failure that counts as measured
  and is not retried (the kill rule: `perfkit.tune.storage`).
- A GPU objective or constraint with no GPU metric in the trial's measurement fails the trial
  with that reason (`Objective.check_gpu`): never a silent pass.
- A variant that the server refuses to load, or whose requests fail, is a FAIL trial with its
  reason (the server validates variants: it is the authority on what it accepts). When the server
  stops answering during a trial, that trial fails and `ServerUnavailable` propagates:
  `perfkit.tune.run` restarts an embedded server and goes on.
- Single objective: each window is reported to the trial; a trial clearly worse than the best after
  its first windows is pruned (never a measurement of the default config). Constraints go to the
  sampler through `Trial.set_constraint`.
- Fair comparison: the client load is part of the space, so after the search the default config is
  also measured at the best trial's load (`ensure_default_at_best`), unless that (config, load) was
  measured already. That measurement is one extra on top of the trials budget (`A_FAIR` marks it).
"""

from __future__ import annotations

import logging
import random
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import optuna
from optuna.trial import FrozenTrial, TrialState

from perfkit.errors import ConfigError, ServerUnavailable
from perfkit.model_repo.config import ModelConfig, format_config
from perfkit.model_repo.repository import write_text_atomic
from perfkit.results import TrialRecord, WindowStat
from perfkit.tune import records as rec
from perfkit.tune import storage as st
from perfkit.tune.claim import claim_or_copy
from perfkit.tune.evaluate import Evaluator, Outcome, PruneTrial
from perfkit.tune.objective import MissingGpuMetrics, Objective, metrics_of
from perfkit.tune.samplers import LoopSettings, TaggingSampler, ask, make_sampler
from perfkit.tune.space import (
    Params,
    SearchSpace,
    build_variant,
    describe,
    describe_load,
    load_params,
    variant_key,
)

# LoopSettings and make_sampler are re-exported: a Tuner is built from this module alone.
__all__ = ["LoopSettings", "ModelVariants", "Tuner", "Variants", "make_sampler"]

logger = logging.getLogger(__name__)

# Consecutive already-measured draws before the search space counts as exhausted.
MAX_CONSECUTIVE_DUPLICATES = 60
# Samplers that, after NEIGHBOUR_AFTER draws in a row of already-measured points, are handed the
# nearest unmeasured point instead of being asked again (see `Tuner._enqueue_neighbour`).
NEIGHBOUR_SAMPLERS = ("tpe", "nsga2")
NEIGHBOUR_AFTER = 3
WAIT_FOR_PEER_S = 900.0


class Variants(Protocol):
    """How the tuner makes, identifies and shows a variant of its base: one model's config
    (`ModelVariants`), or an ensemble's composing models' configs (perfkit.tune.ensemble)."""

    def build(self, base: Any, params: Mapping[str, Any]) -> Any: ...

    def key(self, variant: Any, params: Mapping[str, Any]) -> str: ...

    def text(self, variant: Any) -> str: ...


class ModelVariants:
    """A model's config variants: `build_variant`, `variant_key`, its config.pbtxt text."""

    def build(self, base: ModelConfig, params: Mapping[str, Any]) -> ModelConfig:
        return build_variant(base, params)

    def key(self, variant: ModelConfig, params: Mapping[str, Any]) -> str:
        return variant_key(variant, params)

    def text(self, variant: ModelConfig) -> str:
        return format_config(variant)


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
        variants: Variants | None = None,
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
        self.variants: Variants = variants or ModelVariants()
        self.single = len(objective.targets) == 1
        # Seconds each trial of this worker spent outside its windows, ask to tell (benchmarks).
        self.overheads_s: list[float] = []
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
        """Distinct variants finished in the study (any worker): see `records.budget_used`."""
        return rec.budget_used(self._trials())

    def best_trial(self) -> FrozenTrial | None:
        """The complete, feasible, measured trial with the best primary objective (any worker)."""
        return rec.best_trial(self._trials(), self.objective)

    def best_value(self) -> float | None:
        best = self.best_trial()
        return None if best is None or best.values is None else float(best.values[0])

    def _find_same(self, key: str, number: int, trial: optuna.Trial) -> FrozenTrial | None:
        """A finished trial that measured `key`, or None once this trial may measure it itself
        (`perfkit.tune.claim`)."""
        return claim_or_copy(self.study, trial, key, deadline_s=WAIT_FOR_PEER_S)

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> None:
        """Measure until the budget, the timeout or the space is used up."""
        try:
            self._run()
        except KeyboardInterrupt:
            rec.fail_mine_running(self.study)
            raise

    def _run(self) -> None:
        started = time.monotonic()
        st.recover_orphans(self.study)
        if not rec.default_done_or_running(self._trials()):
            self._measure_default()
        for params in rec.retries_due(self._trials()):
            if self.budget_used() >= self.settings.trials:
                break
            self._retry(params)
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
        trial = ask(default_study)
        try:
            if for_best is not None:
                trial.set_user_attr(rec.A_FAIR, for_best)
            params = dict(self.baseline_load if load is None else load)
            self._run_variant(default_study, trial, params, is_default=True)
        except KeyboardInterrupt:
            rec.fail_interrupted(default_study, trial)
            raise

    def _retry(self, params: Params) -> None:
        """Measure once more a variant whose last measurement was cut short (`rec.retries_due`):
        a trial of its own study handle, whose sampler answers with the variant's values."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            fixed = optuna.samplers.PartialFixedSampler(
                self.space.optuna_params(params), optuna.samplers.RandomSampler()
            )
        retry_study = optuna.load_study(
            study_name=self.study.study_name,
            storage=self.study._storage,
            sampler=TaggingSampler(fixed),
        )
        self.messages.append(
            f"measured again a variant whose measurement was cut short: {describe(params)}"
        )
        t0 = time.perf_counter_ns()
        trial = ask(retry_study)
        try:
            point = self.space.suggest(trial, conditional=self.settings.sampler != "grid")
            self._run_variant(retry_study, trial, point, is_default=False, t0=t0)
        except KeyboardInterrupt:
            rec.fail_interrupted(retry_study, trial)
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
        load = load_params(best.user_attrs.get(rec.A_PARAMS) or {})
        key = self.variants.key(self.base, load)
        where = describe_load(load) or "the same load"
        if best.user_attrs.get(rec.A_KEY) == key:
            return f"the best trial is the default config itself (at {where})"
        stored = rec.finished_with_key(self._trials(), key)
        if stored is not None and stored.state == TrialState.FAIL:
            reason = stored.user_attrs.get(st.REASON_ATTR, "no reason recorded")
            return f"the default config failed at the best's load ({where}): {reason}"
        if stored is not None:
            return f"the default config was already measured at the best's load ({where}): reused"
        try:
            self._measure_default(load, for_best=best.number)
        except KeyboardInterrupt:
            rec.fail_mine_running(self.study)
            raise
        return (
            f"measured the default config at the best's load ({where}): one extra measurement "
            f"on top of the trials budget of {self.settings.trials}"
        )

    def _one_trial(self) -> bool:
        """Ask, then measure or copy. Returns True when a variant was measured (or failed) here."""
        t0 = time.perf_counter_ns()
        trial = ask(self.study)
        try:
            params = self.space.suggest(trial, conditional=self.settings.sampler != "grid")
            measured = self._run_variant(self.study, trial, params, is_default=False, t0=t0)
        except KeyboardInterrupt:
            rec.fail_interrupted(self.study, trial)
            raise
        self._last_params = params
        return measured

    def _enqueue_neighbour(self, params: Params) -> None:
        """The sampler keeps drawing measured points: queue the nearest unmeasured point to the
        last one (`Study.enqueue_trial`; the next ask takes it). On a small discrete space a
        model-based sampler that has settled on a region keeps drawing its best points; without
        this the loop would end at MAX_CONSECUTIVE_DUPLICATES with points still unmeasured."""
        taken = rec.taken_points(self._trials(), self.space)
        rng = self._rng
        nearest = self.space.nearest_unmeasured(
            params, taken, lambda ties: ties[rng.randrange(len(ties))]
        )
        if nearest is not None:
            self.study.enqueue_trial(self.space.optuna_params(nearest), skip_if_exists=True)

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
        trial.set_user_attr(rec.A_PARAMS, rec.json_safe(params))
        trial.set_user_attr(rec.A_DEFAULT, is_default)
        try:
            config = self.base if is_default else self.variants.build(self.base, params)
        except ConfigError as exc:
            return self._fail(study, trial, f"invalid variant: {exc}", t0, measured=True)
        key = self.variants.key(config, params)
        trial.set_user_attr(rec.A_KEY, key)
        same = self._find_same(key, trial.number, trial)
        if same is not None:
            rec.tell_copy(study, trial, same, single=self.single)
            return False
        trial.set_user_attr(rec.A_NAME, name)
        text = self.variants.text(config)
        trial.set_user_attr(rec.A_CONFIG, text)
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
        trial.set_user_attr(rec.A_DURATION, duration)
        trial.set_user_attr(rec.A_OVERHEAD, overhead)
        trial.set_user_attr(rec.A_WINDOW, window_s)

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
        trial.set_user_attr(rec.A_MEASURED, measured)
        if rec.A_NAME not in trial.user_attrs:
            trial.set_user_attr(
                rec.A_NAME,
                self.variant_name(trial.number, bool(trial.user_attrs.get(rec.A_DEFAULT))),
            )
        self._set_timing(trial, t0, window_s)
        study.tell(trial, state=TrialState.FAIL)
        self._done(study, trial.number, t0, window_s)
        return measured

    def _done(self, study: optuna.Study, number: int, t0: int, window_s: float) -> None:
        # Ask to after tell, minus the windows (the stored overhead_s stops before the tell).
        self.overheads_s.append(max((time.perf_counter_ns() - t0) / 1e9 - window_s, 0.0))
        if self.on_trial is not None:
            record = rec.record_of(
                study._storage.get_trial(
                    study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
                ),
                self.objective,
            )
            if record is not None:
                self.on_trial(record)

    def _set_constraints(self, trial: optuna.Trial, violations: dict[str, float]) -> None:
        """Record constraint violations on the trial: samplers read them (<= 0 is feasible)."""
        trial.set_user_attr(rec.A_VIOL, violations)
        for key in self.objective.bounds():
            trial.set_constraint(key, float(violations.get(key, 0.0)))

    def _finish(self, study: optuna.Study, trial: optuna.Trial, outcome: Outcome, t0: int) -> None:
        trial.set_user_attr(rec.A_MEASURED, True)
        for key, value in outcome.extra.items():
            trial.set_user_attr(key, value)
        if outcome.pruned:
            partial = rec.window_metrics(outcome.windows)
            trial.set_user_attr(rec.A_METRICS, partial)
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
            metrics.update(outcome.metrics)
            metrics["load_s"] = outcome.load_s
            trial.set_user_attr(rec.A_METRICS, metrics)
            trial.set_user_attr(rec.A_MEAS, rec.encode_measurement(m))
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
        try:
            # A GPU objective or bound with no GPU reading fails the trial: never a silent pass.
            self.objective.check_gpu(metrics)
        except MissingGpuMetrics as exc:
            self._fail(study, trial, str(exc), t0, measured=True, window_s=outcome.window_s)
            return
        violations = self.objective.violations(metrics)
        self._set_constraints(trial, violations)
        self._set_timing(trial, t0, outcome.window_s)
        study.tell(trial, values=self.objective.values(metrics))
        self._done(study, trial.number, t0, outcome.window_s)
