"""ONNX graphs of the zoo models, built with onnx.helper and seeded numpy weights. Pure: no file I/O.

Every graph has a symbolic leading batch dimension named "batch" (Triton's max_batch_size > 0), FP32
tensors, inputs named INPUT<i> and outputs OUTPUT<i> (Triton's add_sub naming, used for every model).
The same builder version and seed always give byte-identical models.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

# ONNX opset and IR version: old enough for the onnxruntime inside Triton 2.51 (ORT 1.19) and newer.
OPSET = 17
IR_VERSION = 8
PRODUCER = "perfkit.zoo"

# ResNet-50 v1.5 stage layout: (bottleneck width, block count, stride of the first block).
_RESNET50_STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))
_EXPANSION = 4


def _value_info(name: str, dims: Sequence[int]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", *dims])


def _model(graph: onnx.GraphProto, doc: str) -> onnx.ModelProto:
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name=PRODUCER,
        doc_string=doc,
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def identity(size: int = 16) -> onnx.ModelProto:
    """OUTPUT0 = INPUT0, FP32 [batch, size]."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"], name="identity")],
        "identity",
        [_value_info("INPUT0", [size])],
        [_value_info("OUTPUT0", [size])],
    )
    return _model(graph, "perfkit zoo identity: OUTPUT0 = INPUT0")


def add_sub(size: int = 16) -> onnx.ModelProto:
    """Triton's classic example: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1, FP32 [batch, size]."""
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"], name="add"),
            helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"], name="sub"),
        ],
        "add_sub",
        [_value_info("INPUT0", [size]), _value_info("INPUT1", [size])],
        [_value_info("OUTPUT0", [size]), _value_info("OUTPUT1", [size])],
    )
    return _model(
        graph, "perfkit zoo add_sub: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1"
    )


def _linear_init(
    rng: np.random.Generator, fan_in: int, fan_out: int
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    # torch.nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias.
    bound = 1.0 / np.sqrt(fan_in)
    weight = rng.uniform(-bound, bound, size=(fan_in, fan_out)).astype(np.float32)
    bias = rng.uniform(-bound, bound, size=(fan_out,)).astype(np.float32)
    return weight, bias


def mlp(sizes: Sequence[int] = (256, 1024, 1024, 10), seed: int = 20240602) -> onnx.ModelProto:
    """Fully connected FP32 network sizes[0] -> ... -> sizes[-1], ReLU between layers (not after the last)."""
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    current = "INPUT0"
    layers = len(sizes) - 1
    for i in range(layers):
        weight, bias = _linear_init(rng, sizes[i], sizes[i + 1])
        inits += [
            numpy_helper.from_array(weight, f"fc{i}.weight"),
            numpy_helper.from_array(bias, f"fc{i}.bias"),
        ]
        out = "OUTPUT0" if i == layers - 1 else f"fc{i}"
        nodes.append(
            helper.make_node(
                "Gemm", [current, f"fc{i}.weight", f"fc{i}.bias"], [out], name=f"fc{i}"
            )
        )
        if i < layers - 1:
            nodes.append(helper.make_node("Relu", [out], [f"relu{i}"], name=f"relu{i}"))
            current = f"relu{i}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [_value_info("INPUT0", [sizes[0]])],
        [_value_info("OUTPUT0", [sizes[-1]])],
        inits,
    )
    return _model(graph, f"perfkit zoo mlp {' -> '.join(map(str, sizes))}, ReLU, seed {seed}")


class _ResNetBuilder:
    """Accumulates the nodes and initializers of a ResNet, BatchNorm folded into each conv's weight/bias."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def conv(
        self,
        x: str,
        name: str,
        cin: int,
        cout: int,
        kernel: int,
        stride: int = 1,
        *,
        relu: bool = True,
        gain: float = 1.0,
    ) -> str:
        # He (fan_in) init keeps activations at unit scale through the depth; eval-mode BN folds into
        # a per-channel scale (absorbed in the weight) and a per-channel bias.
        fan_in = cin * kernel * kernel
        std = gain * np.sqrt(2.0 / fan_in)
        weight = (
            self.rng.standard_normal((cout, cin, kernel, kernel), dtype=np.float32) * std
        ).astype(np.float32)
        bias = (self.rng.standard_normal(cout, dtype=np.float32) * 0.01).astype(np.float32)
        self.inits += [
            numpy_helper.from_array(weight, f"{name}.weight"),
            numpy_helper.from_array(bias, f"{name}.bias"),
        ]
        pad = kernel // 2
        self.nodes.append(
            helper.make_node(
                "Conv",
                [x, f"{name}.weight", f"{name}.bias"],
                [name],
                name=name,
                kernel_shape=[kernel, kernel],
                strides=[stride, stride],
                pads=[pad, pad, pad, pad],
            )
        )
        if not relu:
            return name
        self.nodes.append(helper.make_node("Relu", [name], [f"{name}.relu"], name=f"{name}.relu"))
        return f"{name}.relu"

    def bottleneck(
        self, x: str, name: str, cin: int, width: int, stride: int, residual_gain: float
    ) -> str:
        cout = width * _EXPANSION
        y = self.conv(x, f"{name}.conv1", cin, width, 1)
        # v1.5: the stride sits on the 3x3 conv, not on the first 1x1 (torchvision's Bottleneck).
        y = self.conv(y, f"{name}.conv2", width, width, 3, stride)
        y = self.conv(y, f"{name}.conv3", width, cout, 1, relu=False, gain=residual_gain)
        shortcut = x
        if stride != 1 or cin != cout:
            shortcut = self.conv(x, f"{name}.downsample", cin, cout, 1, stride, relu=False)
        self.nodes.append(
            helper.make_node("Add", [y, shortcut], [f"{name}.add"], name=f"{name}.add")
        )
        self.nodes.append(
            helper.make_node("Relu", [f"{name}.add"], [f"{name}.out"], name=f"{name}.relu")
        )
        return f"{name}.out"


def resnet50(num_classes: int = 1000, seed: int = 50) -> onnx.ModelProto:
    """ResNet-50 v1.5 as torchvision's `resnet50()`, FP32 NCHW [batch, 3, 224, 224] -> [batch, 1000] logits.

    BatchNorm is folded into the preceding conv (eval-mode BN is an affine per-channel map), so each
    conv carries a bias and the graph has no BatchNormalization nodes. Parameter count: torchvision's
    25,557,032 less one of BN's two affine parameters per channel (26,560 channels) = 25,530,472.
    """
    b = _ResNetBuilder(seed)
    x = b.conv("INPUT0", "conv1", 3, 64, 7, 2)
    b.nodes.append(
        helper.make_node(
            "MaxPool",
            [x],
            ["maxpool"],
            name="maxpool",
            kernel_shape=[3, 3],
            strides=[2, 2],
            pads=[1, 1, 1, 1],
        )
    )
    x, cin = "maxpool", 64
    # Scale down the last conv of each residual branch so the 16 residual additions do not blow up
    # the activations of an untrained network (the role zero_init_residual plays in torchvision).
    residual_gain = 1.0 / np.sqrt(sum(blocks for _, blocks, _ in _RESNET50_STAGES))
    for stage, (width, blocks, stride) in enumerate(_RESNET50_STAGES, start=1):
        for block in range(blocks):
            x = b.bottleneck(
                x, f"layer{stage}.{block}", cin, width, stride if block == 0 else 1, residual_gain
            )
            cin = width * _EXPANSION
    b.nodes.append(helper.make_node("GlobalAveragePool", [x], ["avgpool"], name="avgpool"))
    b.nodes.append(helper.make_node("Flatten", ["avgpool"], ["flatten"], name="flatten", axis=1))
    weight, bias = _linear_init(b.rng, cin, num_classes)
    b.inits += [
        numpy_helper.from_array(weight, "fc.weight"),
        numpy_helper.from_array(bias, "fc.bias"),
    ]
    b.nodes.append(
        helper.make_node("Gemm", ["flatten", "fc.weight", "fc.bias"], ["OUTPUT0"], name="fc")
    )
    graph = helper.make_graph(
        b.nodes,
        "resnet50",
        [_value_info("INPUT0", [3, 224, 224])],
        [_value_info("OUTPUT0", [num_classes])],
        b.inits,
    )
    return _model(graph, f"perfkit zoo resnet50 v1.5 (torchvision layout, BN folded), seed {seed}")


def parameter_count(model: onnx.ModelProto) -> int:
    """Number of values in the model's initializers (its weights and biases)."""
    return sum(int(np.prod(init.dims)) for init in model.graph.initializer)
