"""Client-side load generation: schedules, drivers, statistics and sweeps.

Public API (what `perfkit run` and the tuner call):

- `perfkit.load.spec`: frozen specs `TargetSpec`, `InputSpec`, `MeasureSpec`, `ConcurrencyLoad`,
  `RequestRateLoad`, `MetricsSpec`, `SweepSpec`, and `parse_range` / `expand_range`.
- `perfkit.load.sweep.measure_level(target, inputs, measure, mode, level, *, on_window=None,
  should_stop=None) -> Measurement` and `run_sweep(spec, ...) -> RunResult`.

Modules: `client` (tritonclient control plane, request encoding), `transport` (HTTP/1.1 hot
path, grpcio fallback), `h2` (lean gRPC over HTTP/2), `driver` (one level, windows), `stats`
(exact percentiles, stability, merging), `schedule` (open-loop send times), `inputs`,
`metrics_scrape`, `workers` (--workers processes), `eventloop` (uvloop when installed).
"""
