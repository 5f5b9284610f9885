"""Client-side load generation: schedules, drivers, statistics and sweeps.

Public API (what `perfkit run` and the tuner call), importable from `perfkit.load`:

- `run(spec, *, embedded=False, ...) -> RunResult`: `perfkit run` without the printing
  (`perfkit.load.api`; starts the embedded server when asked).
- `measure_level(target, inputs, measure, mode, level, *, on_window=None, should_stop=None)
  -> Measurement`: one load level (the tuner's trial).
- `run_sweep(spec, ...) -> RunResult`: every level of a `SweepSpec` (`perfkit run`).
- `Session`: one server and model with inputs prepared and requests encoded.
- `read_timestamps(path)`: --fixed-schedule's send offsets from an --input-data JSON;
  `parse_sequence_id_range(text)`: --sequence-id-range's start and range.
- `settings_of(spec)`: a sweep's settings as `RunResult.settings` records them; `is_stable(windows,
  pct=, windows=)`: perf_analyzer's stability rule (what `perfkit run` shows as it measures).
- `perfkit.load.spec`: frozen specs `TargetSpec`, `InputSpec`, `MeasureSpec`, `ConcurrencyLoad`,
  `RequestRateLoad`, `MetricsSpec`, `SweepSpec`, and `parse_range` / `expand_range`.

Modules, from the top down:

- `api` (`run`), `sweep` (the level walk, binary search; owns the --workers group),
- `level` (plan a level, the one window/stability loop, the `Measurement` and its breakdown),
- `workers` (--workers processes: a window source for `level`), `session` (`Session`),
- `driver` (`LevelDriver`: keeps one level's load going and cuts it into raw windows),
- `transports` (the seam: `base` protocols and timings, `http1`, `h2`, `h2stream`, `grpcio`,
  `fake`),
- `client` (request encoding, the control client), `inputs` (synthetic or given tensors),
- `sequences` (sequence models: ids, lengths, which sequence each send belongs to), `wire` (requests
  encoded per send from templates; streamed responses read), `composing` (the model's kind and
  composing models from its configs), `breakdown` (the server side of a level),
- `stats` (exact percentiles, stability, merging), `schedule` (open-loop send times),
  `metrics_scrape` (Prometheus during windows), `eventloop` (uvloop when installed).

The engine is imported on first use of these names, so `perfkit.load.spec` stays cheap to import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from perfkit.load.api import run
    from perfkit.load.inputs import read_timestamps
    from perfkit.load.level import measure_level
    from perfkit.load.sequences import parse_sequence_id_range
    from perfkit.load.session import Session
    from perfkit.load.stats import is_stable
    from perfkit.load.sweep import run_sweep, settings_of

__all__ = [
    "Session", "is_stable", "measure_level", "parse_sequence_id_range", "read_timestamps", "run",
    "run_sweep", "settings_of",
]  # fmt: skip

_HOMES = {
    "Session": "perfkit.load.session",
    "is_stable": "perfkit.load.stats",
    "settings_of": "perfkit.load.sweep",
    "measure_level": "perfkit.load.level",
    "read_timestamps": "perfkit.load.inputs",
    "parse_sequence_id_range": "perfkit.load.sequences",
    "run": "perfkit.load.api",
    "run_sweep": "perfkit.load.sweep",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
