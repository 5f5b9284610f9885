"""The sweep file's spec: the frozen dataclasses a sweep parses into, and the metric names.

Pure (stdlib, perfkit.errors, perfkit.launch.settings): `perfkit.sweepfile.parse` fills them from
TOML; the tuner reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from perfkit.launch.settings import LaunchSettings

Direction = Literal["maximize", "minimize"]
SamplerName = Literal["tpe", "nsga2", "grid", "random"]

# Objective/constraint metric names in a sweep file -> the metric key the tuner records.
METRICS: dict[str, str] = {
    "throughput": "throughput_infer_per_s",
    "avg_latency": "avg_latency_us",
    "p50_latency": "p50_latency_us",
    "p90_latency": "p90_latency_us",
    "p95_latency": "p95_latency_us",
    "p99_latency": "p99_latency_us",
}
# The GPU objectives (Model Analyzer's names where it has one) -> their metric keys, computed from
# the server's nv_gpu_* metrics over every GPU it reports (`perfkit.tune.objective.gpu_metrics`):
# memory used (MB) of the fullest GPU, memory free (MB) of the emptiest, utilization (%) averaged
# over the GPUs, power (W) summed over them, and throughput (infer/s) per watt of that power.
GPU_METRICS: dict[str, str] = {
    "gpu_used_memory": "gpu_used_memory_mb",
    "gpu_free_memory": "gpu_free_memory_mb",
    "gpu_utilization": "gpu_utilization_pct",
    "gpu_power": "gpu_power_w",
    "throughput_per_watt": "throughput_per_watt",
}
METRICS.update(GPU_METRICS)
# The capacity under the latency budget (perfkit.tune.capacity): highest sustainable request rate.
METRICS["capacity"] = "capacity_infer_per_s"
INSTANCE_KINDS = ("KIND_AUTO", "KIND_CPU", "KIND_GPU", "KIND_MODEL")
SAMPLERS = ("tpe", "nsga2", "grid", "random")
# `[space] formats` (perfkit.formats.catalog says what each is); "auto": every candidate found.
FORMATS = ("onnxruntime", "onnxruntime_tensorrt", "pytorch", "tensorrt")


@dataclass(frozen=True, slots=True, kw_only=True)
class SpaceSpec:
    """The config.pbtxt search space. An empty tuple leaves that field as the model has it."""

    instance_count: tuple[int, ...] = ()
    instance_kind: tuple[str, ...] = ()
    max_batch_size: tuple[int, ...] = ()
    dynamic_batching: tuple[bool, ...] = ()
    preferred_batch_sizes: tuple[tuple[int, ...], ...] = ()
    max_queue_delay_us: tuple[int, ...] = ()
    # Issue 14's dimensions (perfkit.tune.knobs types them; perfkit.formats owns `formats`).
    # Backend `parameters` as config.pbtxt holds them (string values): key -> values to search,
    # e.g. (("intra_op_thread_count", ("1", "2")),).
    parameters: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # Any other config field by its model_config.proto path -> values to search, e.g.
    # (("optimization.graph.level", (-1, 1)), ("instance_group[0].count", (1, 2))).
    fields: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    # response_cache { enable } on / off.
    response_cache: tuple[bool, ...] = ()
    # Execution accelerators the backend offers (e.g. ONNX Runtime's "tensorrt" on GPUs).
    accelerators: tuple[str, ...] = ()
    # Model formats / backends to choose between (perfkit.formats), e.g. ("onnxruntime", "pytorch").
    formats: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadSettings:
    """Client load. Tuples with more than one value are searched; the first value is the baseline's."""

    mode: Literal["concurrency", "request_rate"] = "concurrency"
    concurrency: tuple[int, ...] = (1,)
    request_rate: tuple[float, ...] = ()
    batch_size: tuple[int, ...] = (1,)
    # perf_analyzer --shape values, "NAME:d1,d2".
    shapes: tuple[str, ...] = ()
    input_data: str = "random"
    # Load levels the default config is measured at first (dimension -> value); missing = first
    # value. After the search it is also measured at the best's load, the load the gain compares at.
    baseline: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class MeasureSettings:
    window_ms: int = 1000
    stability_pct: float = 10.0
    max_windows: int = 10
    warmup_requests: int = 16
    # Windows that must agree (perf_analyzer uses 3); fewer = faster trials, noisier numbers.
    stability_windows: int = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class ConstraintSpec:
    latency_percentile: float = 99.0
    latency_budget_us: float | None = None
    min_throughput: float | None = None
    # GPU bounds: memory used on the fullest GPU (MB, Model Analyzer's gpu_used_memory max), power
    # summed over the GPUs (W).
    max_gpu_memory_mb: float | None = None
    max_gpu_power_w: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SearchSettings:
    sampler: SamplerName = "tpe"
    seed: int | None = None
    prune: bool = True
    # A trial is pruned when, after its first windows, it reaches less than this fraction of the best.
    prune_ratio: float = 0.5
    # Random trials (after the default config) before TPE/NSGA-II start modelling the space. Few:
    # tuning budgets are tens of trials, and TPE's own default (10) spends a quarter of them
    # blind (benchmarks/tuner_efficiency.py: 2 reached the grid's best in fewer trials than 4).
    startup_trials: int = 2
    # The best must beat the default by this much (percent, primary objective) to be written back;
    # a smaller gain is within measurement noise.
    min_gain_pct: float = 2.0


@dataclass(frozen=True, slots=True, kw_only=True)
class CapacitySettings:
    """The capacity objective's rate search (perfkit.tune.capacity): per config, the highest open-loop
    request rate whose latency percentile (corrected for coordinated omission) stays within the
    latency budget, bracketed between `rate_min` and `rate_max` (None: found by doubling) and
    narrowed until the bracket is within `tolerance_pct`, in at most `max_steps` measurements."""

    rate_min: float = 1.0
    rate_max: float | None = None
    tolerance_pct: float = 5.0
    max_steps: int = 12
    # The closed-loop probe that seeds the bracket (None: twice what the config executes at once,
    # instances x max_batch_size with dynamic batching, between 4 and 64).
    probe_concurrency: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelEntry:
    """One model of a multi-model tune (several models on one server, measured concurrently):
    its own space, load and constraints (None: the sweep's), and its weight in the objective."""

    name: str
    zoo: str | None = None
    weight: float = 1.0
    space: SpaceSpec | None = None
    load: LoadSettings | None = None
    constraints: ConstraintSpec | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TuneSweep:
    """A whole `perfkit tune`: the model, its server, the search space, the client load, the
    objectives and constraints, the budget and where results go (`load_sweep` reads one)."""

    source: str
    model: str
    repository: Path
    zoo: str | None = None
    url: str | None = None
    protocol: Literal["grpc", "http"] = "grpc"
    startup_timeout_s: float = 60.0
    # The server's Prometheus endpoint, "host:port/metrics" (None: the embedded server's, or
    # port 8002 on the url's host).
    metrics_url: str | None = None
    # The server perfkit starts when there is no url (`perfkit.launch.settings`).
    launch: LaunchSettings = field(default_factory=LaunchSettings)
    space: SpaceSpec = field(default_factory=SpaceSpec)
    load: LoadSettings = field(default_factory=LoadSettings)
    measure: MeasureSettings = field(default_factory=MeasureSettings)
    # (metric key, direction) in order, e.g. (("throughput_infer_per_s", "maximize"),).
    objectives: tuple[tuple[str, Direction], ...] = (("throughput_infer_per_s", "maximize"),)
    constraints: ConstraintSpec = field(default_factory=ConstraintSpec)
    trials: int = 20
    timeout_s: float | None = None
    search: SearchSettings = field(default_factory=SearchSettings)
    output: Path | None = None
    storage: str | None = None
    study_name: str | None = None
    # Issue 14. The capacity objective's rate search (used when "capacity" is an objective).
    capacity: CapacitySettings = field(default_factory=CapacitySettings)
    # Several models tuned together (empty: the one `model`).
    models: tuple[ModelEntry, ...] = ()
    # Stop after this many finished trials without a better best (None: no such stop).
    patience: int | None = None
    # The top configs re-measured at the end with a full load sweep (0: none).
    top_k: int = 0
    # Another server (URL) the top configs are re-measured on, to check the ranking holds there.
    validate_on: str | None = None

    def gpu_metrics_needed(self) -> tuple[str, ...]:
        """The GPU objectives and constraints asked for, by their sweep-file names."""
        keys = set(GPU_METRICS.values())
        names = [n for n, key in METRICS.items() if key in keys and key in dict(self.objectives)]
        c = self.constraints
        names += [
            f"constraints.{n}"
            for n in ("max_gpu_memory_mb", "max_gpu_power_w")
            if getattr(c, n) is not None
        ]
        return tuple(names)

    def with_overrides(self, **changes: Any) -> TuneSweep:
        """A copy with CLI overrides applied (None values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})
