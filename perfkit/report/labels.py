"""How stored names read to a person (the report edge): metric labels and units, loads in words.

Pure and stdlib only, so the console (`perfkit tune`, `perfkit report`), the HTML report and the
figures name things the same way without importing one another.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def metric_axis(name: str) -> tuple[str, float]:
    """Axis label and the factor that converts a stored metric to its display unit."""
    if name == "throughput_infer_per_s":
        return "Throughput (infer/s)", 1.0
    if name.startswith("weighted_"):  # several models' score (perfkit.tune.multi): a ratio
        inner = metric_axis(name.removeprefix("weighted_"))[0].split(" (")[0].lower()
        return f"Weighted relative {inner} (x the default)", 1.0
    if name == "capacity_infer_per_s":
        return "Capacity within the latency budget (infer/s)", 1.0
    if name.endswith("_latency_us"):
        return f"{name.removesuffix('_latency_us')} latency (ms)", 1e-3
    if name.endswith("_us"):
        return f"{name.removesuffix('_us').replace('_', ' ')} (ms)", 1e-3
    if name.endswith("_per_s"):
        return f"{name.removesuffix('_per_s').replace('_', ' ')} (/s)", 1.0
    return name.replace("_", " "), 1.0


def metric_name(name: str) -> str:
    """A metric in running text, without its unit: "throughput", "p99 latency"."""
    label = metric_axis(name)[0].split(" (")[0]
    return label[:1].lower() + label[1:]


def level_text(mode: str, level: float) -> str:
    """One measured load level: "concurrency 8" or "200 req/s"."""
    return f"concurrency {level:g}" if mode == "concurrency" else f"{level:g} req/s"


def describe_load(params: Mapping[str, Any]) -> str:
    """The client load of a tuner point, in words: "concurrency 16" or "request rate 200/s, batch
    4"; "" when the point has no load dimension."""
    parts: list[str] = []
    if "concurrency" in params:
        parts.append(f"concurrency {int(params['concurrency'])}")
    if "request_rate" in params:
        parts.append(f"request rate {float(params['request_rate']):g}/s")
    if int(params.get("batch_size", 1)) != 1:
        parts.append(f"batch {int(params['batch_size'])}")
    return ", ".join(parts)
