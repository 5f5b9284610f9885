"""The config of each format (pure): platform, model file, accelerator, carried thread counts."""

from __future__ import annotations

import pytest

from perfkit.errors import ConfigError
from perfkit.formats.catalog import check_resolved, config_file, format_of, with_format
from perfkit.model_repo.config import parse_config

ORT = """name: "m"
backend: "onnxruntime"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
parameters { key: "intra_op_thread_count" value { string_value: "2" } }
"""


def test_a_variant_serves_its_format_and_keeps_the_rest() -> None:
    base = parse_config(ORT)
    assert format_of(base) == "onnxruntime"
    assert with_format(base, "onnxruntime") is base
    assert with_format(base, None) is base

    pt = with_format(base, "pytorch")
    assert (pt.platform, pt.backend, pt.default_model_filename) == ("pytorch_libtorch", "", "")
    assert config_file(pt) == "model.pt"
    assert pt.parameters["INTRA_OP_THREAD_COUNT"].string_value == "2"
    assert pt.max_batch_size == 8
    assert list(pt.input) == list(base.input)
    assert not pt.HasField("optimization")

    trt = with_format(base, "onnxruntime_tensorrt")
    assert format_of(trt) == "onnxruntime_tensorrt"
    accelerators = trt.optimization.execution_accelerators.gpu_execution_accelerator
    assert [a.name for a in accelerators] == ["tensorrt"]
    for other in ("pytorch", "onnxruntime"):  # the accelerator goes; nothing else was there
        assert not with_format(trt, other).optimization.HasField("execution_accelerators")
    assert with_format(base, "tensorrt").platform == "tensorrt_plan"


def test_a_source_file_named_like_the_target_is_not_overwritten() -> None:
    base = parse_config(ORT + 'default_model_filename: "model.pt"\n')
    assert config_file(base) == "model.pt"
    pt = with_format(base, "pytorch")
    assert pt.default_model_filename == "model_pytorch.pt"


def test_auto_must_be_resolved_before_the_space_is_built() -> None:
    assert check_resolved(("pytorch",)) == ("pytorch",)
    with pytest.raises(ConfigError, match="prepare them before building the search space"):
        check_resolved(("auto",))
