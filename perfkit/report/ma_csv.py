"""Model Analyzer's results/metrics-model-inference.csv for a tune, with MA's exact default columns.

    Model,Batch,Concurrency,Model Config Path,Instance Group,Max Batch Size,Satisfies Constraints,
    Throughput (infer/sec),p99 Latency (ms)

(`Request Rate` replaces `Concurrency` in request-rate mode.) One row per measured variant, best
first (MA's sort: feasible before infeasible, then by the objective), values rounded to one decimal
as MA prints them. Pure apart from the file write.
"""

from __future__ import annotations

import csv
from pathlib import Path

from perfkit.model_repo.config import instance_summary, parse_config
from perfkit.results import TrialRecord, TuneResult

FILENAME = "metrics-model-inference.csv"
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


def _sort_key(result: TuneResult, t: TrialRecord) -> tuple[int, float]:
    name, direction = next(iter(result.objectives.items()), ("throughput_infer_per_s", "maximize"))
    value = t.objectives.get(name, 0.0)
    return (0 if t.feasible else 1, -value if direction == "maximize" else value)


def rows(result: TuneResult) -> list[list[str]]:
    """MA rows (without the header) for the complete trials of `result`."""
    out: list[list[str]] = []
    done = [t for t in result.trials if t.state == "complete" and t.measurement is not None]
    for t in sorted(done, key=lambda t: _sort_key(result, t)):
        m = t.measurement
        assert m is not None
        config = parse_config(t.config_pbtxt, t.variant_name) if t.config_pbtxt else None
        level = f"{m.level:g}" if m.mode == "request_rate" else str(int(m.level))
        out.append(
            [
                result.model,
                str(m.batch_size),
                level,
                t.variant_name,
                instance_summary(config) if config is not None else "1:CPU",
                str(config.max_batch_size) if config is not None else "",
                "Yes" if t.feasible else "No",
                f"{m.throughput_infer_per_s:.1f}",
                f"{m.latency.p99_us / 1000.0:.1f}",
            ]
        )
    return out


def header(result: TuneResult) -> list[str]:
    rate = any(
        t.measurement is not None and t.measurement.mode == "request_rate" for t in result.trials
    )
    return [("Request Rate" if (rate and h == "Concurrency") else h) for h in HEADER]


def write(result: TuneResult, results_dir: Path) -> Path:
    """Write `<results_dir>/metrics-model-inference.csv`; returns its path."""
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / FILENAME
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header(result))
        writer.writerows(rows(result))
    return path
