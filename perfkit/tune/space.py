"""Search space: sweep `SpaceSpec`/`LoadSettings` <-> Optuna suggestions <-> `ModelConfig` variants.

Pure: no I/O. Numeric lists (counts, sizes, delays, load levels) are searched as an *ordered* index
(`<dim>_idx`, an int distribution) so that TPE can learn "bigger is better"; the rest (instance kind,
dynamic batching on/off, preferred batch-size sets, the model format of `perfkit.formats`) are
categorical. `Params` always carries the
decoded values, e.g. {"max_batch_size": 16, "preferred_batch_sizes": (4, 8)}.

Knobs (`perfkit.tune.knobs`): backend parameters (`param:<key>`), config fields by proto path
(`field:<path>`), `response_cache` and `accelerator` dimensions, applied after the others; numeric
ones are ordered, the rest categorical. `split_dim` keeps their names whole behind an ensemble's
"<model>." prefix although they contain dots.

Instances: a variant keeps the base config's instance kind and `gpus` unless the point names a
kind (KIND_AUTO stays KIND_AUTO; a config without instance_group gets a count, no kind);
`instance_count` is every group's count, per GPU for KIND_GPU (`with_instances`, `check_instances`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from perfkit import formats
from perfkit.errors import ConfigError
from perfkit.model_repo import InvalidModelConfig
from perfkit.model_repo.config import (
    ModelConfig,
    config_hash,
    with_dynamic_batching,
    with_instances,
    with_max_batch_size,
    without_dynamic_batching,
)
from perfkit.report.labels import describe_load as describe_load  # the tuner's points, in words
from perfkit.sweepfile import LoadSettings, SpaceSpec
from perfkit.tune import knobs

Params = dict[str, Any]

# Config dimensions in the order they are applied; load dimensions follow.
CONFIG_DIMS = (
    "format",  # perfkit.formats: the model file and backend, applied first
    "instance_count",
    "instance_kind",
    "max_batch_size",
    "dynamic_batching",
    "preferred_batch_sizes",
    "max_queue_delay_us",
)
LOAD_DIMS = ("concurrency", "request_rate", "batch_size")
_CATEGORICAL = {"instance_kind", "dynamic_batching", "preferred_batch_sizes", "format"}
_BATCHER_DIMS = ("preferred_batch_sizes", "max_queue_delay_us")
# The largest space `nearest_unmeasured` walks point by point.
MAX_WALK = 200_000


class Suggester(Protocol):
    """The part of `optuna.Trial` the space uses (so replays and tests can drive it too)."""

    def suggest_int(self, name: str, low: int, high: int) -> int: ...

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...


def encode_sizes(sizes: tuple[int, ...]) -> str:
    """Preferred batch sizes as an Optuna categorical value: "" for none, "4,8" otherwise."""
    return ",".join(str(s) for s in sizes)


def decode_sizes(text: str) -> tuple[int, ...]:
    return tuple(int(s) for s in text.split(",") if s)


def split_dim(name: str) -> tuple[str, str]:
    """(prefix, dimension) of a dimension name: a composing model's dimension of an ensemble is
    named `<model>.<dimension>` (prefix "<model>."), a model's own has prefix "". A knob's name
    (`param:<key>`, `field:<path>`) is kept whole: its key or path may contain dots (a model
    whose name contains ".param:" or ".field:" would confuse it)."""
    for mark in (knobs.PARAM, knobs.FIELD):
        if name.startswith(mark):
            return "", name
        at = name.find("." + mark)
        if at >= 0:
            return name[: at + 1], name[at + 1 :]
    model, dot, dim = name.rpartition(".")
    return model + dot, dim


def is_config_dim(name: str) -> bool:
    """Whether a dimension (without a prefix) changes the config (else it is the client load)."""
    return name in CONFIG_DIMS or knobs.is_knob(name)


@dataclass(frozen=True, slots=True)
class Dim:
    name: str
    values: tuple[Any, ...]

    @property
    def categorical(self) -> bool:
        dim = split_dim(self.name)[1]
        if knobs.is_knob(dim):
            return not knobs.ordered(dim)
        return dim in _CATEGORICAL

    @property
    def param_name(self) -> str:
        return self.name if self.categorical else f"{self.name}_idx"

    def choices(self) -> list[Any]:
        """The Optuna values of this dimension (indexes for ordered ones)."""
        if not self.categorical:
            return list(range(len(self.values)))
        if split_dim(self.name)[1] == "preferred_batch_sizes":
            return [encode_sizes(v) for v in self.values]
        return [self.encode(v) for v in self.values]

    def decode(self, raw: Any) -> Any:
        if not self.categorical:
            return self.values[int(raw)]
        if split_dim(self.name)[1] == "preferred_batch_sizes":
            return decode_sizes(str(raw))
        return knobs.decode(split_dim(self.name)[1], raw)

    def encode(self, value: Any) -> Any:
        """The Optuna value of a decoded `value` (the inverse of `decode`)."""
        if not self.categorical:
            return self.values.index(value)
        if split_dim(self.name)[1] == "preferred_batch_sizes":
            return encode_sizes(tuple(value))
        return knobs.encode(split_dim(self.name)[1], value)

    def suggest(self, trial: Suggester) -> Any:
        if self.categorical:
            return self.decode(trial.suggest_categorical(self.param_name, self.choices()))
        return self.decode(trial.suggest_int(self.param_name, 0, len(self.values) - 1))


@dataclass(frozen=True, slots=True)
class SearchSpace:
    """The dimensions actually searched (more than one value) and the fixed ones (one value)."""

    dims: tuple[Dim, ...]
    fixed: Mapping[str, Any]

    @classmethod
    def from_specs(cls, space: SpaceSpec, load: LoadSettings) -> SearchSpace:
        values: dict[str, tuple[Any, ...]] = {
            "instance_count": space.instance_count,
            "instance_kind": space.instance_kind,
            "max_batch_size": space.max_batch_size,
            "dynamic_batching": space.dynamic_batching,
            "preferred_batch_sizes": space.preferred_batch_sizes,
            "max_queue_delay_us": space.max_queue_delay_us,
            **knobs.knob_values(space),
            "batch_size": load.batch_size,
        }
        values["format"] = formats.check_resolved(space.formats)
        if load.mode == "concurrency":
            values["concurrency"] = load.concurrency
        else:
            values["request_rate"] = load.request_rate
        dims = tuple(
            Dim(name, values[name])
            for name in (*CONFIG_DIMS, *knobs.knob_values(space), *LOAD_DIMS)
            if len(values.get(name, ())) > 1
        )
        fixed = {name: vals[0] for name, vals in values.items() if len(vals) == 1}
        return cls(dims=dims, fixed=fixed)

    def size(self) -> int:
        n = 1
        for d in self.dims:
            n *= len(d.values)
        return n

    def suggest(self, trial: Suggester, *, conditional: bool = True) -> Params:
        """Ask `trial` for one point. With `conditional`, batcher fields are only asked when dynamic
        batching is on (fewer duplicate variants for TPE); grid search asks every dimension."""
        params: Params = dict(self.fixed)
        for dim in self.dims:
            if conditional and _batcher_off(params, dim.name):
                continue
            params[dim.name] = dim.suggest(trial)
        return params

    def grid(self) -> dict[str, list[Any]]:
        """Optuna GridSampler search space (param name -> choices)."""
        return {d.param_name: d.choices() for d in self.dims}

    def points(self) -> Iterator[Params]:
        """Every point of the grid, decoded, in grid order."""
        for combo in itertools.product(*(d.values for d in self.dims)):
            params: Params = dict(self.fixed)
            params.update({d.name: v for d, v in zip(self.dims, combo, strict=True)})
            yield params

    def point_key(self, params: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
        """What identifies a point of the space: its searched values, without the batcher's when
        dynamic batching is off (they change nothing then)."""
        return tuple(
            (d.name, _hashable(params[d.name]))
            for d in self.dims
            if d.name in params and not _batcher_off(params, d.name)
        )

    def optuna_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The Optuna parameter values of a point (for `Study.enqueue_trial`)."""
        key = dict(self.point_key(params))
        return {d.param_name: d.encode(key[d.name]) for d in self.dims if d.name in key}

    def nearest_unmeasured(
        self,
        params: Mapping[str, Any],
        measured: set[tuple[tuple[str, Any], ...]],
        pick: Callable[[list[Params]], Params],
    ) -> Params | None:
        """The points closest to `params` that are not in `measured` (keys from `point_key`); `pick`
        chooses among equally close ones. Distance: index steps on ordered dimensions, 1 for a
        different categorical value. None when every point is measured or the space is too large
        to walk (more than `MAX_WALK` points)."""
        if self.size() > MAX_WALK:
            return None
        here = dict(self.point_key(params))
        best: list[Params] = []
        best_d = -1
        seen: set[tuple[tuple[str, Any], ...]] = set()
        for point in self.points():
            key = self.point_key(point)
            if key in measured or key in seen:
                continue
            seen.add(key)
            values = dict(key)
            d = 0
            for dim in self.dims:
                a, b = here.get(dim.name), values.get(dim.name)
                if a is None or b is None:
                    d += 0 if a is b else 1
                elif dim.categorical:
                    d += 0 if a == b else 1
                else:
                    d += abs(dim.values.index(a) - dim.values.index(b))
            if best_d < 0 or d < best_d:
                best, best_d = [point], d
            elif d == best_d:
                best.append(point)
        return pick(best) if best else None

    def baseline_load(self, load: LoadSettings) -> Params:
        """The load levels the default config is measured at."""
        params: Params = {}
        for name in LOAD_DIMS:
            if name in load.baseline:
                raw = load.baseline[name]
                params[name] = raw if name == "request_rate" else int(raw)
            elif name in self.fixed:
                params[name] = self.fixed[name]
            else:
                for d in self.dims:
                    if d.name == name:
                        params[name] = d.values[0]
        return params


def _batcher_off(params: Mapping[str, Any], name: str) -> bool:
    """Whether `name` is a batcher dimension of a model whose dynamic batching `params` turn off
    (then its value changes nothing)."""
    prefix, dim = split_dim(name)
    batcher = dim in _BATCHER_DIMS or knobs.is_batcher_field(dim)
    return batcher and params.get(f"{prefix}dynamic_batching") is False


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list | tuple) else value


def load_params(params: Mapping[str, Any]) -> Params:
    """The client-load part of a point."""
    return {k: params[k] for k in LOAD_DIMS if k in params}


def check_instances(base: ModelConfig, space: SpaceSpec) -> None:
    """Refuse, before any trial, an instance dimension or a knob the model's config cannot take.

    `instance_count` sets the count of every instance group (per listed GPU for KIND_GPU, as
    Triton places them), kinds and `gpus` kept; `instance_kind` needs a model with at most one
    instance group (it would make every group one kind). Knobs: `knobs.check_knobs`."""
    knobs.check_knobs(base, space)
    groups = len(base.instance_group)
    if space.instance_kind and groups > 1:
        raise ConfigError(
            f"space.instance_kind: the model's config has {groups} instance groups and "
            "instance_kind would give them all one kind. Remove instance_kind from [space] (the "
            "count applies to every group, kinds kept), or give the model one instance group."
        )


def build_variant(base: ModelConfig, params: Mapping[str, Any]) -> ModelConfig:
    """The model's config with the point's config fields applied; name and every other field kept.

    Raises ConfigError for a value the editors refuse (e.g. an unknown instance kind). A variant
    that is well-formed but that Triton would refuse (preferred size > max_batch_size) is returned
    as is: validating it is the caller's job, so the trial can fail with the reason.
    """
    try:
        return _apply(base, params)
    except InvalidModelConfig as exc:  # the pure editors' own error, perfkit's ConfigError here
        raise ConfigError(str(exc)) from exc


def _apply(base: ModelConfig, params: Mapping[str, Any]) -> ModelConfig:
    config = formats.with_format(base, params.get("format"))
    if "instance_count" in params or "instance_kind" in params:
        # None keeps the base's own: its kind (KIND_AUTO too) and `gpus` survive a count change.
        count, kind = params.get("instance_count"), params.get("instance_kind")
        config = with_instances(
            config, None if count is None else int(count), None if kind is None else str(kind)
        )
    if "max_batch_size" in params:
        config = with_max_batch_size(config, int(params["max_batch_size"]))
    dynamic = params.get("dynamic_batching")
    batcher_given = any(k in params for k in _BATCHER_DIMS)
    if dynamic is False:
        config = without_dynamic_batching(config)
    elif dynamic is True or batcher_given:
        current = base.dynamic_batching
        sizes = params.get("preferred_batch_sizes", tuple(current.preferred_batch_size))
        delay = params.get("max_queue_delay_us", int(current.max_queue_delay_microseconds))
        config = with_dynamic_batching(config, tuple(sizes), int(delay))
    return knobs.apply_knobs(config, params)


def variant_key(config: ModelConfig, params: Mapping[str, Any]) -> str:
    """Identity of a measurement: the config's content hash plus the client load it ran under."""
    load = load_params(params)
    suffix = ",".join(f"{k}={load[k]}" for k in sorted(load))
    return f"{config_hash(config)}/{suffix}"


def describe(params: Mapping[str, Any]) -> str:
    """Short human description of a point, e.g. "2xKIND_CPU mbs=16 dyn[4,8]@100us intra=2 graph=1
    cache c=8" (knobs: `knobs.describe_knobs`); an
    ensemble's composing models each in brackets: "pre[2xKIND_CPU] post[no-dyn] c=8"."""
    models: dict[str, dict[str, Any]] = {}
    for name, value in params.items():
        prefix, dim = split_dim(name)
        models.setdefault(prefix, {})[dim] = value
    own = _describe_one(models.pop("", {}))
    parts = [f"{prefix[:-1]}[{_describe_one(sub)}]" for prefix, sub in sorted(models.items())]
    return " ".join([*parts, own] if own else parts)


def _describe_one(params: Mapping[str, Any]) -> str:
    parts: list[str] = [str(params["format"])] if "format" in params else []
    if "instance_count" in params or "instance_kind" in params:
        parts.append(
            f"{params.get('instance_count', '')}x{params.get('instance_kind', '')}".strip("x")
        )
    if "max_batch_size" in params:
        parts.append(f"mbs={params['max_batch_size']}")
    if params.get("dynamic_batching") is False:
        parts.append("no-dyn")
    elif "preferred_batch_sizes" in params or "max_queue_delay_us" in params:
        sizes = ",".join(str(s) for s in params.get("preferred_batch_sizes", ()))
        parts.append(f"dyn[{sizes}]@{params.get('max_queue_delay_us', 0)}us")
    elif params.get("dynamic_batching") is True:
        parts.append("dyn")
    parts.extend(knobs.describe_knobs(params))
    for key, short in (("concurrency", "c"), ("request_rate", "r"), ("batch_size", "b")):
        if key in params:
            parts.append(f"{short}={params[key]}")
    return " ".join(parts)
