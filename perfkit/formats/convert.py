"""Conversions between the formats, each writing the candidate's model file (atomically).

- ONNX -> TorchScript: the graph run by `perfkit.formats.onnx_torch.OnnxGraph`, traced at batch 1
  (the check runs at batch 2, so a shape frozen by the trace fails it). forward() takes the
  config's inputs as arguments named after them (names that are not Python identifiers: by
  position, as Triton's pytorch backend then maps them) and returns the outputs in config order.
- TorchScript -> ONNX: torch.onnx.export's TorchScript-based exporter (dynamo=False, which needs no
  onnxscript), the batch dimension and every -1 dimension dynamic, tensors named after the config.
- ONNX -> TensorRT plan: TensorRT's ONNX parser and builder, one optimization profile from batch 1
  to the largest max_batch_size the tune may set (a plan cannot serve a larger batch). GPU only.

Every failure is `ConversionFailed` with the reason, which the tuner prints beside the format.
"""

from __future__ import annotations

import contextlib
import io
import keyword
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from perfkit.formats.verify import sample_inputs, tensor_order
from perfkit.model_repo.config import ModelConfig

ONNX_OPSET = 17


class ConversionFailed(Exception):
    """A candidate's file could not be made (the message says why)."""


def write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _example(config: ModelConfig, shapes: Mapping[str, Sequence[int]]) -> dict[str, Any]:
    """Inputs to trace or export with: batch 1 (seed apart from the check's)."""
    import numpy as np

    inputs = sample_inputs(config, shapes, seed=1)
    if config.max_batch_size > 0:
        return {n: np.ascontiguousarray(v[:1]) for n, v in inputs.items()}
    return inputs


@contextlib.contextmanager
def _quiet() -> Any:
    """torch's tracer and legacy exporter warn on every call (deprecations, trace caveats that
    the correctness check covers)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def onnx_to_torchscript(
    source: Path, config: ModelConfig, dest: Path, shapes: Mapping[str, Sequence[int]]
) -> None:
    """Write `dest` (TorchScript) computing the ONNX model `source` served with `config`."""
    import onnx
    import torch

    from perfkit.formats.onnx_torch import OnnxGraph, UnsupportedGraph, named

    model = onnx.load(str(source))
    try:
        graph = OnnxGraph(model)
    except UnsupportedGraph as exc:
        raise ConversionFailed(str(exc)) from None
    del model
    inputs = [t.name for t in config.input]
    outputs = [t.name for t in config.output]
    for kind, names, have in (("input", inputs, graph.input_names),
                              ("output", outputs, graph.output_names)):  # fmt: skip
        if set(names) - set(have):
            raise ConversionFailed(
                f"config {kind}(s) {sorted(set(names) - set(have))} are not the graph's {have}"
            )
    identifiers = all(n.isidentifier() and not keyword.iskeyword(n) for n in inputs)
    order = inputs if identifiers else tensor_order(inputs, [])
    arguments = order if identifiers else [f"input{i}" for i in range(len(order))]
    # forward() takes the config's inputs (by name), the graph its own order.
    taken = [order.index(n) for n in graph.input_names]
    returned = [graph.output_names.index(n) for n in tensor_order(outputs, [])]
    module = named(graph, arguments, taken, returned)
    example = _example(config, shapes)
    args = tuple(torch.from_numpy(example[n]) for n in order)
    try:
        with _quiet(), torch.inference_mode(False), torch.no_grad():
            traced = torch.jit.trace(module, args, check_trace=False)  # type: ignore[no-untyped-call]
            buffer = io.BytesIO()
            torch.jit.save(traced, buffer)
    except UnsupportedGraph as exc:
        raise ConversionFailed(str(exc)) from None
    except (RuntimeError, TypeError, ValueError, IndexError) as exc:
        raise ConversionFailed(f"tracing the graph failed: {_first_line(exc)}") from None
    write_atomic(dest, buffer.getvalue())


def torchscript_to_onnx(
    source: Path, config: ModelConfig, dest: Path, shapes: Mapping[str, Sequence[int]]
) -> None:
    """Write `dest` (ONNX) exported from the TorchScript model `source` served with `config`."""
    import torch

    module = torch.jit.load(str(source), map_location="cpu").eval()  # type: ignore[no-untyped-call]
    arguments = [a.name for a in module.forward.schema.arguments][1:]
    order = tensor_order([t.name for t in config.input], arguments)
    outputs = tensor_order([t.name for t in config.output], [])
    example = _example(config, shapes)
    args = tuple(torch.from_numpy(example[n]) for n in order)
    dynamic: dict[str, dict[int, str]] = {}
    batched = config.max_batch_size > 0
    for t in [*config.input, *config.output]:
        axes = {0: "batch"} if batched else {}
        axes.update({i + batched: f"{t.name}_{i}" for i, d in enumerate(t.dims) if d < 0})
        if axes:
            dynamic[t.name] = axes
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".perfkit-export.") as tmp:
        exported = Path(tmp) / dest.name
        try:
            with _quiet():
                torch.onnx.export(
                    module, args, str(exported), dynamo=False, input_names=order,
                    output_names=outputs, dynamic_axes=dynamic, opset_version=ONNX_OPSET,
                )  # fmt: skip
        except (
            Exception
        ) as exc:  # the exporter raises many kinds: each is a refusal with its reason
            raise ConversionFailed(
                f"torch.onnx.export (TorchScript-based, dynamo=False) failed: {_first_line(exc)}"
            ) from None
        os.chmod(exported, 0o644)
        os.replace(exported, dest)


def onnx_to_plan(
    source: Path,
    config: ModelConfig,
    dest: Path,
    max_batch: int,
    shapes: Mapping[str, Sequence[int]],
) -> None:
    """Write `dest` (a TensorRT engine) built from the ONNX model `source` on GPU 0.

    GPU only: correct by reading on machines without one."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    # TensorRT 10 networks are explicit-batch; 8.x asks for it by flag.
    explicit = 0
    if int(trt.__version__.split(".")[0]) < 10:
        explicit = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(explicit)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(source.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ConversionFailed(f"TensorRT's ONNX parser refused the model: {errors}")
    build = builder.create_builder_config()
    if config.max_batch_size > 0:
        profile = builder.create_optimization_profile()
        for t in config.input:
            dims = list(shapes.get(t.name, t.dims))
            if any(d < 0 for d in dims):
                raise ConversionFailed(f"input '{t.name}': give its shape in [load] shape")
            opt = max(1, max_batch // 2)
            profile.set_shape(t.name, [1, *dims], [opt, *dims], [max_batch, *dims])
        build.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, build)
    if engine is None:
        raise ConversionFailed("TensorRT could not build an engine (see its log)")
    write_atomic(dest, bytes(engine))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
