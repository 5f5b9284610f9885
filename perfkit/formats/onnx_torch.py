"""An ONNX graph as a `torch.nn.Module`: its nodes run one by one with torch ops, for tracing into
TorchScript (`perfkit.formats.convert`). Imports torch and onnx.

The ops (default domain, opsets 11 to 21): Add, BatchNormalization (inference), Concat, Constant,
Conv (NOTSET or VALID padding), Div, Flatten, Gemm, GlobalAveragePool, GlobalMaxPool, Identity,
MatMul, MaxPool (NOTSET or VALID padding, one output), Mul, Relu, Reshape (a constant shape),
Sigmoid, Softmax, Sub, Tanh, Transpose. Any other op refuses the graph (`UnsupportedGraph`, naming
the ops). The initializers become the module's buffers; a Gemm's constant weight is stored
transposed once, so the traced module runs `linear` on a contiguous weight as torch's own would.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper
from torch import Tensor

Attrs = dict[str, Any]
OpFn = Callable[[list[Any], Attrs, int], list[Tensor]]


class UnsupportedGraph(Exception):
    """The graph needs an op (or an attribute value) this interpreter does not run."""


# Op name -> its function (filled at the end of the module).
_OPS: dict[str, OpFn] = {}


def unsupported_ops(model: onnx.ModelProto) -> list[str]:
    """The graph's ops this interpreter does not run (another domain counts as unsupported)."""
    return sorted(
        {
            n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
            for n in model.graph.node
            if n.domain not in ("", "ai.onnx")
            or (n.op_type not in _OPS and n.op_type != "Constant")
        }
    )


class OnnxGraph(torch.nn.Module):
    """Runs an ONNX graph's nodes in order: forward(*inputs in the graph's input order) returns
    the graph's outputs as a tuple, in the graph's output order."""

    def __init__(self, model: onnx.ModelProto) -> None:
        super().__init__()
        missing = unsupported_ops(model)
        if missing:
            raise UnsupportedGraph(
                f"ONNX op(s) {', '.join(missing)} not supported by perfkit's ONNX-to-TorchScript "
                f"converter (it runs {', '.join(sorted([*_OPS, 'Constant']))})"
            )
        graph = model.graph
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        consts: dict[str, np.ndarray[Any, Any]] = {
            t.name: numpy_helper.to_array(t) for t in graph.initializer
        }
        self.input_names = [i.name for i in graph.input if i.name not in consts]
        self.output_names = [o.name for o in graph.output]
        self.nodes: list[tuple[str, list[str], list[str], Attrs]] = []
        for node in graph.node:
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if node.op_type == "Constant":
                if "value" not in attrs:
                    raise UnsupportedGraph(f"Constant {node.name!r}: only the `value` attribute")
                consts[node.output[0]] = numpy_helper.to_array(attrs["value"])
                continue
            inputs = list(node.input)
            if node.op_type in ("MaxPool", "BatchNormalization") and any(node.output[1:]):
                raise UnsupportedGraph(
                    f"{node.op_type} {node.name!r}: only its first output (inference) is supported"
                )
            if node.op_type == "Gemm" and inputs[1] in consts and not attrs.get("transB", 0):
                # A constant [in, out] weight, stored once as [out, in] for F.linear.
                consts[inputs[1] + "::T"] = np.ascontiguousarray(consts[inputs[1]].T)
                inputs[1] += "::T"
                attrs["transB"] = 1
            if node.op_type == "Reshape":
                if inputs[1] not in consts:
                    raise UnsupportedGraph(
                        f"Reshape {node.name!r}: its shape is computed in the graph; the "
                        "converter supports a constant shape only"
                    )
                attrs["shape"] = [int(d) for d in consts[inputs[1]]]
                inputs = inputs[:1]
            self.nodes.append((node.op_type, inputs, list(node.output), attrs))
        used = {name for _, inputs, _, _ in self.nodes for name in inputs}
        used |= set(self.output_names)
        self._buffer_of: dict[str, str] = {}
        for i, (name, array) in enumerate(consts.items()):
            if name in used:
                self._buffer_of[name] = f"c{i}"
                self.register_buffer(f"c{i}", torch.from_numpy(np.array(array)))

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        env: dict[str, Any] = {"": None}
        for name, buffer in self._buffer_of.items():
            env[name] = getattr(self, buffer)
        env.update(zip(self.input_names, inputs, strict=True))
        for op, names, outputs, attrs in self.nodes:
            results = _OPS[op]([env[n] for n in names], attrs, self.opset)
            env.update(zip(outputs, results, strict=False))
        return tuple(env[name] for name in self.output_names)


def named(
    graph: OnnxGraph, arguments: Sequence[str], inputs: Sequence[int], outputs: Sequence[int]
) -> torch.nn.Module:
    """`graph` as a module whose forward() takes arguments named `arguments`, passes the graph's
    i-th input from argument `inputs[i]`, and returns the graph's outputs at `outputs` (one
    tensor, or a tuple)."""

    def forward(self: torch.nn.Module, *args: Tensor) -> Tensor | tuple[Tensor, ...]:
        results = graph(*(args[i] for i in inputs))  # self.net: traced with its buffers
        picked = tuple(results[i] for i in outputs)
        return picked[0] if len(picked) == 1 else picked

    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    # torch.jit.trace names forward()'s arguments after its signature, as inspect reads it.
    forward.__dict__["__signature__"] = inspect.Signature(
        [inspect.Parameter("self", kind), *(inspect.Parameter(a, kind) for a in arguments)]
    )
    cls = type("OnnxModel", (torch.nn.Module,), {"forward": forward})
    module: torch.nn.Module = cls()
    module.add_module("net", graph)
    return module.eval()


# -- the ops ----------------------------------------------------------------------------------


def _identity(x: list[Any], a: Attrs, opset: int) -> list[Tensor]:
    return [x[0]]


_OPS["Relu"] = lambda x, a, o: [torch.relu(x[0])]
_OPS["Sigmoid"] = lambda x, a, o: [torch.sigmoid(x[0])]
_OPS["Tanh"] = lambda x, a, o: [torch.tanh(x[0])]
_OPS["Add"] = lambda x, a, o: [torch.add(x[0], x[1])]
_OPS["Sub"] = lambda x, a, o: [torch.sub(x[0], x[1])]
_OPS["Mul"] = lambda x, a, o: [torch.mul(x[0], x[1])]
_OPS["MatMul"] = lambda x, a, o: [torch.matmul(x[0], x[1])]


def _div(x: list[Any], a: Attrs, opset: int) -> list[Tensor]:
    if x[0].is_floating_point():
        return [torch.div(x[0], x[1])]
    return [torch.div(x[0], x[1], rounding_mode="trunc")]  # ONNX's integer division


def _softmax(x: list[Any], a: Attrs, opset: int) -> list[Tensor]:
    t: Tensor = x[0]
    axis = int(a.get("axis", -1 if opset >= 13 else 1))
    if opset >= 13:
        return [torch.softmax(t, dim=axis)]
    axis = axis % t.dim()  # before opset 13: over the dimensions from `axis` on, flattened
    return [torch.softmax(t.flatten(axis), dim=-1).reshape(t.shape)]


def _flatten(x: list[Any], a: Attrs, opset: int) -> list[Tensor]:
    t: Tensor = x[0]
    axis = int(a.get("axis", 1)) % (t.dim() + 1)
    if axis == 0:
        return [t.reshape(1, -1)]
    return [torch.flatten(torch.flatten(t, axis), 0, axis - 1)]


def _reshape(x: list[Any], a: Attrs, opset: int) -> list[Tensor]:
    t: Tensor = x[0]
    shape = list(a["shape"])
    if not a.get("allowzero", 0):
        shape = [t.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return [t.reshape(shape)]


def _transpose(x: list[Any], a: Attrs, opset: int) -> list[Tensor]:
    t: Tensor = x[0]
    perm = a.get("perm") or list(reversed(range(t.dim())))
    return [t.permute(*perm)]


def _concat(x: list[Any], a: Attrs, opset: int) -> list[Tensor]:
    return [torch.cat(list(x), dim=int(a["axis"]))]


def _gemm(x: list[Any], a: Attrs, opset: int) -> list[Tensor]:
    left: Tensor = x[0].t() if a.get("transA", 0) else x[0]
    c: Tensor | None = x[2] if len(x) > 2 else None
    alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
    if a.get("transB", 0):
        bias = c if c is not None and c.dim() == 1 and alpha == 1.0 and beta == 1.0 else None
        y = F.linear(left, x[1], bias)
        if bias is not None:
            return [y]
    else:
        y = torch.matmul(left, x[1])
    if alpha != 1.0:
        y = y * alpha
    if c is not None:
        y = y + (c * beta if beta != 1.0 else c)
    return [y]


def _pads(a: Attrs, n: int, op: str) -> list[int]:
    auto_pad = a.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    if auto_pad not in ("NOTSET", "VALID"):
        raise UnsupportedGraph(f"{op} with auto_pad={auto_pad}: give explicit pads")
    pads = list(a.get("pads", [0] * (2 * n))) if auto_pad == "NOTSET" else [0] * (2 * n)
    return pads


def _padded(t: Tensor, pads: list[int], n: int, value: float) -> tuple[Tensor, list[int]]:
    """(input, symmetric padding): asymmetric ONNX pads [b1..bn, e1..en] applied with F.pad."""
    begins, ends = pads[:n], pads[n:]
    if begins == ends:
        return t, begins
    spec: list[int] = []
    for i in reversed(range(n)):
        spec += [begins[i], ends[i]]
    return F.pad(t, spec, value=value), [0] * n


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _conv(x: list[Any], a: Attrs, opset: int) -> list[Tensor]:
    weight: Tensor = x[1]
    n = weight.dim() - 2
    if n not in _CONV:
        raise UnsupportedGraph(f"Conv over {n} spatial dimensions")
    t, padding = _padded(x[0], _pads(a, n, "Conv"), n, 0.0)
    bias = x[2] if len(x) > 2 else None
    return [
        _CONV[n](
            t,
            weight,
            bias,
            stride=list(a.get("strides", [1] * n)),
            padding=padding,
            dilation=list(a.get("dilations", [1] * n)),
            groups=int(a.get("group", 1)),
        )
    ]


_MAXPOOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}


def _maxpool(x: list[Any], a: Attrs, opset: int) -> list[Tensor]:
    kernel = list(a["kernel_shape"])
    n = len(kernel)
    if n not in _MAXPOOL:
        raise UnsupportedGraph(f"MaxPool over {n} spatial dimensions")
    pads = _pads(a, n, "MaxPool")
    t: Tensor = x[0]
    padding = pads[:n]
    if pads[:n] != pads[n:] or any(2 * p > k for p, k in zip(padding, kernel, strict=True)):
        # Asymmetric, or wider than torch's limit (half the kernel): padded with -inf first.
        spec = [p for i in reversed(range(n)) for p in (pads[i], pads[n + i])]
        t, padding = F.pad(t, spec, value=-math.inf), [0] * n
    return [
        _MAXPOOL[n](
            t,
            kernel,
            stride=list(a.get("strides", [1] * n)),
            padding=padding,
            dilation=list(a.get("dilations", [1] * n)),
            ceil_mode=bool(a.get("ceil_mode", 0)),
        )
    ]


def _global_avg(x: list[Any], a: Attrs, opset: int) -> list[Tensor]:
    t: Tensor = x[0]
    return [t.mean(dim=list(range(2, t.dim())), keepdim=True)]


def _global_max(x: list[Any], a: Attrs, opset: int) -> list[Tensor]:
    t: Tensor = x[0]
    return [t.amax(dim=list(range(2, t.dim())), keepdim=True)]


def _batchnorm(x: list[Any], a: Attrs, opset: int) -> list[Tensor]:
    if a.get("training_mode", 0):
        raise UnsupportedGraph("BatchNormalization with training_mode=1")
    t, scale, bias, mean, var = x[:5]
    return [F.batch_norm(t, mean, var, scale, bias, False, 0.0, float(a.get("epsilon", 1e-5)))]


_OPS.update(
    Identity=_identity,
    Div=_div,
    Softmax=_softmax,
    Flatten=_flatten,
    Reshape=_reshape,
    Transpose=_transpose,
    Concat=_concat,
    Gemm=_gemm,
    Conv=_conv,
    MaxPool=_maxpool,
    GlobalAveragePool=_global_avg,
    GlobalMaxPool=_global_max,
    BatchNormalization=_batchnorm,
)
