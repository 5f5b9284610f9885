"""config.pbtxt <-> ModelConfig: parsing, errors that name the file, JSON form, editors, validation."""

from __future__ import annotations

from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from perfkit.model_repo import InvalidModelConfig, InvalidRepository, repository
from perfkit.model_repo import config as mcfg

ADD_SUB = """
name: "add_sub"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] },
  { name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] },
  { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 16 ] }
]
instance_group [ { count: 1 kind: KIND_CPU } ]
parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
"""


def test_round_trip_through_text_and_json():
    config = mcfg.parse_config(ADD_SUB, "add_sub/config.pbtxt")
    text = mcfg.format_config(config)
    assert mcfg.parse_config(text) == config
    as_json = mcfg.config_to_json(config)
    # Triton's JSON carries 64-bit ints (dims) as numbers, not strings.
    assert as_json["input"][0]["dims"] == [16]
    assert as_json["parameters"]["intra_op_thread_count"] == {"string_value": "1"}
    assert mcfg.config_from_json(as_json) == config


def test_parse_error_names_the_file(tmp_path: Path):
    path = tmp_path / "m" / "config.pbtxt"
    path.parent.mkdir()
    path.write_text('name: "m"\nmax_batch_size: "eight"\n')
    with pytest.raises(InvalidModelConfig, match=r"m/config\.pbtxt.*max_batch_size"):
        mcfg.load_config(path)


def test_missing_file_says_what_to_check(tmp_path: Path):
    with pytest.raises(InvalidModelConfig, match="does not exist"):
        mcfg.load_config(tmp_path / "nope" / "config.pbtxt")


def test_editors_keep_untouched_fields_and_do_not_mutate():
    config = mcfg.parse_config(ADD_SUB)
    variant = mcfg.with_dynamic_batching(
        mcfg.with_instances(mcfg.with_max_batch_size(config, 16), 3), [8, 4, 8], 250
    )
    assert config.max_batch_size == 8
    assert not config.HasField("dynamic_batching")
    assert variant.name == "add_sub"
    assert variant.parameters["intra_op_thread_count"].string_value == "1"
    assert variant.max_batch_size == 16
    assert [g.count for g in variant.instance_group] == [3]
    assert list(variant.dynamic_batching.preferred_batch_size) == [4, 8]
    assert variant.dynamic_batching.max_queue_delay_microseconds == 250
    assert mcfg.instance_summary(variant) == "3:CPU"
    assert not mcfg.without_dynamic_batching(variant).HasField("dynamic_batching")
    assert mcfg.config_hash(variant) != mcfg.config_hash(config)
    assert mcfg.config_hash(variant) == mcfg.config_hash(
        mcfg.parse_config(mcfg.format_config(variant))
    )


def test_empty_dynamic_batching_means_on():
    config = mcfg.with_dynamic_batching(mcfg.parse_config(ADD_SUB))
    assert config.HasField("dynamic_batching")
    assert "dynamic_batching {\n}" in mcfg.format_config(config)


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda c: mcfg.with_dynamic_batching(c, [32]), "preferred_batch_size"),
        (lambda c: mcfg.with_dynamic_batching(mcfg.with_max_batch_size(c, 0)), "dynamic_batching"),
    ],
)
def test_validation_names_the_field(edit, field):
    with pytest.raises(InvalidModelConfig, match=rf"m\.pbtxt: .*{field}"):
        mcfg.validate_config(edit(mcfg.parse_config(ADD_SUB)), "m.pbtxt")


def test_datatype_table():
    assert mcfg.v2_datatype(mcfg.parse_config(ADD_SUB).input[0].data_type) == "FP32"
    with pytest.raises(InvalidModelConfig, match="TYPE_INVALID has no KServe v2 equivalent"):
        mcfg.v2_datatype(mc.DataType.Value("TYPE_INVALID"))


@pytest.mark.parametrize("name", ["", "..", "../etc", "a/b", ".hidden", "a\\b"])
def test_model_names_that_escape_the_repository_are_refused(name):
    with pytest.raises(InvalidRepository, match="invalid model name"):
        repository.check_model_name(name)


def test_scan_and_atomic_write(tmp_path: Path):
    (tmp_path / "a" / "1").mkdir(parents=True)
    (tmp_path / "a" / "3").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "notes").mkdir()
    repository.write_text_atomic(
        tmp_path / "b" / "config.pbtxt", mcfg.format_config(mcfg.parse_config(ADD_SUB))
    )
    assert list(repository.scan_repository(tmp_path)) == ["a", "b"]
    assert list(repository.version_dirs(tmp_path / "a")) == [1, 3]
    assert mcfg.load_config(tmp_path / "b" / "config.pbtxt").name == "add_sub"
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["config.pbtxt"]
    with pytest.raises(InvalidRepository, match="does not exist"):
        repository.scan_repository(tmp_path / "missing")
