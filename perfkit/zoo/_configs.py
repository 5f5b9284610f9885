"""The zoo's model specs and the config.pbtxt a Triton user would write for each. Pure: no file I/O."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import onnx
from tritonclient.grpc import model_config_pb2 as mc

from perfkit.datatypes import by_v2
from perfkit.model_repo.config import parse_config
from perfkit.zoo import _graphs, _pipeline, _torch

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
    # An ONNX model's graph, or a TorchScript model's saved bytes (torch imported when called).
    graph: Callable[[], onnx.ModelProto] | None = None
    torchscript: Callable[[], bytes] | None = None
    # Built once into the cache and hard-linked (or copied) into repositories; small ones are built in place.
    cached: bool = False
    # A python-backend model's model.py source (its config_text says backend "python").
    python: str | None = None
    # A config.pbtxt written as is, in place of the generated one.
    config_text: str | None = None
    # Other zoo models this one runs (an ensemble's steps, a BLS model's calls): built with it.
    requires: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        given = [x for x in (self.graph, self.torchscript, self.python) if x is not None]
        if len(given) > 1 or (not given and self.config_text is None):
            raise ValueError(
                f"zoo model {self.name!r}: give one of graph, torchscript, python (or, for an "
                "ensemble, none and its config_text)"
            )
        if self.python is not None and self.config_text is None:
            # No generated config for these: `platform` names only the ONNX and TorchScript ones.
            raise ValueError(f"zoo model {self.name!r}: a python model needs its config_text")

    @property
    def platform(self) -> str:
        return "pytorch_libtorch" if self.torchscript is not None else "onnxruntime_onnx"

    @property
    def filename(self) -> str | None:
        """The model file in the version directory (None: an ensemble has none)."""
        if self.torchscript is not None:
            return "model.pt"
        if self.python is not None:
            return "model.py"
        return "model.onnx" if self.graph is not None else None

    def serialize(self) -> bytes:
        """The model file's bytes (b"" for an ensemble)."""
        if self.torchscript is not None:
            return self.torchscript()
        if self.python is not None:
            return self.python.encode()
        return b"" if self.graph is None else self.graph().SerializeToString()


def _vec(name: str, size: int = 16) -> TensorSpec:
    return TensorSpec(name=name, dims=(size,))


def _pipeline_specs() -> tuple[ZooModel, ...]:
    """The pipeline (Python pre -> ONNX -> Python post, as an ensemble and as BLS) and the
    sequence-batched accumulator: perfkit.zoo._pipeline."""
    p = _pipeline
    image = TensorSpec(name="IMAGE", dims=p.IMAGE_HWC, datatype="UINT8")
    pixels = p.PIXELS_CHW
    top = (
        TensorSpec(name="SCORES", dims=(p.TOP_K,)),
        TensorSpec(name="CLASSES", dims=(p.TOP_K,), datatype="INT32"),
    )
    mbs = p.MAX_BATCH_SIZE
    count = TensorSpec(name="INPUT0", dims=(1,), datatype="INT32")
    return (
        ZooModel(
            name="pipeline_pre",
            description="pipeline step 1 (python): UINT8 HWC image -> normalized FP32 CHW",
            inputs=(image,),
            outputs=(TensorSpec(name="PIXELS", dims=pixels),),
            max_batch_size=mbs,
            python=p.PRE_MODEL_PY,
            config_text=p.PRE_CONFIG,
        ),
        ZooModel(
            name="pipeline_classifier",
            description="pipeline step 2 (onnx): FP32 [3,4,4] -> 10 logits (Flatten + Gemm)",
            inputs=(TensorSpec(name="INPUT0", dims=pixels),),
            outputs=(_vec("OUTPUT0", p.CLASSES),),
            max_batch_size=mbs,
            graph=p.classifier,
            config_text=p.CLASSIFIER_CONFIG,
        ),
        ZooModel(
            name="pipeline_post",
            description="pipeline step 3 (python): logits -> top-3 softmax scores and classes",
            inputs=(_vec("LOGITS", p.CLASSES),),
            outputs=top,
            max_batch_size=mbs,
            python=p.POST_MODEL_PY,
            config_text=p.POST_CONFIG,
        ),
        ZooModel(
            name="pipeline_ensemble",
            description="ensemble: pipeline_pre -> pipeline_classifier -> pipeline_post",
            inputs=(image,),
            outputs=top,
            max_batch_size=mbs,
            config_text=p.ENSEMBLE_CONFIG,
            requires=p.STEPS,
        ),
        ZooModel(
            name="pipeline_bls",
            description="BLS (python): calls pipeline_pre, pipeline_classifier, pipeline_post",
            inputs=(image,),
            outputs=top,
            max_batch_size=mbs,
            python=p.BLS_MODEL_PY,
            config_text=p.BLS_CONFIG,
            requires=p.STEPS,
        ),
        ZooModel(
            name="accumulator",
            description=(
                "stateful (python, sequence batcher): OUTPUT0 = running sum of INPUT0 over the "
                "sequence (START/END/READY/CORRID)"
            ),
            inputs=(count,),
            outputs=(TensorSpec(name="OUTPUT0", dims=(1,), datatype="INT32"),),
            max_batch_size=mbs,
            python=p.ACCUMULATOR_MODEL_PY,
            config_text=p.ACCUMULATOR_CONFIG,
        ),
    )


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
        ZooModel(
            name="resnet50_pt",
            description=(
                "resnet50 as TorchScript (pytorch_libtorch): same layout and weights, same logits"
            ),
            inputs=(TensorSpec(name="INPUT__0", dims=(3, 224, 224)),),
            outputs=(_vec("OUTPUT__0", 1000),),
            max_batch_size=32,
            torchscript=_torch.resnet50_pt,
            cached=True,
        ),
        ZooModel(
            name="fc_model_pt",
            description=(
                "The seed's TorchScript example: INT64 tokens -> embedding -> heads of 4 and 8 "
                "(--shape input__0:SEQ)"
            ),
            inputs=(TensorSpec(name="input__0", dims=(-1,), datatype="INT64"),),
            outputs=(
                TensorSpec(name="output__0", dims=(-1, -1, 4)),
                TensorSpec(name="output__1", dims=(-1, -1, 8)),
            ),
            max_batch_size=64,
            torchscript=_torch.fc_model_pt,
            config_text=_torch.FC_MODEL_PT_CONFIG,
        ),
        *_pipeline_specs(),
    )
}


def model_config(spec: ZooModel, name: str | None = None) -> mc.ModelConfig:
    """The config.pbtxt content for a zoo model: its platform, CPU instance x1, no dynamic batching
    (or its `config_text`, as is)."""
    if spec.config_text is not None:
        config = parse_config(spec.config_text, f"zoo model {spec.name}")
        config.name = name or config.name
        return config
    config = mc.ModelConfig(
        name=name or spec.name,
        platform=spec.platform,
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
