"""Typed knobs (issue 14): [space.parameters], [space.fields], response_cache and accelerators,
parsed with their refusals, searched as dimensions, applied to variants by protobuf reflection."""

from __future__ import annotations

from typing import Any

import optuna
import pytest

from perfkit.errors import ConfigError
from perfkit.model_repo.config import config_hash, parse_config
from perfkit.sweepfile import LoadSettings, SpaceSpec, parse_sweep
from perfkit.tune.ensemble import Pipeline, PipelineVariants, pipeline_space
from perfkit.tune.knobs import check_knobs, machine_knobs, set_field
from perfkit.tune.space import SearchSpace, build_variant, check_instances, describe, split_dim

BASE = """
name: "m"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] } ]
instance_group [ { count: 1 kind: KIND_CPU }, { count: 1 kind: KIND_CPU } ]
optimization { execution_accelerators { cpu_execution_accelerator [ { name: "openvino" } ] } }
"""
TORCH = 'name: "t"\nbackend: "pytorch"\ninstance_group [ { kind: KIND_CPU } ]\n'


def space_of(text: str, *, url: bool = True) -> SpaceSpec:
    server = '\n[server]\nurl = "localhost:8001"\n' if url else ""
    return parse_sweep(f'[model]\nname = "m"\n[space]\n{text}{server}', "s.toml").space


def test_parameters_and_fields_parse_to_typed_values() -> None:
    space = space_of(
        'response_cache = [true, false]\naccelerators = ["none", "tensorrt:FP16"]\n'
        "[space.parameters]\n"
        'intra_op_thread_count = [1, "2", 4]\nexecution_mode = [0, 1]\nenable_mem_arena = [true]\n'
        'my_key = ["a", 3]\n'
        "[space.fields]\n"
        '"optimization.graph.level" = [-1, 1]\n'
        '"dynamic_batching.max_queue_delay_microseconds" = {min = 0, max = 1000, step = 250}\n'
        '"instance_group[KIND_CPU].count" = {min = 1, max = 6, scale = "log2"}\n'
        '"dynamic_batching.preferred_batch_size" = [[4], [4, 8]]\n'
        '"dynamic_batching.preserve_ordering" = true\n'
    )
    assert space.parameters == (
        ("intra_op_thread_count", ("1", "2", "4")),
        ("execution_mode", ("0", "1")),
        ("enable_mem_arena", ("true",)),
        ("my_key", ("a", "3")),  # unknown to the catalogue: a string, as written
    )
    assert dict(space.fields) == {
        "optimization.graph.level": (-1, 1),
        "dynamic_batching.max_queue_delay_microseconds": (0, 250, 500, 750, 1000),
        "instance_group[KIND_CPU].count": (1, 2, 4),
        "dynamic_batching.preferred_batch_size": ((4,), (4, 8)),
        "dynamic_batching.preserve_ordering": (True,),
    }
    assert space.response_cache == (True, False)
    assert space.accelerators == ("none", "tensorrt:FP16")


@pytest.mark.parametrize(
    ("text", "where", "why"),
    [
        (
            "[space.parameters]\nexecution_mode = [0, 2]\n",
            "space.parameters.execution_mode",
            "2 is not allowed; allowed: 0 (sequential) or 1 (parallel)",
        ),
        (
            "[space.parameters]\nintra_op_thread_count = [-1]\n",
            "space.parameters.intra_op_thread_count",
            "an integer >= 0",
        ),
        ("[space.parameters]\nINFERENCE_MODE = ['maybe']\n", "INFERENCE_MODE", "true or false"),
        ("[space.parameters]\nk = [1.5]\n", "space.parameters.k", "strings or integers"),
        ("[space.parameters]\nexecution_mode = [0, 0]\n", "execution_mode", "twice"),
        (
            '[space.fields]\n"optimization.graph.level" = [7]\n',
            'space.fields."optimization.graph.level"',
            "7 is not allowed; allowed: -1 (basic), 0 (all",
        ),
        (
            '[space.fields]\n"optimization.graph.lvl" = [1]\n',
            'space.fields."optimization.graph.lvl"',
            "Graph has no field 'lvl'",
        ),
        (
            '[space.fields]\n"dynamic_batching.max_queue_delay_microseconds" = ["1ms"]\n',
            "max_queue_delay_microseconds",
            "'1ms' is not an integer: dynamic_batching.max_queue_delay_microseconds has type uint64 "
            "(ModelDynamicBatching.max_queue_delay_microseconds)",
        ),
        (
            '[space.fields]\n"max_batch_size" = [3000000000]\n',
            "max_batch_size",
            "out of range: max_batch_size has type int32",
        ),
        ('[space.fields]\n"instance_group.count" = [1]\n', "instance_group", "[0] (an index)"),
        ('[space.fields]\n"instance_group[KIND_TPU].count" = [1]\n', "KIND_TPU", "no such kind"),
        ('[space.fields]\n"optimization.graph" = [1]\n', "optimization.graph", "a message"),
        ('[space.fields]\n"parameters" = [1]\n', "parameters", "[space.parameters]"),
        ('[space.fields]\n"name" = ["x"]\n', "name", "directory"),
        (
            'instance_count = [1, 2]\n[space.fields]\n"instance_group[0].count" = [1]\n',
            "instance_group[0].count",
            "space.instance_count",
        ),
        ('[space.fields]\n"max_batch_size" = {min = 1, max = 100000}\n', "max_batch_size", "256"),
        ('[space.fields]\n"max_batch_size" = {min = 0, max = 8, scale = "log2"}\n', "", ">= 1"),
        ('accelerators = ["tensorrt:FP8"]\n', "space.accelerators", "tensorrt:FP16"),
        ("response_cache = [true]\n", "space.response_cache", "--cache-config"),
        ("parameters = 1\n", "space.parameters", "must be a table"),
    ],
)
def test_bad_knobs_are_refused_with_file_key_and_what_is_allowed(
    text: str, where: str, why: str
) -> None:
    with pytest.raises(ConfigError) as info:
        space_of(text, url=False)
    message = str(info.value)
    assert message.startswith("s.toml:space"), message
    assert where in message
    assert why in message


def test_response_cache_is_accepted_with_a_cache_or_a_url() -> None:
    head = '[model]\nname = "m"\n[space]\nresponse_cache = [true, false]\n'
    args = '[server]\nargs = ["--cache-config=local,size=1048576"]\n'
    assert parse_sweep(head + args, "s.toml").space.response_cache == (True, False)
    url = '[server]\nurl = "localhost:8001"\n'
    assert parse_sweep(head + url, "s.toml").space.response_cache == (True, False)


def test_dimensions_ordered_for_numbers_categorical_for_the_rest() -> None:
    space = space_of(
        "[space.parameters]\nintra_op_thread_count = [1, 2]\nexecution_mode = [0, 1]\n"
        'other = ["1", "2"]\n'
        '[space.fields]\n"optimization.graph.level" = [-1, 1]\n'
        '"dynamic_batching.max_queue_delay_microseconds" = [0, 500]\n'
        '"dynamic_batching.preferred_batch_size" = [[4], [8]]\n'
    )
    dims = {d.name: d for d in SearchSpace.from_specs(space, LoadSettings()).dims}
    ordered = {name for name, d in dims.items() if not d.categorical}
    assert ordered == {
        "param:intra_op_thread_count",
        "field:dynamic_batching.max_queue_delay_microseconds",
    }
    assert dims["param:intra_op_thread_count"].param_name == "param:intra_op_thread_count_idx"
    # A list value is a categorical choice Optuna can store, and decodes back to the list.
    sizes = dims["field:dynamic_batching.preferred_batch_size"]
    assert sizes.choices() == ["[4]", "[8]"]
    assert sizes.decode("[8]") == (8,)
    assert sizes.encode([8]) == "[8]"  # as a stored (JSON) point gives it back


def test_variants_apply_the_knobs_and_hash_per_value() -> None:
    base = parse_config(BASE)
    space = space_of(
        'response_cache = [true, false]\naccelerators = ["none", "openvino"]\n'
        "[space.parameters]\nintra_op_thread_count = [1, 2]\n"
        '[space.fields]\n"optimization.graph.level" = [-1, 1]\n'
        '"instance_group[KIND_CPU].count" = [1, 3]\n'
        '"dynamic_batching.preferred_batch_size" = [[4], [4, 8]]\n'
    )
    search = SearchSpace.from_specs(space, LoadSettings())
    points = list(search.points())
    assert len(points) == 2**6 == search.size()
    hashes = {config_hash(build_variant(base, p)) for p in points}
    assert len(hashes) == len(points)  # every value changes the config
    point: dict[str, Any] = {
        "param:intra_op_thread_count": "2",
        "field:optimization.graph.level": 1,
        "field:instance_group[KIND_CPU].count": 3,
        "field:dynamic_batching.preferred_batch_size": (4, 8),
        "response_cache": True,
        "accelerator": "none",
    }
    v = build_variant(base, point)
    assert v.parameters["intra_op_thread_count"].string_value == "2"
    assert v.optimization.graph.level == 1
    assert [g.count for g in v.instance_group] == [3, 3]  # every KIND_CPU group
    assert list(v.dynamic_batching.preferred_batch_size) == [4, 8]
    assert v.response_cache.enable
    assert not v.optimization.HasField("execution_accelerators")
    assert describe(point) == "intra=2 graph=1 instance_group[KIND_CPU].count=3 " + (
        "dynamic_batching.preferred_batch_size=4,8 cache accel=none"
    )
    assert (
        build_variant(base, {**point, "response_cache": False}).HasField("response_cache") is False
    )
    assert base.optimization.graph.level == 0  # the base is not modified
    # With dynamic batching off, a dynamic_batching field changes nothing and is not set.
    off = build_variant(base, {**point, "dynamic_batching": False})
    assert not off.HasField("dynamic_batching")
    assert search.point_key({**point, "dynamic_batching": False}) == search.point_key(
        {**point, "dynamic_batching": False, "field:dynamic_batching.preferred_batch_size": (4,)}
    )


def test_accelerators_keep_their_parameters_and_need_gpu_instances() -> None:
    base = parse_config(BASE.replace("KIND_CPU", "KIND_GPU"))
    base.optimization.execution_accelerators.gpu_execution_accelerator.add(
        name="tensorrt", parameters={"max_workspace_size_bytes": "1024"}
    )
    v = build_variant(base, {"accelerator": "tensorrt:FP16"})
    (trt,) = v.optimization.execution_accelerators.gpu_execution_accelerator
    assert dict(trt.parameters) == {"max_workspace_size_bytes": "1024", "precision_mode": "FP16"}
    assert not v.optimization.execution_accelerators.cpu_execution_accelerator
    ov = build_variant(base, {"accelerator": "openvino"})
    assert [a.name for a in ov.optimization.execution_accelerators.cpu_execution_accelerator] == [
        "openvino"
    ]
    cpu = parse_config(BASE)
    with pytest.raises(ConfigError, match="KIND_GPU instances only"):
        build_variant(cpu, {"accelerator": "cuda"})  # a variant: its trial fails with this
    with pytest.raises(ConfigError, match=r"space\.accelerators: 'tensorrt'.*instance_kind"):
        check_instances(cpu, SpaceSpec(accelerators=("none", "tensorrt")))
    check_knobs(cpu, SpaceSpec(accelerators=("none", "tensorrt"), instance_kind=("KIND_GPU",)))


def test_the_model_config_decides_what_fits_before_any_trial() -> None:
    onnx, torch = parse_config(BASE), parse_config(TORCH)
    with pytest.raises(
        ConfigError, match="Triton's pytorch backend; model 'm' runs on onnxruntime"
    ):
        check_knobs(onnx, SpaceSpec(parameters=(("INTRA_OP_THREAD_COUNT", ("2",)),)))
    with pytest.raises(ConfigError, match="whole server process"):
        check_knobs(torch, SpaceSpec(parameters=(("INTRA_OP_THREAD_COUNT", ("1", "2")),)))
    check_knobs(torch, SpaceSpec(parameters=(("INTRA_OP_THREAD_COUNT", ("2",)),)))  # pinned: fine
    with pytest.raises(ConfigError, match="ONNX Runtime's execution accelerators only"):
        check_knobs(torch, SpaceSpec(accelerators=("none", "openvino")))
    with pytest.raises(ConfigError, match="onnxruntime and tensorflow backends only"):
        check_knobs(torch, SpaceSpec(fields=(("optimization.graph.level", (1,)),)))
    with pytest.raises(ConfigError, match=r"has 2 instance_group entries; index from 0 to 1"):
        check_knobs(onnx, SpaceSpec(fields=(("instance_group[2].count", (1,)),)))
    with pytest.raises(ConfigError, match="no instance_group entry of kind KIND_GPU"):
        check_knobs(onnx, SpaceSpec(fields=(("instance_group[KIND_GPU].count", (1,)),)))
    # With instance kinds searched, a kind selector is the variant's business.
    check_knobs(
        onnx,
        SpaceSpec(instance_kind=("KIND_GPU",), fields=(("instance_group[KIND_GPU].count", (2,)),)),
    )
    with pytest.raises(ConfigError, match="decoupled or sequence-batched"):
        check_knobs(
            parse_config(BASE + "sequence_batching {}\n"), SpaceSpec(response_cache=(True, False))
        )


def test_set_field_by_reflection() -> None:
    config = parse_config(BASE)
    set_field(config, "input[INPUT0].optional", True)
    set_field(config, "instance_group[1].kind", "KIND_GPU")
    set_field(config, "dynamic_batching.default_queue_policy.timeout_action", "DELAY")
    assert config.input[0].optional
    assert [g.kind for g in config.instance_group] == [2, 1]  # KIND_CPU, KIND_GPU
    assert config.dynamic_batching.default_queue_policy.timeout_action == 1
    with pytest.raises(ConfigError, match="no input entry named 'X'"):
        set_field(config, "input[X].optional", True)
    with pytest.raises(ConfigError, match="is not an integer"):
        set_field(config, "max_batch_size", "8")


def test_ensemble_dimensions_keep_dotted_knob_names_whole() -> None:
    assert split_dim("pre.field:optimization.graph.level") == (
        "pre.",
        "field:optimization.graph.level",
    )
    assert split_dim("param:session.use_device_allocator_for_initializers")[0] == ""
    assert split_dim("pre.max_queue_delay_us") == ("pre.", "max_queue_delay_us")
    step = parse_config(BASE)
    pipeline = Pipeline(
        "ens", parse_config('name: "ens"\nplatform: "ensemble"\n'), (("pre", step), ("post", step))
    )
    space = SpaceSpec(
        parameters=(("intra_op_thread_count", ("1", "2")),),
        fields=(("optimization.graph.level", (-1, 1)),),
    )
    search = pipeline_space(pipeline, space, LoadSettings())
    assert [d.name for d in search.dims] == [
        "pre.param:intra_op_thread_count",
        "pre.field:optimization.graph.level",
        "post.param:intra_op_thread_count",
        "post.field:optimization.graph.level",
    ]
    params = {
        "pre.param:intra_op_thread_count": "2",
        "pre.field:optimization.graph.level": 1,
        "concurrency": 2,
    }
    variant = PipelineVariants().build(pipeline, params)
    pre = dict(variant.steps)["pre"]
    assert pre.parameters["intra_op_thread_count"].string_value == "2"
    assert pre.optimization.graph.level == 1
    assert describe(params) == "pre[intra=2 graph=1] c=2"
    # TPE asks the ordered knob by index, the enum-like one by value.
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    point = search.suggest(study.ask())
    assert point["post.param:intra_op_thread_count"] in ("1", "2")
    assert point["post.field:optimization.graph.level"] in (-1, 1)


def test_machine_knobs_for_onnxruntime_only() -> None:
    onnx = parse_config(BASE)
    knobs = machine_knobs(onnx, cpus=6, gpus=0)
    assert knobs == {
        "parameters": (
            ("intra_op_thread_count", ("1", "2", "4", "6")),
            ("execution_mode", ("0", "1")),
        ),
        "fields": (("optimization.graph.level", (-1, 0, 1)),),
    }
    check_knobs(onnx, SpaceSpec(**knobs))  # what it proposes fits the model
    assert "accelerators" not in machine_knobs(onnx, cpus=1, gpus=2)  # KIND_CPU instances
    auto = parse_config(BASE.replace("KIND_CPU", "KIND_AUTO"))
    gpu = machine_knobs(auto, cpus=1, gpus=2)
    assert gpu["accelerators"] == ("none", "tensorrt", "tensorrt:FP16")
    assert dict(gpu["parameters"]) == {"execution_mode": ("0", "1")}  # one core: no thread dim
    assert machine_knobs(parse_config(TORCH), cpus=8, gpus=0) == {}
