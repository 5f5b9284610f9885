"""Client-side load generation: schedules, drivers, statistics and sweeps.

Public API (what `perfkit run` and the tuner call), importable from `perfkit.load`:

- `run(spec, *, embedded=False, ...) -> RunResult`: `perfkit run` without the printing
  (`perfkit.load.api`; starts the embedded server when asked).
- `measure_level(target, inputs, measure, mode, level, *, on_window=None, should_stop=None)
  -> Measurement`: one load level (the tuner's trial).
- `run_sweep(spec, ...) -> RunResult`: every level of a `SweepSpec` (`perfkit run`).
- `Session`: one server and model with inputs prepared and requests encoded.
- `perfkit.load.spec`: frozen specs `TargetSpec`, `InputSpec`, `MeasureSpec`, `ConcurrencyLoad`,
  `RequestRateLoad`, `MetricsSpec`, `SweepSpec`, and `parse_range` / `expand_range`.

Modules: `client` (tritonclient control plane, request encoding), `transport` (HTTP/1.1 hot
path, grpcio fallback), `h2` (lean gRPC over HTTP/2), `driver` (one level, windows), `stats`
(exact percentiles, stability, merging), `schedule` (open-loop send times), `inputs`,
`metrics_scrape`, `workers` (--workers processes), `eventloop` (uvloop when installed).

The engine is imported on first use of these names, so `perfkit.load.spec` stays cheap to import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from perfkit.load.api import run
    from perfkit.load.sweep import Session, measure_level, run_sweep

__all__ = ["Session", "measure_level", "run", "run_sweep"]


def __getattr__(name: str) -> Any:
    if name == "run":
        from perfkit.load.api import run

        return run
    if name in __all__:
        from perfkit.load import sweep

        return getattr(sweep, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
