"""What perf_analyzer's ModelParser learns from the model configs, and the composing models'
server statistics.

- A sequence model: `sequence_batching` in its config, or (an ensemble) in a composing model's.
- A decoupled model: `model_transaction_policy { decoupled: true }`.
- The response cache: `response_cache { enable: true }` in the model's or any composing model's
  config (perf_analyzer then prints and writes the cache figures).
- Composing models: an ensemble's steps (`ensemble_scheduling.step[].model_name` /
  `model_version`, -1 = unspecified), recursively through nested ensembles, and a BLS model's
  --bls-composing-models; their statistics are read from the server's all-models statistics and
  summed over versions, the version being the one given or, unspecified, the highest whose
  statistics moved in the window (perf_analyzer's DetermineStatsModelVersion).

Snapshots (`snapshot`) are `perfkit.control.values.sum_model_stats` dicts of the model, with a
"composing" key: {"name|version": snapshot} (recursively for nested ensembles).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from perfkit.control.values import sum_model_stats

ModelId = tuple[str, str]
# config_of(name, version) -> the config the server serves for that model.
ConfigOf = Callable[[str, str], Mapping[str, Any]]

_MAX_DEPTH = 8


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelShape:
    sequence: bool = False
    decoupled: bool = False
    cache_enabled: bool = False
    # Parent model name -> its composing models (name, version or ""), sorted as perf_analyzer's
    # std::set orders them.
    composing: dict[str, tuple[ModelId, ...]] = field(default_factory=dict)


def _cache_on(config: Mapping[str, Any]) -> bool:
    return bool((config.get("response_cache") or {}).get("enable", False))


def _step_version(step: Mapping[str, Any]) -> str:
    v = int(step.get("model_version", -1) or -1)
    return "" if v == -1 else str(v)


def model_shape(
    name: str,
    config: Mapping[str, Any],
    config_of: ConfigOf,
    bls_composing: Sequence[ModelId] = (),
) -> ModelShape:
    """The model's kind and composing models, from its config and its composing models' configs."""
    composing: dict[str, set[ModelId]] = {}
    flags = {"sequence": False, "cache": _cache_on(config)}
    seen: dict[ModelId, Mapping[str, Any]] = {}

    def config_of_once(name: str, version: str) -> Mapping[str, Any]:
        if (name, version) not in seen:
            seen[(name, version)] = config_of(name, version)
        return seen[(name, version)]

    def walk(parent: str, cfg: Mapping[str, Any], depth: int) -> None:
        if cfg.get("platform") != "ensemble" or depth > _MAX_DEPTH:
            return
        for step in (cfg.get("ensemble_scheduling") or {}).get("step", []) or []:
            mid = (str(step.get("model_name", "")), _step_version(step))
            composing.setdefault(parent, set()).add(mid)
            walk(mid[0], config_of_once(*mid), depth + 1)

    walk(name, config, 0)
    for mid in bls_composing:
        composing.setdefault(name, set()).add(mid)
    for ids in composing.values():
        for mid in ids:
            sub = config_of_once(*mid)
            flags["sequence"] |= "sequence_batching" in sub
            flags["cache"] |= _cache_on(sub)
    sequence = flags["sequence"] if composing else "sequence_batching" in config
    policy = config.get("model_transaction_policy") or {}
    return ModelShape(
        sequence=sequence,
        decoupled=bool(policy.get("decoupled", False)),
        cache_enabled=flags["cache"],
        composing={k: tuple(sorted(v)) for k, v in composing.items()},
    )


def snapshot(
    name: str, version: str, raw: Sequence[Mapping[str, Any]], shape: ModelShape
) -> dict[str, Any]:
    """The model's summed statistics with its composing models' under "composing" (raw: every
    model's ModelStatistics entries)."""
    return _snap(name, version, raw, shape.composing, 0)


def _snap(
    name: str,
    version: str,
    raw: Sequence[Mapping[str, Any]],
    composing: Mapping[str, Sequence[ModelId]],
    depth: int,
) -> dict[str, Any]:
    mine = [
        m for m in raw
        if m.get("name") == name and (not version or str(m.get("version", "")) == version)
    ]  # fmt: skip
    out = sum_model_stats(mine)
    # Per version, to pick the one that moved when the version is unspecified.
    out["versions"] = {str(m.get("version", "")): sum_model_stats([m]) for m in mine}
    if depth < _MAX_DEPTH and composing.get(name):
        out["composing"] = {
            f"{n}|{v}": _snap(n, v, raw, composing, depth + 1) for n, v in composing[name]
        }
    return out


def stats_version(before: Mapping[str, Any], after: Mapping[str, Any], given: str) -> str:
    """The version whose statistics a composing model's breakdown shows: the given one, or the
    highest whose queue count grew between the snapshots ("" when none did)."""
    if given:
        return given
    moved = [
        v for v, st in (after.get("versions") or {}).items()
        if int(st["queue_count"]) > int(((before.get("versions") or {}).get(v) or {}).get("queue_count", 0))
    ]  # fmt: skip
    return max(moved, key=lambda v: int(v) if v.isdigit() else -1) if moved else ""
