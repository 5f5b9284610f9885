"""Tune sweep files (sweeps/*.toml) -> frozen `TuneSweep` (`load_sweep`, `parse_sweep`).

`spec` holds the dataclasses and metric names; `parse` reads TOML into them (errors name
`file:key` and the reason; the sections are listed in its docstring).
"""

from perfkit.sweepfile.parse import load_sweep, parse_sweep
from perfkit.sweepfile.spec import (
    GPU_METRICS,
    INSTANCE_KINDS,
    METRICS,
    SAMPLERS,
    CapacitySettings,
    ConstraintSpec,
    Direction,
    LoadSettings,
    MeasureSettings,
    ModelEntry,
    SamplerName,
    SearchSettings,
    SpaceSpec,
    TuneSweep,
)

__all__ = [
    "GPU_METRICS",
    "INSTANCE_KINDS",
    "METRICS",
    "SAMPLERS",
    "CapacitySettings",
    "ConstraintSpec",
    "Direction",
    "LoadSettings",
    "MeasureSettings",
    "ModelEntry",
    "SamplerName",
    "SearchSettings",
    "SpaceSpec",
    "TuneSweep",
    "load_sweep",
    "parse_sweep",
]
