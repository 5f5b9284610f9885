"""The sweep file's capacity objective: the `[capacity]` section and the rules a capacity sweep obeys.

    [objectives]   capacity = "maximize"     (the first objective; perfkit.tune.capacity)
    [constraints]  latency_budget_ms = 50    (required; "auto": derived from the default config)
    [capacity]     rate_min, rate_max, tolerance_pct, max_steps, probe_concurrency

The capacity search sets the request rate itself, so `load.concurrency`, `load.request_rate`,
`load.mode = "request_rate"` and a baseline concurrency or rate are refused in a capacity sweep
(the probe's concurrency is `capacity.probe_concurrency`). Imports the stdlib and perfkit's pure
sweep modules only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from perfkit.errors import ConfigError
from perfkit.sweepfile.spec import METRICS, CapacitySettings, Direction
from perfkit.tomltable import table

CAPACITY = METRICS["capacity"]
KEYS = ("rate_min", "rate_max", "tolerance_pct", "max_steps", "probe_concurrency")
AUTO = "auto"


def check(
    source: str, doc: Mapping[str, Any], objectives: tuple[tuple[str, Direction], ...]
) -> dict[str, Any]:
    """Refuse what a capacity sweep cannot honour (or a capacity setting without the capacity
    objective); returns the document with `latency_budget_ms = "auto"` taken out (no budget:
    the tune derives it)."""
    names = [name for name, _ in objectives]
    wanted = CAPACITY in names
    constraints = dict(doc.get("constraints") or {})
    budget = constraints.get("latency_budget_ms")
    if not wanted:
        if "capacity" in doc:
            raise ConfigError(
                f"{source}:capacity: is the capacity objective's rate search; add "
                '[objectives] capacity = "maximize" or drop the section'
            )
        if budget == AUTO:
            raise ConfigError(
                f'{source}:constraints.latency_budget_ms: "auto" is for the capacity objective; '
                "give the budget in milliseconds"
            )
        return dict(doc)
    if names[0] != CAPACITY:
        raise ConfigError(
            f"{source}:objectives.capacity: must be the first objective (the capacity search "
            "measures each config at its own rates; the other objectives are read there)"
        )
    if dict(objectives)[CAPACITY] != "maximize":
        raise ConfigError(f'{source}:objectives.capacity: must be "maximize"')
    if isinstance(budget, str) and budget != AUTO:
        raise ConfigError(
            f'{source}:constraints.latency_budget_ms: must be milliseconds or "auto", '
            f"got {budget!r}"
        )
    if budget is None:
        raise ConfigError(
            f"{source}:constraints.latency_budget_ms: the capacity objective needs a latency "
            'budget: give it in milliseconds, or "auto" to derive it from the default config '
            "(5 x its latency percentile at a low request rate, at least 10 ms)"
        )
    load = doc.get("load") or {}
    if isinstance(load, Mapping):
        for key in ("concurrency", "request_rate"):
            if key in load:
                raise ConfigError(
                    f"{source}:load.{key}: the capacity objective searches the request rate "
                    "itself (bounds in [capacity] rate_min / rate_max, the probe's concurrency "
                    "in [capacity] probe_concurrency): drop it"
                )
        if load.get("mode") == "request_rate":
            raise ConfigError(
                f"{source}:load.mode: the capacity objective measures at request rates itself: "
                "drop it"
            )
        baseline = load.get("baseline")
        if isinstance(baseline, Mapping):
            for key in ("concurrency", "request_rate"):
                if key in baseline:
                    raise ConfigError(
                        f"{source}:load.baseline.{key}: the capacity objective searches the rate "
                        "itself: drop it"
                    )
    out = dict(doc)
    if budget == AUTO:
        del constraints["latency_budget_ms"]
        out["constraints"] = constraints
    return out


def parse(source: str, doc: Mapping[str, Any]) -> CapacitySettings:
    """The `[capacity]` section (defaults when absent)."""
    r = table(source, doc, "capacity")
    default = CapacitySettings()
    rate_min = r.num("rate_min", default.rate_min, minimum=0.0)
    if rate_min is None or rate_min <= 0:
        raise r.fail("rate_min", f"must be > 0 requests/s, got {rate_min!r}")
    rate_max = r.num("rate_max", None, minimum=0.0)
    if rate_max is not None and rate_max <= rate_min:
        raise r.fail("rate_max", f"must be above rate_min ({rate_min:g}), got {rate_max:g}")
    tolerance = r.num("tolerance_pct", default.tolerance_pct, minimum=0.0)
    if tolerance is None or not 0 < tolerance < 100:
        raise r.fail("tolerance_pct", f"must be above 0 and below 100, got {tolerance!r}")
    probe = r.num("probe_concurrency", None, minimum=1, integer=True)
    settings = CapacitySettings(
        rate_min=rate_min,
        rate_max=rate_max,
        tolerance_pct=tolerance,
        max_steps=r.int_("max_steps", default.max_steps, minimum=2),
        probe_concurrency=None if probe is None else int(probe),
    )
    r.check_unknown(set(KEYS))
    return settings
