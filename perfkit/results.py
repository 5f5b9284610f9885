"""Result values shared by `perfkit run`, `perfkit tune` and the reports. Pure dataclasses, stdlib only.

Flow: the driver records per-request timings into raw windows -> one `Measurement` per load level ->
`RunResult` for a sweep; a tune is a `TuneResult` of `TrialRecord`s, each holding the `Measurement`
of its variant. Reports take these values (or their JSON form, see `perfkit.report.schema`).
Units are in the field names: `_us` microseconds, `_ns` nanoseconds, `_s` seconds, `_rps` requests/s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import pandas as pd

LoadMode = Literal["concurrency", "request_rate"]
RunStatus = Literal["ok", "unstable", "interrupted", "error"]
TrialState = Literal["complete", "failed", "pruned"]


@dataclass(frozen=True, slots=True, kw_only=True)
class LatencySummary:
    """Latency statistics of one set of requests, in microseconds. Percentiles are exact (nearest rank)."""

    count: int
    avg_us: float
    std_us: float
    min_us: float
    max_us: float
    p50_us: float
    p90_us: float
    p95_us: float
    p99_us: float
    # Any further percentile asked for with --percentile, keyed by the percentile (e.g. 99.9).
    extra_percentiles_us: dict[float, float] = field(default_factory=dict)

    def percentile_us(self, p: float) -> float:
        """The p-th percentile; raises KeyError if it was not computed."""
        fixed = {50.0: self.p50_us, 90.0: self.p90_us, 95.0: self.p95_us, 99.0: self.p99_us}
        if float(p) in fixed:
            return fixed[float(p)]
        return self.extra_percentiles_us[float(p)]


@dataclass(frozen=True, slots=True, kw_only=True)
class WindowStat:
    """One measurement window, as tried by the stability loop."""

    index: int
    start_ns: int
    duration_ns: int
    request_count: int
    error_count: int
    throughput_infer_per_s: float
    latency_avg_us: float
    # The latency used for stability: average, or the --percentile value.
    latency_stability_us: float
    # True for the windows merged into the reported measurement.
    merged: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerBreakdown:
    """Server-side statistics deltas over the merged windows (Triton statistics extension).

    Times are averages per request in microseconds, as perf_analyzer prints them.
    """

    inference_count: int
    execution_count: int
    success_count: int
    failure_count: int
    avg_request_us: float
    queue_us: float
    compute_input_us: float
    compute_infer_us: float
    compute_output_us: float
    # Server request time not otherwise accounted (request - queue - compute).
    overhead_us: float
    # perf_analyzer's "Network+Server Send/Recv": client wait minus server queue+compute, clamped at 0.
    network_server_send_recv_us: float
    # Executions per batch size, from batch_stats.
    batch_executions: dict[int, int] = field(default_factory=dict)
    # The response cache (Triton's cache_hit / cache_miss statistics): requests answered from the
    # cache and the average time of a hit (lookup) and of a miss (lookup + insertion), in µs.
    # `cache_enabled`: the model's (or a composing model's) config has response_cache enabled,
    # which is when perf_analyzer shows these figures.
    cache_enabled: bool = False
    cache_hit_count: int = 0
    cache_miss_count: int = 0
    cache_hit_us: float = 0.0
    cache_miss_us: float = 0.0
    # An ensemble's steps (recursively) or a BLS model's --bls-composing-models, each with its
    # own breakdown over the same windows, sorted by name and version as perf_analyzer lists them.
    composing: tuple[ComposingBreakdown, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ComposingBreakdown:
    """A composing model's server statistics over the windows of its ensemble or BLS model."""

    name: str
    # The version whose statistics these are ("" when none of its versions ran in the window).
    version: str
    server: ServerBreakdown


@dataclass(frozen=True, slots=True, kw_only=True)
class Measurement:
    """One load level: the merged stable windows (or the fixed --request-count window)."""

    mode: LoadMode
    # Concurrency (an int stored as float) or request rate in requests/s.
    level: float
    batch_size: int
    stable: bool
    request_count: int
    error_count: int
    duration_ns: int
    throughput_infer_per_s: float
    # Service latency: response received - request actually sent (perf_analyzer's latency).
    latency: LatencySummary
    # Open loop only: response received - request *intended* send time (wrk2's corrected latency).
    corrected_latency: LatencySummary | None = None
    # Open loop only: achieved send rate, and sends later than the schedule by more than the late threshold.
    send_rate_rps: float | None = None
    late_send_count: int = 0
    send_lag_p99_us: float = 0.0
    # Average client-side time to send a request and to receive/decode a response, in microseconds.
    client_send_us: float = 0.0
    client_recv_us: float = 0.0
    server: ServerBreakdown | None = None
    windows: tuple[WindowStat, ...] = ()
    # Load-generator CPU use (percent of one core) and CPU-µs spent per completed request.
    client_cpu_pct: float = 0.0
    client_cpu_us_per_request: float = 0.0
    # True when the generator itself was the bottleneck (send lag or CPU); the numbers are suspect.
    generator_saturated: bool = False
    # Prometheus metrics scraped during the windows (--collect-metrics): name -> {gpu uuid or "": value}.
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    # Which repeat of the level this is (`perfkit run --repeats N`: 0 .. N-1); 0 in results written
    # before repeats existed.
    repeat: int = 0
    # Sequence models: the sequences that ended in the windows and their rate (None otherwise).
    sequence_count: int | None = None
    sequences_per_s: float = 0.0
    # Decoupled models (--streaming): the responses received (a request may get several, or none
    # but its final flag) and their rate (None for other models).
    response_count: int | None = None
    response_throughput_per_s: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerInfo:
    """What was measured against."""

    url: str
    protocol: Literal["http", "grpc"]
    # "perfkit_server", "triton", or the name the server reports.
    kind: str
    version: str
    extensions: tuple[str, ...] = ()
    embedded: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class MachineInfo:
    hostname: str
    cpu: str
    cpu_count: int
    gpus: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class RunResult:
    """A `perfkit run` sweep: every level measured, in load order."""

    model: str
    model_version: str
    server: ServerInfo
    # The model config as the server reported it (JSON form of ModelConfig) and its sha256 (first 12 hex).
    model_config: dict[str, Any]
    config_hash: str
    # Load and measurement settings as given (flag name -> value), for the record.
    settings: dict[str, Any]
    measurements: tuple[Measurement, ...]
    status: RunStatus
    started_at: str  # ISO 8601, UTC
    perfkit_version: str
    machine: MachineInfo
    messages: tuple[str, ...] = ()

    def to_pandas(self) -> pd.DataFrame:
        """The tidy table of results.csv: one row per level, floats at their measured precision."""
        from perfkit.report.tidy_csv import run_rows, to_dataframe  # lazy: pandas on demand

        return to_dataframe(run_rows(self))


@dataclass(frozen=True, slots=True, kw_only=True)
class CapacityStep:
    """One request rate measured by a capacity search (`perfkit.tune.capacity`)."""

    # The offered (scheduled) open-loop rate, requests/s.
    rate_rps: float
    # What the server answered: inferences/s over the measured windows (after the first window,
    # when there are several: the first one starts with an empty pipeline).
    throughput_infer_per_s: float
    # The search's latency percentile from each request's scheduled send time (corrected for
    # coordinated omission), and from its actual send time (the service time).
    latency_us: float
    service_latency_us: float
    request_count: int
    error_count: int
    duration_s: float
    passed: bool
    # Why the rate failed ("" when it passed).
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class CapacityRecord:
    """A config's capacity under a latency budget: its rate search, every step kept."""

    # The highest passing rate x the client batch size (0: no rate passed).
    capacity_infer_per_s: float
    # The highest passing rate, requests/s (0: none).
    rate_rps: float
    percentile: float
    latency_budget_us: float
    # Where the budget came from: "given", or how it was derived from the default config.
    budget_source: str
    # The final bracket: highest passing and lowest failing rate (None: no rate failed).
    upper_rps: float | None
    # Why the search stopped: "converged", "max_steps", "rate_max", "rate_min", "pruned", ...
    stop_reason: str
    # The closed-loop probe that seeded the bracket (inferences/s; None: not probed).
    probe_infer_per_s: float | None
    steps: tuple[CapacityStep, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class TrialRecord:
    """One tuner trial: a config variant and what it measured."""

    number: int
    # Model Analyzer naming: "<model>_config_default" or "<model>_config_<n>".
    variant_name: str
    params: dict[str, Any]
    config_pbtxt: str
    state: TrialState
    feasible: bool
    # Why a trial failed or was pruned (load error, request error, constraint), None otherwise.
    reason: str | None
    # Objective name -> value, e.g. {"throughput_infer_per_s": 812.0, "p99_latency_us": 4100.0}.
    objectives: dict[str, float]
    # Constraint name -> violation (<= 0 satisfied), as given to Optuna's constraints_func.
    constraints: dict[str, float]
    measurement: Measurement | None
    duration_s: float
    # Seconds spent outside measurement windows (load, warm-up, bookkeeping).
    overhead_s: float
    # Several models tuned together (a sweep's [[models]]): each model's measurement, by name,
    # taken at the same time (`measurement` is the first model's); empty otherwise.
    models: dict[str, Measurement] = field(default_factory=dict)

    # The capacity objective's rate search for this config (None: not a capacity tune).
    capacity: CapacityRecord | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadSweep:
    """One of a tune's top configs re-measured over a full load sweep after the search
    (`perfkit.tune.finish`): throughput and latency at every level, in load order."""

    # The config's best trial in the search (its config.pbtxt and batch size are this sweep's).
    trial: int
    variant_name: str
    # 1 = the search's best config.
    rank: int
    mode: LoadMode
    batch_size: int
    # One per level that measured (an unstable level is kept, with stable=False).
    measurements: tuple[Measurement, ...]
    # Levels that gave no measurement, or the config's load refused: "concurrency 16: <reason>".
    errors: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ValidatedConfig:
    """One top config measured on the tune's server and on the validation target, at one load."""

    trial: int
    variant_name: str
    # The ranking metric (`Validation.metric`) at `Validation.load` on each server (the tune's
    # server re-measured at that load); None where it has no measurement.
    search_value: float | None
    target_value: float | None
    search: Measurement | None
    target: Measurement | None
    # Why a server gave no value (load refused, requests failed): "" when both measured.
    error: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Validation:
    """`--validate-on`: the top configs re-measured on another server at the best's load, and
    whether the search's ranking held there (`perfkit.tune.finish`)."""

    url: str
    metric: str
    direction: str
    # The client load both servers were measured at, e.g. {"concurrency": 8, "batch_size": 1}.
    load: dict[str, float]
    # In the search's ranking order.
    configs: tuple[ValidatedConfig, ...]
    # Trial numbers, best first: the search's ranking of the top configs, and the target's (of
    # the configs measured there, by `metric` at `load`).
    search_ranking: tuple[int, ...]
    target_ranking: tuple[int, ...]
    # Kendall's tau-a between the two over the configs measured on the target (None with fewer
    # than two), and whether the search's winner wins on the target (None: none measured there).
    kendall_tau: float | None
    same_winner: bool | None
    # Why the validation did not run, or stopped ("" when it ran).
    error: str = ""
    # The target as it described itself (None when it did not answer).
    server: ServerInfo | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TuneResult:
    """A `perfkit tune` study."""

    model: str
    study_name: str
    sampler: str
    # Objective name -> "maximize" | "minimize", in order.
    objectives: dict[str, str]
    # Constraint name -> bound, e.g. {"p99_latency_us": 10000.0, "throughput_infer_per_s": 100.0}.
    constraint_bounds: dict[str, float]
    trials: tuple[TrialRecord, ...]
    default_trial: int | None
    best_trial: int | None
    pareto_trials: tuple[int, ...]
    param_importances: dict[str, float]
    default_config_pbtxt: str
    best_config_pbtxt: str | None
    # Where the best config was written back (None on --dry-run or when nothing beat the default).
    written_to: str | None
    server: ServerInfo
    started_at: str
    perfkit_version: str
    machine: MachineInfo
    messages: tuple[str, ...] = ()
    # The default config's best feasible measurement over the loads it was measured at (Model
    # Analyzer's per-config best); `default_trial` is the one the gain compares with (same load).
    default_best_trial: int | None = None
    # How much better the best is than `default_trial` on the primary objective, in percent (None
    # when there is nothing to compare).
    gain_pct: float | None = None
    # The sweep's load and measure settings, how the default was compared, deduplicated draws.
    settings: dict[str, Any] = field(default_factory=dict)
    # The top configs re-measured over a full load sweep after the search (`top_k`), best first.
    load_sweeps: tuple[LoadSweep, ...] = ()
    # The top configs re-measured on another server (`validate_on`); None when not asked.
    validation: Validation | None = None

    def to_pandas(self) -> pd.DataFrame:
        """The tidy table of trials.csv: one row per trial, floats at their measured precision."""
        from perfkit.report.tidy_csv import to_dataframe, trial_rows  # lazy: pandas on demand

        return to_dataframe(trial_rows(self))

    def trial(self, number: int | None) -> TrialRecord | None:
        """The trial with this number (None for None or a number not among `trials`)."""
        return next((t for t in self.trials if t.number == number), None)
