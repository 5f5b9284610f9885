"""`perfkit tune`'s two ways in, a sweep file or `-m MODEL` (zero-config, `perfkit.tune.auto`), and
the space table it prints before the trials (`perfkit.tune.describe.SpaceDescription`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from perfkit.errors import ConfigError
from perfkit.sweepfile import TuneSweep, load_sweep
from perfkit.tune import auto
from perfkit.tune.describe import SpaceDescription

# Flags that shape the automatic space: a sweep file says these in its own tables.
ZERO_CONFIG_FLAGS = {
    "objective": ("--objective", "[objectives]"),
    "max_instances": ("--max-instances", "[space] instance_count"),
    "max_batch_size": ("--max-batch-size", "[space] max_batch_size"),
    "concurrency": ("--concurrency", "[load] concurrency"),
}
DEFAULT_REPOSITORY = Path("model_repository")


def tune_spec(
    sweep: Path | None,
    model: str | None,
    *,
    repository: Path | None,
    url: str | None,
    latency_budget_ms: float | None,
    latency_percentile: float | None,
    flags: dict[str, Any],
) -> TuneSweep:
    """The sweep file's spec, or with `-m` and no sweep file the zero-config one; the latency
    flags over the constraints either way. `flags` holds the ZERO_CONFIG_FLAGS values."""
    if sweep is None and model is None:
        raise ConfigError(
            "perfkit tune: give a SWEEP file, or -m MODEL for a zero-config tune "
            "(the space from the model and this machine)"
        )
    if sweep is not None and model is not None:
        raise ConfigError(
            f"-m/--model {model}: {sweep} names the model to tune (model.name); give either "
            "the sweep file or -m MODEL (zero-config), not both"
        )
    budget_us = None if latency_budget_ms is None else latency_budget_ms * 1000.0
    if sweep is not None:
        given = [ZERO_CONFIG_FLAGS[k] for k, v in flags.items() if v is not None]
        if given:
            flag, key = given[0]
            raise ConfigError(
                f"{flag} shapes the zero-config space (-m MODEL); with a sweep file set {key} "
                f"in {sweep} instead"
            )
        spec = load_sweep(sweep)
        changes: dict[str, Any] = {}
        if budget_us is not None:
            changes["latency_budget_us"] = budget_us
        if latency_percentile is not None:
            changes["latency_percentile"] = latency_percentile
        if changes:
            spec = dataclasses.replace(
                spec, constraints=dataclasses.replace(spec.constraints, **changes)
            )
        return spec
    assert model is not None
    cpus, gpus = auto.machine()
    return auto.auto_sweep(
        model,
        repository=(repository or DEFAULT_REPOSITORY).resolve(),
        cpus=cpus,
        gpus=gpus,
        url=url,
        objective=flags["objective"] or "capacity",
        latency_budget_us=budget_us,
        latency_percentile=latency_percentile or 99.0,
        max_instances=flags["max_instances"],
        max_batch_size=flags["max_batch_size"],
        concurrency=_levels(flags["concurrency"]),
    )


def _levels(text: str | None) -> tuple[int, ...]:
    if text is None:
        return ()
    try:
        levels = tuple(int(part) for part in text.split(","))
    except ValueError:
        levels = ()
    if not levels or min(levels) < 1:
        raise ConfigError(
            f"--concurrency: must be levels >= 1 separated by commas, e.g. 1,2,4,8; got {text!r}"
        )
    return tuple(dict.fromkeys(levels))


def space_table(space: SpaceDescription) -> Group:
    """Dimension -> values (searched ones first), then a line with the number of points, the
    trials budget, the objective and the latency budget."""
    table = Table(title=f"{space.model}: search space")
    table.add_column("dimension", no_wrap=True)
    table.add_column("values")
    table.add_column("", no_wrap=True)
    searched = space.searched
    for row in (*searched, *(r for r in space.rows if r not in searched)):
        table.add_row(row.dimension, ", ".join(row.values), "" if row in searched else row.how)
    each = f" (config dimensions once per model: {', '.join(space.composing)})"
    line = (
        f"{space.points:,} point{'' if space.points == 1 else 's'} in the space"
        f"{each if space.composing else ''}, "
        f"budget {space.trials} trial{'' if space.trials == 1 else 's'}; "
        f"objective: {space.objective}; {space.budget}"
    )
    return Group(table, Text(line))
