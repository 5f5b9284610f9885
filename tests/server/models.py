"""Test-only model repositories: tiny ONNX models built with onnx.helper, and perfkit_identity configs.

`perfkit.zoo.build` is used for the zoo models when it is available; these builders keep the
server tests independent of it and fast.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _save(model: onnx.ModelProto, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _opset() -> list[onnx.OperatorSetIdProto]:
    return [helper.make_opsetid("", 13)]


def write_config(repo: Path, name: str, text: str) -> Path:
    path = repo / name / "config.pbtxt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def add_sub(
    repo: Path, name: str = "add_sub", config_extra: str = "", write_cfg: bool = True
) -> Path:
    """Triton's add_sub: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1, FP32 [16]."""
    t = TensorProto.FLOAT
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
            helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
        ],
        "add_sub",
        [helper.make_tensor_value_info(n, t, ["batch", 16]) for n in ("INPUT0", "INPUT1")],
        [helper.make_tensor_value_info(n, t, ["batch", 16]) for n in ("OUTPUT0", "OUTPUT1")],
    )
    _save(helper.make_model(graph, opset_imports=_opset()), repo / name / "1" / "model.onnx")
    if write_cfg:
        write_config(
            repo,
            name,
            f"""name: "{name}"
backend: "onnxruntime"
max_batch_size: 8
input [
  {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] }},
  {{ name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] }}
]
output [
  {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] }},
  {{ name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 16 ] }}
]
{config_extra}
""",
        )
    return repo / name


def identity_onnx(repo: Path, name: str = "identity") -> Path:
    """ONNX Identity, FP32 [16], max_batch_size 8."""
    t = TensorProto.FLOAT
    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
        "identity",
        [helper.make_tensor_value_info("INPUT0", t, ["batch", 16])],
        [helper.make_tensor_value_info("OUTPUT0", t, ["batch", 16])],
    )
    _save(helper.make_model(graph, opset_imports=_opset()), repo / name / "1" / "model.onnx")
    write_config(
        repo,
        name,
        f"""name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] }} ]
""",
    )
    return repo / name


def mlp(repo: Path, name: str = "mlp", hidden: int = 64) -> Path:
    """A small FP32 MLP 32 -> hidden -> 10 (Gemm + Relu), seeded weights."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((32, hidden)).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32), "b1")
    w2 = numpy_helper.from_array(rng.standard_normal((hidden, 10)).astype(np.float32), "w2")
    b2 = numpy_helper.from_array(rng.standard_normal(10).astype(np.float32), "b2")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["INPUT0", "w1"], ["h0"]),
            helper.make_node("Add", ["h0", "b1"], ["h1"]),
            helper.make_node("Relu", ["h1"], ["h2"]),
            helper.make_node("MatMul", ["h2", "w2"], ["h3"]),
            helper.make_node("Add", ["h3", "b2"], ["OUTPUT0"]),
        ],
        "mlp",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", 32])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 10])],
        initializer=[w1, b1, w2, b2],
    )
    _save(helper.make_model(graph, opset_imports=_opset()), repo / name / "1" / "model.onnx")
    return repo / name


def slow_identity(
    repo: Path,
    name: str = "slow",
    *,
    max_batch_size: int = 8,
    delay_us: int = 20000,
    batching: str = "",
    instances: int = 1,
    extra: str = "",
) -> Path:
    """A perfkit_identity model (INPUT0 -> OUTPUT0, FP32 [16]) that sleeps `delay_us` per execution."""
    (repo / name / "1").mkdir(parents=True, exist_ok=True)
    write_config(
        repo,
        name,
        f"""name: "{name}"
backend: "perfkit_identity"
max_batch_size: {max_batch_size}
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] }} ]
instance_group [ {{ count: {instances} kind: KIND_CPU }} ]
parameters {{ key: "execute_delay_us" value: {{ string_value: "{delay_us}" }} }}
{batching}
{extra}
""",
    )
    return repo / name
