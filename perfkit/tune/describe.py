"""What a tune searches, in words: `describe_space(sweep) -> SpaceDescription` (dimension -> values,
the number of points, the objective and the latency budget), which `perfkit tune` prints at the
start of every tune and for `--show-space`. Pure: reads only the sweep."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from perfkit.sweepfile import METRICS, SpaceSpec, TuneSweep

CAPACITY = METRICS["capacity"]


@dataclass(frozen=True, slots=True)
class SpaceRow:
    """One dimension: its name as a sweep file's [space]/[load] key, its values in words, and
    how it is set: "searched" (more than one value), "fixed" (every variant gets the one value)
    or "per config" (the capacity objective's request rate, searched within each trial)."""

    dimension: str
    values: tuple[str, ...]
    how: str = ""

    def __post_init__(self) -> None:
        if not self.how:
            object.__setattr__(self, "how", "searched" if len(self.values) > 1 else "fixed")


@dataclass(frozen=True, slots=True, kw_only=True)
class SpaceDescription:
    """A tune's space, objective and budget, for a person to read before the trials start."""

    model: str
    rows: tuple[SpaceRow, ...]
    # Grid points: the product of the searched dimensions' value counts.
    points: int
    objective: str
    budget: str
    trials: int
    # An ensemble's composing models: the config dimensions are searched once for each.
    composing: tuple[str, ...] = ()

    @property
    def searched(self) -> tuple[SpaceRow, ...]:
        return tuple(r for r in self.rows if r.how == "searched")


def describe_space(sweep: TuneSweep, composing: tuple[str, ...] = ()) -> SpaceDescription:
    """The dimensions of `sweep` (its [space], then the client load), the objective and budget.
    `composing`: the composing models of the ensemble it tunes (`perfkit.tune.auto.composing_models`),
    each searched over the [space] dimensions."""
    rows = list(_space_rows(sweep.space, ""))
    for entry in sweep.models:
        if entry.space is not None:
            rows.extend(_space_rows(entry.space, f"{entry.name}."))
    config_points = math.prod(len(r.values) for r in rows) ** max(len(composing), 1)
    load = _load_rows(sweep)
    rows.extend(load)
    return SpaceDescription(
        model=sweep.model,
        rows=tuple(rows),
        points=config_points * math.prod(len(r.values) for r in load),
        composing=composing,
        objective=", ".join(f"{_metric(key)} ({way})" for key, way in sweep.objectives),
        budget=_budget(sweep),
        trials=sweep.trials,
    )


def _space_rows(space: SpaceSpec, prefix: str) -> list[SpaceRow]:
    rows: list[SpaceRow] = []
    for f in dataclasses.fields(space):
        values = getattr(space, f.name)
        if not values:
            continue  # kept as the model has it
        if f.name in ("parameters", "fields"):
            # (key or proto path, values) pairs: one row each.
            for key, options in values:
                name = f"{f.name}.{key}" if f.name == "parameters" else str(key)
                rows.append(SpaceRow(prefix + name, tuple(_word(v) for v in options)))
        else:
            rows.append(SpaceRow(prefix + f.name, tuple(_word(v) for v in values)))
    return rows


def _load_rows(sweep: TuneSweep) -> list[SpaceRow]:
    load = sweep.load
    if CAPACITY in dict(sweep.objectives):
        return [
            SpaceRow("request_rate", ("the highest within the budget",), "per config"),
            SpaceRow("batch_size", tuple(_word(v) for v in load.batch_size)),
        ]
    levels = load.concurrency if load.mode == "concurrency" else load.request_rate
    return [
        SpaceRow(load.mode, tuple(_word(v) for v in levels)),
        SpaceRow("batch_size", tuple(_word(v) for v in load.batch_size)),
    ]


def _word(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return "[" + ", ".join(_word(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _metric(key: str) -> str:
    return next((name for name, k in METRICS.items() if k == key), key)


def _budget(sweep: TuneSweep) -> str:
    c = sweep.constraints
    p = f"p{c.latency_percentile:g}"
    parts: list[str] = []
    if c.latency_budget_us is not None:
        parts.append(f"{p} latency <= {c.latency_budget_us / 1000:g} ms")
    elif CAPACITY in dict(sweep.objectives):
        parts.append(f"{p} latency budget derived from the default config's unloaded latency")
    if c.min_throughput is not None:
        parts.append(f"throughput >= {c.min_throughput:g} infer/s")
    if c.max_gpu_memory_mb is not None:
        parts.append(f"GPU memory <= {c.max_gpu_memory_mb:g} MB")
    if c.max_gpu_power_w is not None:
        parts.append(f"GPU power <= {c.max_gpu_power_w:g} W")
    return ", ".join(parts) or "no constraint"
