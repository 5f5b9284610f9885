"""A sweep's `[[models]]` tables: several models tuned together on one server (`ModelEntry`).

    [[models]]
    name = "mlp"                 # required: a model directory of the repository
    zoo = "mlp"                  # optional: build it from the zoo when it is missing
    weight = 2.0                 # optional (1.0): its share of the weighted objective
    repository = "model_repository"   # optional: the one repository every model lives in
    [models.space]               # optional: overrides [space] key by key, for this model
    [models.load]                # optional: overrides [load] key by key
    [models.constraints]         # optional: overrides [constraints] key by key
    latency_budget_ms = 20

Rules (each refusal names `file:models[i].key`):
- `[[models]]` or `[model]`, not both; at least two models, each named once, no "." in a name
  (it separates a model from its dimension in the search space: `mlp.instance_count`).
- One server serves one model repository: the entries that set `repository` must agree (default
  "model_repository", relative to the base directory).
- Each model's client load is fixed (one value per key, no `baseline`): it is the traffic the
  model is expected to get while it shares the machine; the configs are what is searched.
- GPU objectives and bounds, and the capacity objective, are refused: they are not per model.

Pure: the table parsers of `perfkit.sweepfile.parse` are passed in (no import cycle).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from perfkit.errors import ConfigError
from perfkit.model_repo import InvalidRepository
from perfkit.model_repo.repository import check_model_name
from perfkit.sweepfile.spec import (
    GPU_METRICS,
    METRICS,
    ConstraintSpec,
    Direction,
    LoadSettings,
    ModelEntry,
    SpaceSpec,
)
from perfkit.tomltable import TableReader

KEYS = ("name", "zoo", "weight", "repository", "space", "load", "constraints")
_GPU_BOUNDS = ("max_gpu_memory_mb", "max_gpu_power_w")


def parse_models(
    source: str,
    doc: Mapping[str, Any],
    objectives: tuple[tuple[str, Direction], ...],
    *,
    space: Callable[[TableReader], SpaceSpec],
    load: Callable[[TableReader], LoadSettings],
    constraints: Callable[[TableReader], ConstraintSpec],
) -> tuple[tuple[ModelEntry, ...], str]:
    """The `[[models]]` entries of a sweep document and the repository they live in.

    Each entry's `space`, `load` and `constraints` are the sweep's tables with the entry's own
    keys over them, parsed by the given table parsers (parse.py's), so an error names the key as
    `models[i].<table>.<key>`."""
    raw = doc["models"]
    if "model" in doc:
        raise ConfigError(
            f"{source}:model: give [[models]] (several models tuned together) or [model] (one "
            "model), not both; move the model of [model] into a [[models]] table"
        )
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        raise ConfigError(f"{source}:models: must be an array of tables ([[models]] ...)")
    if len(raw) < 2:
        raise ConfigError(
            f"{source}:models: lists {len(raw)} model; [[models]] tunes two or more together, "
            "one model is tuned with [model]"
        )
    _check_objectives(source, objectives)
    entries: list[ModelEntry] = []
    repositories: dict[str, str] = {}
    for i, table in enumerate(raw):
        r = TableReader(source, f"models[{i}]", table)
        name = r.str_("name")
        if name is None:
            raise r.fail("name", "is required: the model's directory in the repository")
        try:
            check_model_name(name)
        except InvalidRepository as exc:
            raise r.fail("name", str(exc)) from None
        if "." in name:
            raise r.fail(
                "name",
                f"{name!r} contains '.', which separates a model from its dimension in the "
                "search space (mlp.instance_count): rename the model directory",
            )
        if any(e.name == name for e in entries):
            raise r.fail("name", f"{name!r} is listed twice: list each model once")
        repo = r.str_("repository")
        if repo is not None:
            repositories[r.key("repository")] = repo
        weight = r.num("weight", 1.0, minimum=0.0) or 0.0
        if weight <= 0:
            raise r.fail("weight", f"must be above 0, got {weight:g}")
        entry = ModelEntry(
            name=name,
            zoo=r.str_("zoo"),
            weight=weight,
            space=space(_merged(r, doc, "space")),
            load=_fixed_load(load(_merged(r, doc, "load")), r),
            constraints=_no_gpu_bounds(constraints(_merged(r, doc, "constraints")), r),
        )
        r.check_unknown(set(KEYS))
        entries.append(entry)
    if len(set(repositories.values())) > 1:
        listed = ", ".join(f"{k} = {v!r}" for k, v in repositories.items())
        raise ConfigError(
            f"{source}:{next(iter(repositories))}: the models are tuned on one server, which "
            f"serves one model repository, but they name several ({listed}): put the models in "
            "one repository"
        )
    return tuple(entries), next(iter(repositories.values()), "model_repository")


def _merged(r: TableReader, doc: Mapping[str, Any], name: str) -> TableReader:
    """The sweep's [name] table with the entry's own [models.name] keys over it."""
    own = r.raw(name)
    if own is None:
        own = {}
    if not isinstance(own, dict):
        raise r.fail(name, f"must be a table ([models.{name}]), got {type(own).__name__}")
    shared = doc.get(name, {})
    if not isinstance(shared, dict):
        raise ConfigError(f"{r.source}:{name}: must be a table ([{name}])")
    return TableReader(r.source, r.key(name), {**shared, **own})


def _fixed_load(load: LoadSettings, r: TableReader) -> LoadSettings:
    for key, values in (
        ("concurrency", load.concurrency),
        ("request_rate", load.request_rate),
        ("batch_size", load.batch_size),
    ):
        if len(values) > 1:
            raise r.fail(
                f"load.{key}",
                f"lists {len(values)} values; with [[models]] each model's load is one value "
                "(the traffic it gets while the models share the server; the configs are "
                "searched): give one value, or tune the model alone to search its load",
            )
    if load.baseline:
        raise r.fail(
            "load.baseline",
            "has no use with [[models]]: each model is measured at its one load; remove it",
        )
    return load


def _no_gpu_bounds(spec: ConstraintSpec, r: TableReader) -> ConstraintSpec:
    for key in _GPU_BOUNDS:
        if getattr(spec, key) is not None:
            own = r.table.get("constraints")
            where = r.key(f"constraints.{key}") if own and key in own else f"constraints.{key}"
            raise ConfigError(
                f"{r.source}:{where}: GPU bounds are not supported with [[models]] (the GPUs "
                "are shared by the models, so no bound is one model's): remove it"
            )
    return spec


def _check_objectives(source: str, objectives: tuple[tuple[str, Direction], ...]) -> None:
    names = {key: name for name, key in METRICS.items()}
    for key, _ in objectives:
        if key in GPU_METRICS.values() or key == METRICS["capacity"]:
            raise ConfigError(
                f"{source}:objectives.{names.get(key, key)}: not supported with [[models]]; "
                "use throughput or a latency (each model's, combined by weight)"
            )
