"""Tuning several models together on one server (a sweep's `[[models]]`): a "model group".

Model Analyzer's concurrent multi-model mode, as perfkit does it:

- The space: each model's own dimensions (its `[models.space]` over the sweep's [space], built
  by `SearchSpace.from_specs`), named `<model>.<dimension>` (`mlp.instance_count`). Each
  model's client load is fixed (one value per key: `perfkit.sweepfile.models`), so it is in the
  space's fixed values (`mlp.concurrency`), never searched.
- A variant (`Group`): one config per model, each with its own dimensions applied; its key
  hashes all of them with every model's load. Its text (a trial's config.pbtxt) is the first
  model's config.pbtxt, then each other model's as a commented block (`group_text`), so every
  reader of a variant's config.pbtxt still reads a valid config; the write-back takes the blocks
  apart again (`model_texts`).
- A trial (`perfkit.tune.multi_measure.GroupEvaluator`) loads every model's variant, then
  measures all the models at once, each under its own load, on windows that start together.
- The objective (`GroupObjective`, `scores`): for each [objectives] metric M, the weighted mean
  over the models of each model's M relative to the reference's (`reference_of`):

      weighted_M = sum_i w_i * r_i / sum_i w_i,  r_i = M_i / M_i,ref (maximize; ref / M_i to
      minimize), w_i = models[i].weight

  maximized. The reference is the default configs' trial (the first measurement of a study), so
  the default scores 1.0 and a score of 1.25 is "25 % better than the default, weighted over the
  models": models of different speeds count by their relative gain, not their raw infer/s, as
  Model Analyzer's weighted per-model percentage gains do. (When the default's trial failed, the
  first complete trial is the reference; a trial scored before any trial completed is its own.)
  Each model's constraints apply to its own figures (`mlp.p99_latency_us`): one model over its
  budget makes the trial infeasible. No trial is pruned: one model's window says nothing of the
  score.
- The trial's `Measurement` is the first model's (its unprefixed metrics too); every model's
  is in `TrialRecord.models` and its metrics are prefixed `<model>.` in the trial's metrics.
- The winner's configs go into each model's directory (each original kept as
  config.pbtxt.orig), and the server reloads each model from disk.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from perfkit.control import ControlClient
from perfkit.errors import ConfigError, PerfkitError
from perfkit.model_repo import ModelRepoError
from perfkit.model_repo.config import ModelConfig, config_hash, format_config, load_config
from perfkit.results import TuneResult
from perfkit.sweepfile import ConstraintSpec, Direction, LoadSettings, SpaceSpec, TuneSweep
from perfkit.tune import output
from perfkit.tune.objective import LATENCY_METRIC, Objective
from perfkit.tune.space import (
    LOAD_DIMS,
    Dim,
    SearchSpace,
    build_variant,
    check_instances,
)

SCORE_PREFIX = "weighted_"
_MARK = "# ---- model "
_MARK_END = " ----"
_HEADER = "# perfkit tune: a model group; the other models' config.pbtxt, one commented block each"


@dataclass(frozen=True, slots=True)
class Group:
    """The configs of the models tuned together, in sweep order (the first is `sweep.model`)."""

    models: tuple[tuple[str, ModelConfig], ...]

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.models]


@dataclass(frozen=True, slots=True)
class Member:
    """One model of a group, its settings resolved (a `ModelEntry`'s None: the sweep's table)."""

    name: str
    zoo: str | None
    weight: float
    space: SpaceSpec
    load: LoadSettings
    constraints: ConstraintSpec


def entries(sweep: TuneSweep) -> tuple[Member, ...]:
    """The sweep's [[models]], each setting resolved."""
    return tuple(
        Member(
            name=e.name,
            zoo=e.zoo,
            weight=e.weight,
            space=e.space or sweep.space,
            load=e.load or sweep.load,
            constraints=e.constraints or sweep.constraints,
        )
        for e in sweep.models
    )


def load_group(sweep: TuneSweep, note: Callable[[str], None]) -> Group | None:
    """The group of a `[[models]]` sweep, each model built from the zoo when it is missing and
    asked for; None for a sweep of one model. ConfigError for a missing config or an ensemble."""
    if not sweep.models:
        return None
    from perfkit.tune import setup

    members = entries(sweep)
    note(
        f"tuning {len(members)} models together on one server, measured at the same time: "
        + ", ".join(f"{e.name} (weight {e.weight:g})" for e in members)
    )
    models: list[tuple[str, ModelConfig]] = []
    for e in members:
        model_dir = setup.ensure_model(replace(sweep, model=e.name, zoo=e.zoo), note)
        try:
            config = load_config(model_dir / "config.pbtxt")
        except ModelRepoError as exc:
            raise ConfigError(str(exc)) from exc
        if config.platform == "ensemble":
            raise ConfigError(
                f"{sweep.source}:models: {e.name!r} is an ensemble; [[models]] tunes models, "
                "not ensembles: tune the ensemble alone with [model]"
            )
        check_instances(config, e.space)
        models.append((e.name, config))
    return Group(tuple(models))


def group_space(sweep: TuneSweep) -> SearchSpace:
    """Each model's dimensions and fixed values, prefixed with its name."""
    dims: list[Dim] = []
    fixed: dict[str, Any] = {}
    for e in entries(sweep):
        own = SearchSpace.from_specs(e.space, e.load)
        dims.extend(Dim(f"{e.name}.{d.name}", d.values) for d in own.dims)
        fixed.update({f"{e.name}.{k}": v for k, v in own.fixed.items()})
    return SearchSpace(dims=tuple(dims), fixed=fixed)


def baseline_load(space: SearchSpace) -> dict[str, Any]:
    """Every model's (fixed) load, as the default's trial records it."""
    return {k: v for k, v in space.fixed.items() if k.rpartition(".")[2] in LOAD_DIMS}


def group_hash(group: Group, sweep: TuneSweep) -> str:
    """12 hex over every model's config and its [[models]] entry (the study's base hash)."""
    digest = hashlib.sha256()
    for (name, config), e in zip(group.models, entries(sweep), strict=True):
        digest.update(name.encode() + b"\0" + config.SerializeToString(deterministic=True))
        digest.update(json.dumps(asdict(e), sort_keys=True, default=str).encode())
    return digest.hexdigest()[:12]


def group_text(group: Group) -> str:
    """The first model's config.pbtxt, then each other model's as a commented block."""
    (_, first), *others = group.models
    lines = [format_config(first).rstrip("\n"), "#", _HEADER]
    for name, config in others:
        lines.append(f"{_MARK}{name}{_MARK_END}")
        lines.extend(f"# {line}" if line else "#" for line in format_config(config).splitlines())
    return "\n".join(lines) + "\n"


def model_texts(text: str, first: str) -> dict[str, str]:
    """Each model's config.pbtxt text of a `group_text`, by model name (`first`: the first's)."""
    head, _, rest = text.partition(_HEADER)
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in rest.splitlines():
        if line.startswith(_MARK) and line.endswith(_MARK_END):
            current = blocks.setdefault(line[len(_MARK) : -len(_MARK_END)], [])
        elif current is not None:
            current.append(line[2:] if line.startswith("# ") else "")
    return {
        first: head.rstrip("#\n") + "\n",
        **{name: "\n".join(lines) + "\n" for name, lines in blocks.items()},
    }


class GroupVariants:
    """The tuner's variants of a group (`perfkit.tune.tuner.Variants`). The key's load part is
    every model's fixed load, whatever `params` hold, so the default measured at "the best's
    load" (`Tuner.ensure_default_at_best`) is the default's own trial."""

    def __init__(self, space: SearchSpace) -> None:
        loads = baseline_load(space)
        self.load = ",".join(f"{k}={loads[k]}" for k in sorted(loads))

    def build(self, base: Group, params: Mapping[str, Any]) -> Group:
        models = []
        for name, config in base.models:
            prefix = f"{name}."
            own = {k.removeprefix(prefix): v for k, v in params.items() if k.startswith(prefix)}
            models.append((name, build_variant(config, own) if own else config))
        return Group(tuple(models))

    def key(self, variant: Group, params: Mapping[str, Any]) -> str:
        digest = hashlib.sha256()
        for name, config in variant.models:
            digest.update(f"{name}\0{config_hash(config)}\0".encode())
        return f"{digest.hexdigest()[:12]}/{self.load}"

    def text(self, variant: Group) -> str:
        return group_text(variant)


# -- the objective -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GroupObjective(Objective):
    """`Objective` of a group: `targets` are the weighted scores (`scores`), each model's
    constraints bound its own prefixed metrics; `constraints` (the sweep's) are not read."""

    models: tuple[Member, ...] = ()
    # The [objectives] metrics the scores combine, with their directions.
    combined: tuple[tuple[str, Direction], ...] = ()

    def bounds(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for e in self.models:
            c = e.constraints
            if c.latency_budget_us is not None:
                out[f"{e.name}.{LATENCY_METRIC[c.latency_percentile]}"] = c.latency_budget_us
            if c.min_throughput is not None:
                out[f"{e.name}.throughput_infer_per_s"] = c.min_throughput
        return out

    def violations(self, metrics: Mapping[str, float]) -> dict[str, float]:
        """Per model: latency over its budget, throughput under its minimum, normalised by the
        bound (<= 0 satisfied), as `Objective.violations`."""
        out: dict[str, float] = {}
        for key, bound in self.bounds().items():
            value = metrics[key]
            over = value - bound if key.endswith("_latency_us") else bound - value
            out[key] = over / max(bound, 1e-9)
        return out


def group_objective(sweep: TuneSweep) -> GroupObjective:
    return GroupObjective(
        targets=tuple((f"{SCORE_PREFIX}{key}", "maximize") for key, _ in sweep.objectives),
        constraints=ConstraintSpec(),
        models=entries(sweep),
        combined=sweep.objectives,
    )


def scores(
    metrics: Mapping[str, float],
    reference: Mapping[str, float],
    objective: GroupObjective,
) -> dict[str, float]:
    """The weighted scores of a trial's prefixed `metrics` against the `reference` trial's (see
    the module docstring); a model with no reference value (or 0) counts 0 in the score."""
    out: dict[str, float] = {}
    total = sum(e.weight for e in objective.models)
    for key, direction in objective.combined:
        score = 0.0
        for e in objective.models:
            value, ref = metrics.get(f"{e.name}.{key}", 0.0), reference.get(f"{e.name}.{key}")
            if not ref or not value:
                continue
            score += e.weight * (value / ref if direction == "maximize" else ref / value)
        out[f"{SCORE_PREFIX}{key}"] = score / total
    return out


def reference_of(trials: Iterable[Any], keys: Iterable[str]) -> tuple[int, dict[str, float]] | None:
    """(trial number, metrics) of the reference trial among a study's frozen `trials`: the
    default configs' first complete measurement, else the first complete measurement, that has
    every one of `keys`; None when no trial was measured yet (the trial being scored is then its
    own reference)."""
    from optuna.trial import TrialState

    from perfkit.tune import records as rec

    needed = list(keys)
    found: list[tuple[bool, int, dict[str, float]]] = []
    for t in trials:
        attrs = t.user_attrs
        metrics = attrs.get(rec.A_METRICS) or {}
        if (
            t.state != TrialState.COMPLETE
            or rec.A_DUP in attrs
            or rec.A_FAIR in attrs
            or not all(k in metrics for k in needed)
        ):
            continue
        found.append((not attrs.get(rec.A_DEFAULT), t.number, dict(metrics)))
    if not found:
        return None
    _, number, metrics = min(found, key=lambda f: (f[0], f[1]))
    return number, metrics


# -- after the tune --------------------------------------------------------------------------------


def finishers(
    group: Group | None,
    write: Callable[..., output.WriteBack],
    reload_model: Callable[[str, TuneSweep], str],
) -> tuple[Callable[..., output.WriteBack], Callable[[str, TuneSweep], str]]:
    """The write-back and the reload after a tune: the given ones, or a group's."""
    if group is None:
        return write, reload_model
    return functools.partial(write_back, group), functools.partial(reload, group)


def write_back(
    group: Group, result: TuneResult, model_dir: Path, *, dry_run: bool
) -> output.WriteBack:
    """The best variant's configs written into each model's directory (or diffed); `model_dir`
    is the first model's."""
    repository = model_dir.parent
    best = output.trial(result, result.best_trial)
    if best is None or not result.best_config_pbtxt or result.best_trial == result.default_trial:
        return output.write_back(result, model_dir, dry_run=dry_run)  # it says why not
    texts = model_texts(result.best_config_pbtxt, group.names[0])
    done = [
        (name, output.write_back(
            replace(result, best_config_pbtxt=texts[name]), repository / name, dry_run=dry_run
        ))
        for name in group.names
    ]  # fmt: skip
    written = [wb for _, wb in done if wb.written_to is not None]
    return output.WriteBack(
        diff="".join(wb.diff for _, wb in done),
        written_to=written[0].written_to if written else None,
        backup=None,  # each model's is in the reason
        reason="; ".join(
            f"{name}: {wb.reason}" + (f" (original kept as {wb.backup})" if wb.backup else "")
            for name, wb in done
        ),
    )


def reload(group: Group, url: str, sweep: TuneSweep) -> str:
    """Leave the server serving every model's config on disk."""
    for name in group.names:
        control = ControlClient(url, sweep.protocol, model=name, network_timeout_s=120.0)
        try:
            control.reload_from_disk()
        except PerfkitError as exc:  # the results are written: report it, never lose them
            return f"the server could not reload {name!r} from disk: {exc}"
        finally:
            control.close()
    return f"the server reloaded the configs on disk ({', '.join(group.names)})"
