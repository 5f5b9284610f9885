"""The zoo's model specs and the config.pbtxt a Triton user would write for each. Pure: no file I/O."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import onnx
from tritonclient.grpc import model_config_pb2 as mc

from perfkit.datatypes import by_v2
from perfkit.zoo import _graphs

# Bump when a graph, its weights or its config change: the cache is keyed by name and this version.
BUILDER_VERSION = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class TensorSpec:
    """One input or output, dims without the batch dimension."""

    name: str
    dims: tuple[int, ...]
    datatype: str = "FP32"


@dataclass(frozen=True, slots=True, kw_only=True)
class ZooModel:
    """A zoo model: how to build its graph and what its config.pbtxt says."""

    name: str
    description: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int
    graph: Callable[[], onnx.ModelProto]
    # Built once into the cache and hard-linked (or copied) into repositories; small ones are built in place.
    cached: bool = False


def _vec(name: str, size: int = 16) -> TensorSpec:
    return TensorSpec(name=name, dims=(size,))


SPECS: dict[str, ZooModel] = {
    spec.name: spec
    for spec in (
        ZooModel(
            name="resnet50",
            description=(
                "ResNet-50 v1.5 (torchvision layout, BN folded), NCHW image -> 1000 logits, 25.5 M params"
            ),
            inputs=(TensorSpec(name="INPUT0", dims=(3, 224, 224)),),
            outputs=(_vec("OUTPUT0", 1000),),
            max_batch_size=32,
            graph=_graphs.resnet50,
            cached=True,
        ),
        ZooModel(
            name="mlp",
            description="MLP 256 -> 1024 -> 1024 -> 10, ReLU, 1.3 M params",
            inputs=(_vec("INPUT0", 256),),
            outputs=(_vec("OUTPUT0", 10),),
            max_batch_size=32,
            graph=_graphs.mlp,
        ),
        ZooModel(
            name="identity",
            description="Identity: OUTPUT0 = INPUT0",
            inputs=(_vec("INPUT0"),),
            outputs=(_vec("OUTPUT0"),),
            max_batch_size=64,
            graph=_graphs.identity,
        ),
        ZooModel(
            name="add_sub",
            description="Triton's add_sub: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1",
            inputs=(_vec("INPUT0"), _vec("INPUT1")),
            outputs=(_vec("OUTPUT0"), _vec("OUTPUT1")),
            max_batch_size=8,
            graph=_graphs.add_sub,
        ),
    )
}


def model_config(spec: ZooModel, name: str | None = None) -> mc.ModelConfig:
    """The config.pbtxt content for a zoo model: ONNX Runtime, CPU instance x1, no dynamic batching."""
    config = mc.ModelConfig(
        name=name or spec.name,
        platform="onnxruntime_onnx",
        max_batch_size=spec.max_batch_size,
    )
    for tensor, target in [(t, config.input) for t in spec.inputs] + [
        (t, config.output) for t in spec.outputs
    ]:
        entry = target.add()
        entry.name = tensor.name
        entry.data_type = mc.DataType.Value(by_v2(tensor.datatype).config)
        entry.dims.extend(tensor.dims)
    group = config.instance_group.add()
    group.kind = mc.ModelInstanceGroup.Kind.KIND_CPU
    group.count = 1
    return config
