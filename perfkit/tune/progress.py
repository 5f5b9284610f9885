"""Where a tune stands, for its progress display: `trial k/N`, elapsed time, an ETA from the mean
trial time, the best so far, and what the current trial is doing (loading, warming up,
measuring, window i). `Tracker` turns the tuner's events into `TuneProgress` snapshots for
`perfkit.tune.run`'s `on_progress`; `progress_line` is the plain-text form (a CI log). Pure.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from perfkit.model_repo.config import ModelConfig
from perfkit.results import TrialRecord, WindowStat
from perfkit.tune.evaluate import Evaluator, Outcome, WindowWatch
from perfkit.tune.objective import Objective


@dataclass(frozen=True, slots=True, kw_only=True)
class TuneProgress:
    """One snapshot of a tune.

    Attributes:
        trial: k, the 1-based count of the trial running (or just finished) in the budget.
        trials: N, the trials budget (k is past it only for the default's measurement at the
            best's load, on top of the budget).
        elapsed_s: seconds since this process started measuring.
        eta_s: seconds left at the mean trial time so far (None before a trial finished).
        best: the best so far ("812.3 infer/s (trial 4)"), "" when none is feasible yet.
        doing: "loading", "warming up", "measuring", "window 2/4", or "done: <result>".
        variant: the variant measured ("config 3: instances 2, batching on, ... at c8").
    """

    trial: int
    trials: int
    elapsed_s: float
    eta_s: float | None
    best: str
    doing: str
    variant: str


def clock(seconds: float) -> str:
    s = round(seconds)
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def progress_line(p: TuneProgress) -> str:
    """`trial 2/5 [0:12 elapsed, ETA 0:30, best 812.3 infer/s (trial 1)] config 2 ...: window 2/4`."""
    parts = [f"{clock(p.elapsed_s)} elapsed", f"ETA {'?' if p.eta_s is None else clock(p.eta_s)}"]
    if p.best:
        parts.append(f"best {p.best}")
    return f"trial {p.trial}/{max(p.trials, p.trial)} [{', '.join(parts)}] {p.variant}: {p.doing}"


def value_text(name: str, value: float) -> str:
    """An objective's value in the units a user reads (ms for latencies)."""
    if name == "throughput_infer_per_s":
        return f"{value:,.1f} infer/s"
    if name == "capacity_infer_per_s":
        return f"capacity {value:,.1f} infer/s"
    if name.endswith("_latency_us"):
        return f"{name.split('_', 1)[0]} {value / 1000:.2f} ms"
    return f"{name} {value:.4g}"


def describe(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in params.items()) or "the default config"


class Tracker:
    """Counts trials and times them; `emit` gets a `TuneProgress` at each event."""

    def __init__(
        self,
        *,
        trials: int,
        done_before: int,
        objective: Objective,
        emit: Callable[[TuneProgress], None],
        windows: int,
        best: tuple[float, int] | None = None,
    ) -> None:
        self.trials = trials
        self.done = done_before
        self.objective = objective
        self.emit = emit
        self.windows = windows
        self.best = best
        self.started = time.monotonic()
        self.trial_started = self.started
        self.durations: list[float] = []
        self.variant = ""

    def _best_text(self) -> str:
        if self.best is None:
            return ""
        name, _ = self.objective.primary()
        return f"{value_text(name, self.best[0])} (trial {self.best[1]})"

    def _eta(self) -> float | None:
        if not self.durations:
            return None
        mean = sum(self.durations) / len(self.durations)
        left = max(self.trials - self.done, 0) * mean
        return max(left - (time.monotonic() - self.trial_started), 0.0)

    def phase(self, doing: str) -> None:
        self.emit(
            TuneProgress(
                trial=self.done + 1, trials=self.trials,
                elapsed_s=time.monotonic() - self.started, eta_s=self._eta(),
                best=self._best_text(), doing=doing, variant=self.variant,
            )
        )  # fmt: skip

    def start(self, params: Mapping[str, Any], *, default: bool = False) -> None:
        self.trial_started = time.monotonic()
        what = describe(params)
        if default:
            at_best = self.done >= self.trials  # after the search, on top of the budget
            extra = " at the best's load, on top of the budget" if at_best else ""
            what = f"default config{extra}: {what}"
        self.variant = what  # the evaluator tells the phases, "loading" first

    def window(self, w: WindowStat) -> None:
        self.phase(f"window {w.index + 1}/{self.windows}")

    def finished(self, record: TrialRecord) -> None:
        """A trial this process measured (or failed) is told: counted, timed, best updated."""
        now = time.monotonic()
        self.durations.append(now - self.trial_started)
        self.trial_started = now  # the next trial starts about now (its ETA counts from here)
        name, _ = self.objective.primary()
        value = record.objectives.get(name)
        good = record.state == "complete" and record.feasible and value is not None
        if (
            good
            and value is not None
            and (self.best is None or self.objective.better(value, self.best[0]))
        ):
            self.best = (value, record.number)
        what = record.state if value is None else f"{record.state}, {value_text(name, value)}"
        self.done += 1
        self.emit(
            TuneProgress(
                trial=self.done, trials=self.trials,
                elapsed_s=time.monotonic() - self.started, eta_s=self._eta(),
                best=self._best_text(), doing=f"done ({what})", variant=self.variant,
            )
        )  # fmt: skip


class ReportingEvaluator:
    """An `Evaluator` that tells `tracker` which variant it measures and each window, and lets
    the evaluator it wraps tell its phases (`LiveEvaluator.on_phase`)."""

    def __init__(
        self, inner: Evaluator, tracker: Tracker, default: ModelConfig | None = None
    ) -> None:
        self.inner = inner
        self.tracker = tracker
        self.default = default
        if hasattr(inner, "on_phase"):
            inner.on_phase = tracker.phase

    def evaluate(
        self, config: ModelConfig, params: Mapping[str, Any], watch: WindowWatch
    ) -> Outcome:
        self.tracker.start(params, default=self.default is not None and config == self.default)

        def watched(w: WindowStat) -> None:
            self.tracker.window(w)
            watch(w)

        return self.inner.evaluate(config, params, watched)
