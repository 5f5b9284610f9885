"""The loop's settings and the study's sampler: Optuna's samplers wrapped for an ask/tell loop
shared by several workers, and an `ask` that a Ctrl-C cannot leave half done.

Must not import the loop (`perfkit.tune.tuner`).
"""

from __future__ import annotations

import signal
import threading
import warnings
from dataclasses import dataclass
from typing import Any

import optuna

from perfkit.sweepfile import SamplerName
from perfkit.tune import storage as st
from perfkit.tune.space import SearchSpace


@dataclass(frozen=True, slots=True, kw_only=True)
class LoopSettings:
    """One worker's budget and search settings (the sampler is built from them)."""

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


def ask(study: optuna.Study) -> optuna.Trial:
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
        # The trial is tagged with this worker: `records.fail_mine_running` fails it.
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
        for key, value in st.worker_attrs().items():  # the target it is measured on
            study._storage.set_trial_user_attr(trial._trial_id, key, value)
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
