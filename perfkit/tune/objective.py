"""Scores and constraints of a trial from its `Measurement`. Pure.

Constraints follow Optuna's convention (a value <= 0 is satisfied), so they can go straight to a
sampler (`Trial.set_constraint`, Optuna's constraints support) and infeasible trials still teach the sampler where not to look.
Latency constraints are normalised by the budget (0.1 = 10 % over), throughput ones by the minimum,
GPU memory and power ones by their maximum.

The capacity objective (`capacity_infer_per_s`, perfkit.tune.capacity) is measured by its own
rate search, not per window: `window_value` has nothing for it, and a config with no rate within
the latency budget (capacity 0) violates `capacity_infer_per_s` (1.0; -1.0 when satisfied). That
violation is the trial's, not a sampler constraint: the objective value 0 already tells the sampler.

GPU metrics come from the server's nv_gpu_* families, scraped during the measurement
(`Measurement.metrics`, per GPU UUID, perf_analyzer's aggregation: memory used the peak, utilization
and power the mean); `gpu_metrics` turns them into the tuner's GPU keys (`GPU_KEYS`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from perfkit.results import Measurement, WindowStat
from perfkit.sweepfile import GPU_METRICS, ConstraintSpec, Direction

LATENCY_METRIC = {
    50.0: "p50_latency_us",
    90.0: "p90_latency_us",
    95.0: "p95_latency_us",
    99.0: "p99_latency_us",
}

GPU_KEYS = frozenset(GPU_METRICS.values())
CAPACITY_KEY = "capacity_infer_per_s"
MB = 1e6  # Model Analyzer's MB: bytes // 1e6


class MissingGpuMetrics(Exception):
    """A GPU objective or constraint, and a measurement without the GPU metrics it needs."""


def gpu_metrics(per_gpu: Mapping[str, Mapping[str, float]], throughput: float) -> dict[str, float]:
    """The tuner's GPU keys from a measurement's scraped metrics (empty when no GPU reported).

    Over every GPU the server reports: gpu_used_memory_mb is the fullest GPU's peak (a memory
    budget holds for each GPU), gpu_free_memory_mb the emptiest's room, gpu_utilization_pct the
    mean (%), gpu_power_w the sum of the GPUs' mean power and throughput_per_watt the throughput
    over it (infer/s per W).
    """
    used = per_gpu.get("gpu_memory_used_bytes", {})
    total = per_gpu.get("gpu_memory_total_bytes", {})
    util = per_gpu.get("gpu_utilization", {})
    power = per_gpu.get("gpu_power_usage", {})
    out: dict[str, float] = {}
    if used:
        out["gpu_used_memory_mb"] = max(used.values()) // MB
        free = [total[g] - used[g] for g in used if g in total]
        if free:
            out["gpu_free_memory_mb"] = min(free) // MB
    if util:
        out["gpu_utilization_pct"] = sum(util.values()) / len(util) * 100.0
    if power:
        watts = sum(power.values())
        out["gpu_power_w"] = watts
        if watts > 0:
            out["throughput_per_watt"] = throughput / watts
    return out


def metrics_of(m: Measurement) -> dict[str, float]:
    """Every number of a measurement worth keeping on a trial (flat, JSON-safe)."""
    lat = m.latency
    out = {
        "throughput_infer_per_s": m.throughput_infer_per_s,
        "avg_latency_us": lat.avg_us,
        "std_latency_us": lat.std_us,
        "p50_latency_us": lat.p50_us,
        "p90_latency_us": lat.p90_us,
        "p95_latency_us": lat.p95_us,
        "p99_latency_us": lat.p99_us,
        "max_latency_us": lat.max_us,
        "request_count": float(m.request_count),
        "error_count": float(m.error_count),
        "duration_s": m.duration_ns / 1e9,
        "client_send_us": m.client_send_us,
        "client_recv_us": m.client_recv_us,
        "client_cpu_pct": m.client_cpu_pct,
        "stable": 1.0 if m.stable else 0.0,
        "level": float(m.level),
        "batch_size": float(m.batch_size),
    }
    if m.server is not None:
        s = m.server
        out.update(
            {
                "server_queue_us": s.queue_us,
                "server_compute_input_us": s.compute_input_us,
                "server_compute_infer_us": s.compute_infer_us,
                "server_compute_output_us": s.compute_output_us,
                "server_overhead_us": s.overhead_us,
                "server_inference_count": float(s.inference_count),
                "server_execution_count": float(s.execution_count),
            }
        )
        if s.execution_count:
            out["server_avg_batch"] = s.inference_count / s.execution_count
    for name, per_gpu in m.metrics.items():
        for gpu, value in per_gpu.items():
            out[f"{name}{'[' + gpu + ']' if gpu else ''}"] = float(value)
    out.update(gpu_metrics(m.metrics, m.throughput_infer_per_s))
    return out


@dataclass(frozen=True, slots=True)
class Objective:
    """What a study optimises and under which bounds."""

    # (metric key, direction) in order.
    targets: tuple[tuple[str, Direction], ...]
    constraints: ConstraintSpec

    @property
    def latency_metric(self) -> str:
        return LATENCY_METRIC[self.constraints.latency_percentile]

    def gpu_keys(self) -> list[str]:
        """The GPU metric keys the objectives and constraints read."""
        bounds = self.bounds()
        keys = [name for name, _ in self.targets if name in GPU_KEYS]
        return keys + [k for k in bounds if k in GPU_KEYS and k not in keys]

    def check_gpu(self, metrics: Mapping[str, float]) -> None:
        """Raise MissingGpuMetrics when a GPU objective or constraint has no value in `metrics`."""
        missing = [k for k in self.gpu_keys() if k not in metrics]
        if missing:
            raise MissingGpuMetrics(
                f"no GPU metrics for {', '.join(missing)} in this measurement: the server's "
                "metrics endpoint reported no nv_gpu_* values while it ran (no GPU, no NVML, "
                "MIG, or GPU metrics off). Remove the GPU objectives and constraints, or tune on "
                "a server that exports GPU metrics."
            )

    def values(self, metrics: Mapping[str, float]) -> list[float]:
        return [float(metrics[name]) for name, _ in self.targets]

    def directions(self) -> list[Direction]:
        return [d for _, d in self.targets]

    def bounds(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.constraints.latency_budget_us is not None:
            out[self.latency_metric] = self.constraints.latency_budget_us
        if self.constraints.min_throughput is not None:
            out["throughput_infer_per_s"] = self.constraints.min_throughput
        if self.constraints.max_gpu_memory_mb is not None:
            out["gpu_used_memory_mb"] = self.constraints.max_gpu_memory_mb
        if self.constraints.max_gpu_power_w is not None:
            out["gpu_power_w"] = self.constraints.max_gpu_power_w
        return out

    def violations(self, metrics: Mapping[str, float]) -> dict[str, float]:
        """Constraint name -> violation (<= 0 satisfied)."""
        out: dict[str, float] = {}
        c = self.constraints
        if c.latency_budget_us is not None:
            value = metrics[self.latency_metric]
            out[self.latency_metric] = (value - c.latency_budget_us) / max(
                c.latency_budget_us, 1e-9
            )
        if c.min_throughput is not None:
            value = metrics["throughput_infer_per_s"]
            out["throughput_infer_per_s"] = (c.min_throughput - value) / max(c.min_throughput, 1e-9)
        if CAPACITY_KEY in metrics and self.primary()[0] == CAPACITY_KEY:
            out[CAPACITY_KEY] = 1.0 if metrics[CAPACITY_KEY] <= 0 else -1.0
        for key, most in (
            ("gpu_used_memory_mb", c.max_gpu_memory_mb),
            ("gpu_power_w", c.max_gpu_power_w),
        ):
            if most is not None:
                out[key] = (metrics[key] - most) / max(most, 1e-9)
        return out

    def feasible(self, metrics: Mapping[str, float]) -> bool:
        return all(v <= 0 for v in self.violations(metrics).values())

    def primary(self) -> tuple[str, Direction]:
        return self.targets[0]

    def window_value(self, window: WindowStat) -> float | None:
        """The primary objective as one window shows it (for pruning), or None if a window cannot."""
        name, _ = self.primary()
        if name == "throughput_infer_per_s":
            return window.throughput_infer_per_s
        if name == "avg_latency_us":
            return window.latency_avg_us
        # capacity_infer_per_s: a rate search, not a window's figure (it prunes itself).
        return None

    def clearly_worse(self, value: float, best: float, ratio: float) -> bool:
        """True when `value` is below `ratio` of the best (maximize) or above best/ratio (minimize)."""
        _, direction = self.primary()
        if direction == "maximize":
            return value < best * ratio
        return value > best / ratio

    def better(self, a: float, b: float) -> bool:
        _, direction = self.primary()
        return a > b if direction == "maximize" else a < b

    def gain_pct(self, best: float, default: float) -> float:
        """How much better `best` is than `default` on the primary objective, in percent."""
        if default == 0:
            return 0.0
        _, direction = self.primary()
        if direction == "maximize":
            return (best - default) / default * 100.0
        return (default - best) / default * 100.0
