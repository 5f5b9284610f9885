"""Search space -> Optuna -> ModelConfig variants: name and untouched fields kept, keys stable."""

from __future__ import annotations

import optuna
import pytest
from google.protobuf import text_format

from perfkit.model_repo.config import config_hash, parse_config
from perfkit.sweepfile import LoadSettings, SpaceSpec
from perfkit.tune.samplers import AskTellGridSampler
from perfkit.tune.space import SearchSpace, build_variant, variant_key

BASE = """
name: "mymodel"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
dynamic_batching { preserve_ordering: true }
parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
model_warmup [ { name: "w" batch_size: 1 inputs { key: "INPUT0" value: { data_type: TYPE_FP32 dims: [ 16 ] zero_data: true } } } ]
"""


def test_variant_keeps_name_and_untouched_fields() -> None:
    base = parse_config(BASE)
    params = {
        "instance_count": 3,
        "max_batch_size": 32,
        "dynamic_batching": True,
        "preferred_batch_sizes": (4, 16),
        "max_queue_delay_us": 250,
        "concurrency": 8,
    }
    v = build_variant(base, params)
    assert v.name == "mymodel"
    assert v.max_batch_size == 32
    assert v.instance_group[0].count == 3
    assert list(v.dynamic_batching.preferred_batch_size) == [4, 16]
    assert v.dynamic_batching.max_queue_delay_microseconds == 250
    # Fields the search does not touch survive, including other batcher fields.
    assert v.dynamic_batching.preserve_ordering is True
    assert v.parameters["intra_op_thread_count"].string_value == "1"
    assert len(v.model_warmup) == 1
    assert list(v.input) == list(base.input)
    # The base is not modified.
    assert base.max_batch_size == 8
    assert text_format.MessageToString(base) == text_format.MessageToString(parse_config(BASE))


def test_dynamic_batching_off_and_variant_keys() -> None:
    base = parse_config(BASE)
    off = build_variant(base, {"dynamic_batching": False, "concurrency": 1})
    assert not off.HasField("dynamic_batching")
    same_config_other_load = variant_key(off, {"dynamic_batching": False, "concurrency": 4})
    assert variant_key(off, {"concurrency": 1}) != same_config_other_load
    assert variant_key(off, {"concurrency": 1}).startswith(config_hash(off))
    assert variant_key(build_variant(base, {}), {}) == variant_key(base, {})


def _space() -> SearchSpace:
    return SearchSpace.from_specs(
        SpaceSpec(
            instance_count=(1, 2),
            max_batch_size=(8, 16, 32),
            dynamic_batching=(True, False),
            preferred_batch_sizes=((), (4, 8)),
            max_queue_delay_us=(0,),
        ),
        LoadSettings(concurrency=(1, 4), batch_size=(1,)),
    )


def test_space_grid_and_suggest() -> None:
    space = _space()
    assert space.size() == 2 * 3 * 2 * 2 * 2
    assert len(list(space.points())) == space.size()
    assert space.fixed["max_queue_delay_us"] == 0
    study = optuna.create_study(sampler=AskTellGridSampler(space.grid(), seed=0))
    seen = set()
    for _ in range(space.size()):
        trial = study.ask()
        params = space.suggest(trial, conditional=False)
        assert params["max_batch_size"] in (8, 16, 32)
        assert params["preferred_batch_sizes"] in ((), (4, 8))
        seen.add(tuple(sorted((k, str(v)) for k, v in params.items())))
        study.tell(trial, 1.0)
    assert len(seen) == space.size()


def test_conditional_suggest_skips_batcher_dims_when_off() -> None:
    space = _space()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(20):
        trial = study.ask()
        params = space.suggest(trial)
        if params["dynamic_batching"] is False:
            assert "preferred_batch_sizes" not in params
        study.tell(trial, 1.0)


def test_baseline_load() -> None:
    space = _space()
    assert space.baseline_load(LoadSettings(concurrency=(1, 4))) == {
        "concurrency": 1,
        "batch_size": 1,
    }
    load = LoadSettings(concurrency=(1, 4), baseline={"concurrency": 4.0})
    assert space.baseline_load(load)["concurrency"] == 4


@pytest.mark.parametrize("kind", ["KIND_GPU", "KIND_CPU"])
def test_instance_kind(kind: str) -> None:
    v = build_variant(parse_config(BASE), {"instance_kind": kind})
    assert v.instance_group[0].count == 1
    assert text_format.MessageToString(v).count(kind) == 1


def test_nearest_unmeasured_point() -> None:
    space = SearchSpace.from_specs(
        SpaceSpec(instance_count=(1, 2), max_batch_size=(8, 16, 32)),
        LoadSettings(concurrency=(1, 4, 16)),
    )
    first = lambda ties: ties[0]  # noqa: E731
    here = {"instance_count": 1, "max_batch_size": 16, "concurrency": 4}
    measured = {space.point_key(here)}
    near = space.nearest_unmeasured(here, measured, first)
    assert near is not None
    # One index step away on one ordered dimension, or the other instance count.
    steps = sum(
        abs(d.values.index(near[d.name]) - d.values.index(here[d.name])) for d in space.dims
    )
    assert steps == 1
    # Every point measured but one: that one, however far.
    last = {"instance_count": 2, "max_batch_size": 32, "concurrency": 16}
    everything = {space.point_key(p) for p in space.points()}
    only = space.nearest_unmeasured(here, everything - {space.point_key(last)}, first)
    assert only is not None
    assert space.point_key(only) == space.point_key(last)
    assert space.nearest_unmeasured(here, everything, first) is None
    # Optuna's values for that point: indexes of the ordered dimensions.
    assert space.optuna_params(last) == {
        "instance_count_idx": 1,
        "max_batch_size_idx": 2,
        "concurrency_idx": 2,
    }


def test_point_key_ignores_batcher_fields_when_batching_is_off() -> None:
    space = _space()
    off = {"dynamic_batching": False, "max_queue_delay_us": 100, "preferred_batch_sizes": (4,)}
    assert space.point_key(off) == space.point_key({"dynamic_batching": False})
    on = {**off, "dynamic_batching": True}
    assert space.point_key(on) != space.point_key({"dynamic_batching": True})
