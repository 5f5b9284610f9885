"""Model Analyzer's results/metrics-model-inference.csv and metrics-model-gpu.csv for a tune, with
MA's exact default columns.

    Model,Batch,Concurrency,Model Config Path,Instance Group,Max Batch Size,Satisfies Constraints,
    Throughput (infer/sec),p99 Latency (ms)
    Model,GPU UUID,Batch,Concurrency,Model Config Path,Instance Group,Satisfies Constraints,
    GPU Memory Usage (MB),GPU Utilization (%),GPU Power Usage (W)

(`Request Rate` replaces `Concurrency` in request-rate mode.) One row per measured variant (and
per GPU in the GPU file), best first (MA's sort: feasible before infeasible, then by the
objective), values rounded to one decimal as MA prints them. GPU values as MA's remote monitor
converts Triton's: memory bytes // 1e6 (the peak over the measurement), utilization x 100 and
power (both the mean). Like MA, the GPU file is not written when no measurement has GPU metrics
(MA exports a table only when it has rows). Pure apart from the file writes.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

from perfkit.model_repo.config import instance_summary, parse_config
from perfkit.results import Measurement, TrialRecord, TuneResult

FILENAME = "metrics-model-inference.csv"
GPU_FILENAME = "metrics-model-gpu.csv"
HEADER = (
    "Model",
    "Batch",
    "Concurrency",
    "Model Config Path",
    "Instance Group",
    "Max Batch Size",
    "Satisfies Constraints",
    "Throughput (infer/sec)",
    "p99 Latency (ms)",
)
GPU_HEADER = (
    "Model",
    "GPU UUID",
    "Batch",
    "Concurrency",
    "Model Config Path",
    "Instance Group",
    "Satisfies Constraints",
    "GPU Memory Usage (MB)",
    "GPU Utilization (%)",
    "GPU Power Usage (W)",
)


def _sort_key(result: TuneResult, t: TrialRecord) -> tuple[int, float]:
    name, direction = next(iter(result.objectives.items()), ("throughput_infer_per_s", "maximize"))
    value = t.objectives.get(name, 0.0)
    return (0 if t.feasible else 1, -value if direction == "maximize" else value)


def _done(result: TuneResult) -> list[TrialRecord]:
    done = [t for t in result.trials if t.state == "complete" and t.measurement is not None]
    return sorted(done, key=lambda t: _sort_key(result, t))


def _gpus(m: Measurement) -> list[str]:
    """The GPU UUIDs a measurement has metrics for."""
    return sorted({uuid for per_gpu in m.metrics.values() for uuid in per_gpu if uuid})


def _instances(t: TrialRecord, gpu_count: int) -> str:
    if not t.config_pbtxt:
        return "1:GPU" if gpu_count else "1:CPU"
    return instance_summary(parse_config(t.config_pbtxt, t.variant_name), gpu_count)


def _level(m: Measurement) -> str:
    return f"{m.level:g}" if m.mode == "request_rate" else str(int(m.level))


def rows(result: TuneResult) -> list[list[str]]:
    """MA rows (without the header) for the complete trials of `result`."""
    out: list[list[str]] = []
    for t in _done(result):
        m = t.measurement
        assert m is not None
        config = parse_config(t.config_pbtxt, t.variant_name) if t.config_pbtxt else None
        out.append(
            [
                result.model,
                str(m.batch_size),
                _level(m),
                t.variant_name,
                _instances(t, len(_gpus(m))),
                str(config.max_batch_size) if config is not None else "",
                "Yes" if t.feasible else "No",
                f"{m.throughput_infer_per_s:.1f}",
                f"{m.latency.p99_us / 1000.0:.1f}",
            ]
        )
    return out


def gpu_rows(result: TuneResult) -> list[list[str]]:
    """MA's GPU rows (without the header): one per complete trial and GPU it has metrics for."""
    out: list[list[str]] = []
    for t in _done(result):
        m = t.measurement
        assert m is not None
        gpus = _gpus(m)
        used = m.metrics.get("gpu_memory_used_bytes", {})
        util = m.metrics.get("gpu_utilization", {})
        power = m.metrics.get("gpu_power_usage", {})
        out.extend(
            [
                result.model,
                uuid,
                str(m.batch_size),
                _level(m),
                t.variant_name,
                _instances(t, len(gpus)),
                "Yes" if t.feasible else "No",
                _one_decimal(used.get(uuid), _mb),
                _one_decimal(util.get(uuid), _pct),
                _one_decimal(power.get(uuid), float),
            ]
            for uuid in gpus
        )
    return out


def _mb(value: float) -> float:
    return value // 1e6


def _pct(value: float) -> float:
    return value * 100.0


def _one_decimal(value: float | None, convert: Callable[[float], float]) -> str:
    return "" if value is None else f"{convert(value):.1f}"


def header(result: TuneResult, base: tuple[str, ...] = HEADER) -> list[str]:
    rate = any(
        t.measurement is not None and t.measurement.mode == "request_rate" for t in result.trials
    )
    return [("Request Rate" if (rate and h == "Concurrency") else h) for h in base]


def _write_csv(path: Path, head: list[str], body: list[list[str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(head)
        writer.writerows(body)


def write(result: TuneResult, results_dir: Path) -> Path:
    """Write `<results_dir>/metrics-model-inference.csv`; returns its path."""
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / FILENAME
    _write_csv(path, header(result), rows(result))
    return path


def write_gpu(result: TuneResult, results_dir: Path) -> Path | None:
    """Write `<results_dir>/metrics-model-gpu.csv` and return its path; with no GPU row, as MA,
    write none (and remove one an earlier tune left there) and return None."""
    path = results_dir / GPU_FILENAME
    body = gpu_rows(result)
    if not body:
        path.unlink(missing_ok=True)
        return None
    results_dir.mkdir(parents=True, exist_ok=True)
    _write_csv(path, header(result, GPU_HEADER), body)
    return path
