"""The engine's public entry points: measure one load level, or sweep all levels of a `SweepSpec`.

`measure_level` is what the tuner calls for every trial; `run_sweep` is what `perfkit run` calls.
Both are synchronous (they run their own asyncio loop) and return `perfkit.results` values.
"""

from __future__ import annotations

from collections.abc import Callable

from perfkit.load.spec import InputSpec, LoadSpec, MeasureSpec, SweepSpec, TargetSpec
from perfkit.results import LoadMode, Measurement, RunResult, WindowStat

OnWindow = Callable[[WindowStat], None]
OnLevel = Callable[[Measurement], None]
ShouldStop = Callable[[], bool]


def measure_level(
    target: TargetSpec,
    inputs: InputSpec,
    measure: MeasureSpec,
    mode: LoadMode | LoadSpec,
    level: float,
    *,
    on_window: OnWindow | None = None,
    should_stop: ShouldStop | None = None,
) -> Measurement:
    """Measure one load level: warm-up, then windows until stable (or the fixed request count).

    Args:
        mode: "concurrency" / "request_rate" (constant distribution), or a `ConcurrencyLoad` /
            `RequestRateLoad` whose distribution and intervals file are used (its levels are ignored).
        level: concurrency, or request rate in requests/s.
        on_window: called after every window; it may raise (e.g. optuna.TrialPruned) to abandon the
            level: the exception propagates after the connections are closed.
        should_stop: polled between windows; True ends the level early with `stable=False`.

    Raises:
        MeasurementUnstable: no stable measurement within `measure.max_trials` windows (exit 2).
        ModelError / ConfigError: the model or inputs do not fit. ServerUnavailable / ServerError.
    """
    raise NotImplementedError


def run_sweep(
    spec: SweepSpec,
    *,
    on_window: OnWindow | None = None,
    on_level: OnLevel | None = None,
    should_stop: ShouldStop | None = None,
) -> RunResult:
    """Measure every level of `spec.load` in order (or by binary search) and return a `RunResult`.

    An unstable level is kept (stable=False) and the result status is "unstable"; Ctrl-C
    (KeyboardInterrupt) or a server that dies returns the levels already measured with status
    "interrupted" / "error" and the reason in `messages`.
    """
    raise NotImplementedError
