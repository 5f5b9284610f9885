"""The correctness check of a candidate: the source and the candidate run here, in this process, on
the same seeded sample inputs, and every output is compared within a stated tolerance.

Sample inputs: the config's shapes (a -1 dimension from the sweep's `load.shape`), a batch of 2
when the model batches; floating point ~N(0, 1), integers in [0, 8), booleans at random, from a
fixed seed. Tolerance per output datatype (`TOLERANCES`): an element passes when
|candidate - source| <= atol + rtol * |source| (numpy's allclose); integers and booleans must be
equal. The check reports the largest absolute error and the largest relative error (over the
elements whose source value exceeds atol).

The runners import onnxruntime, torch and tensorrt when called.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from perfkit.model_repo.config import ModelConfig, v2_datatype

Arrays = dict[str, np.ndarray[Any, Any]]
Runner = Callable[[Arrays], Arrays]

# Output datatype -> (atol, rtol).
TOLERANCES: dict[str, tuple[float, float]] = {
    "FP32": (1e-4, 1e-3),
    "FP64": (1e-6, 1e-5),
    "FP16": (1e-2, 1e-2),
    "BF16": (2e-2, 2e-2),
}
_NUMPY = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}
SEED = 20261201
BATCH = 2


class Unverifiable(Exception):
    """The check cannot run (an input shape unknown, a datatype with no sample values)."""


@dataclass(frozen=True, slots=True)
class Check:
    """The outcome of comparing a candidate's outputs with the source's."""

    ok: bool
    max_abs_error: float
    max_rel_error: float
    # The output with the largest error relative to its tolerance, and why it failed ("" if ok).
    worst_output: str
    failure: str = ""

    def describe(self) -> str:
        text = f"max abs error {self.max_abs_error:.2e}, max rel error {self.max_rel_error:.2e}"
        return text if self.ok else f"{text}: {self.failure}"


def tolerance_text() -> str:
    """The tolerances in words, for notes."""
    floats = ", ".join(f"{k} atol {a:g} + rtol {r:g}" for k, (a, r) in TOLERANCES.items())
    return f"{floats}; integers and booleans exact"


def sample_inputs(
    config: ModelConfig, shapes: Mapping[str, Sequence[int]], *, seed: int = SEED
) -> Arrays:
    """Seeded inputs of the config's shapes (batch of `BATCH` when max_batch_size allows)."""
    rng = np.random.default_rng(seed)
    batch = min(BATCH, config.max_batch_size) if config.max_batch_size > 0 else 0
    out: Arrays = {}
    for t in config.input:
        dims = list(shapes.get(t.name, t.dims))
        if any(d < 0 for d in dims):
            raise Unverifiable(
                f"input '{t.name}' has a variable dimension {list(t.dims)}: give its shape in "
                f'the sweep\'s [load] shape = ["{t.name}:d1,d2"]'
            )
        shape = ([batch] if batch else []) + dims
        datatype = v2_datatype(t.data_type)
        if datatype in ("FP16", "FP32", "FP64", "BF16"):
            values = rng.standard_normal(shape)
            out[t.name] = values.astype(np.float32 if datatype == "BF16" else _NUMPY[datatype])
        elif datatype == "BOOL":
            out[t.name] = rng.integers(0, 2, size=shape).astype(np.bool_)
        elif datatype in _NUMPY:
            out[t.name] = rng.integers(0, 8, size=shape).astype(_NUMPY[datatype])
        else:
            raise Unverifiable(f"input '{t.name}': no sample values for TYPE_{datatype}")
    return out


def compare(config: ModelConfig, reference: Arrays, candidate: Arrays) -> Check:
    """Every config output of `candidate` against `reference`, within `TOLERANCES`."""
    max_abs = max_rel = 0.0
    worst, failure, worst_ratio = "", "", -1.0
    for t in config.output:
        datatype = v2_datatype(t.data_type)
        if t.name not in candidate:
            return Check(False, max_abs, max_rel, t.name, f"output '{t.name}' is missing")
        ref, got = np.asarray(reference[t.name]), np.asarray(candidate[t.name])
        if ref.shape != got.shape:
            return Check(
                False, max_abs, max_rel, t.name,
                f"output '{t.name}' has shape {list(got.shape)}, the source's {list(ref.shape)}",
            )  # fmt: skip
        if datatype not in TOLERANCES:
            differ = int(np.count_nonzero(ref != got))
            err = float(np.max(np.abs(ref.astype(np.float64) - got), initial=0.0))
            max_abs = max(max_abs, err)
            if differ and not failure:
                worst, failure = t.name, f"output '{t.name}': {differ} values differ (exact)"
            continue
        atol, rtol = TOLERANCES[datatype]
        a, b = ref.astype(np.float64), got.astype(np.float64)
        finite = np.isfinite(a)
        if not np.array_equal(finite, np.isfinite(b)):
            return Check(
                False, math.inf, math.inf, t.name,
                f"output '{t.name}' has non-finite values where the source's are finite (or "
                "the reverse)",
            )  # fmt: skip
        a, b = a[finite], b[finite]
        diff = np.abs(a - b)
        err = float(np.max(diff, initial=0.0))
        big = np.abs(a) > atol
        rel = float(np.max(diff[big] / np.abs(a[big]), initial=0.0))
        max_abs, max_rel = max(max_abs, err), max(max_rel, rel)
        ratio = float(np.max(diff / (atol + rtol * np.abs(a)), initial=0.0))
        if ratio > worst_ratio:
            worst, worst_ratio = t.name, ratio
        if ratio > 1.0 and not failure:
            failure = (
                f"output '{t.name}' differs by up to {err:.2e} (tolerance atol {atol:g} + "
                f"rtol {rtol:g} x |source|, {datatype})"
            )
    return Check(not failure, max_abs, max_rel, worst, failure)


# -- runners: the source and the candidates, run here --------------------------------------------


def ort_runner(path: Path, config: ModelConfig, providers: Sequence[str]) -> Runner:
    """An ONNX Runtime session on `path` with `providers`, fed the config's inputs by name."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=list(providers))
    names = [t.name for t in config.output]

    def run(inputs: Arrays) -> Arrays:
        values = session.run(names, dict(inputs))
        return {n: np.asarray(v) for n, v in zip(names, values, strict=True)}

    return run


def tensor_order(names: Sequence[str], arguments: Sequence[str]) -> list[str]:
    """The config inputs in forward()'s argument order, by Triton's pytorch backend's rules: by
    argument name when every input is one, else by `<name>__<index>`, else in config order."""
    if all(n in arguments for n in names):
        return sorted(names, key=list(arguments).index)
    indices = [_index(n) for n in names]
    if all(i is not None for i in indices):
        return [n for _, n in sorted(zip(indices, names, strict=True))]
    return list(names)


def _index(name: str) -> int | None:
    _, sep, tail = name.partition("__")
    return int(tail) if sep and tail.isascii() and tail.isdigit() else None


def torch_runner(path: Path, config: ModelConfig, device: str) -> Runner:
    """A TorchScript module (torch.jit.load) on `device`, its inputs and outputs mapped as Triton's
    pytorch backend maps them (`tensor_order`)."""
    import torch

    module = torch.jit.load(str(path), map_location=device).eval()  # type: ignore[no-untyped-call]
    arguments = [a.name for a in module.forward.schema.arguments][1:]  # without self
    order = tensor_order([t.name for t in config.input], arguments)
    outputs = tensor_order([t.name for t in config.output], [])

    def run(inputs: Arrays) -> Arrays:
        with torch.inference_mode():
            args = [torch.from_numpy(np.array(inputs[n])).to(device) for n in order]
            returned = module(*args)
        elements = returned if isinstance(returned, tuple) else (returned,)
        return {
            n: elements[i].detach().cpu().numpy()
            for i, n in enumerate(outputs)
            if i < len(elements)
        }

    return run


def plan_runner(path: Path, config: ModelConfig) -> Runner:
    """A TensorRT engine on GPU 0, its I/O tensors bound by name (torch CUDA tensors as buffers).
    GPU only: correct by reading on machines without one."""
    import tensorrt as trt
    import torch

    logger = trt.Logger(trt.Logger.ERROR)
    engine = trt.Runtime(logger).deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise Unverifiable(f"TensorRT cannot deserialize {path.name}")
    context = engine.create_execution_context()
    names = [t.name for t in config.output]

    def run(inputs: Arrays) -> Arrays:
        stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]
        held = {n: torch.from_numpy(np.array(v)).cuda() for n, v in inputs.items()}
        for name, tensor in held.items():
            context.set_input_shape(name, tuple(tensor.shape))
            context.set_tensor_address(name, tensor.data_ptr())
        outs: dict[str, Any] = {}
        for name in names:
            shape = tuple(context.get_tensor_shape(name))
            dtype = getattr(torch, str(np.dtype(trt.nptype(engine.get_tensor_dtype(name)))))
            outs[name] = torch.empty(shape, dtype=dtype, device="cuda")
            context.set_tensor_address(name, outs[name].data_ptr())
        torch.cuda.synchronize()  # the inputs' copies (default stream) are done
        if not context.execute_async_v3(stream.cuda_stream):
            raise Unverifiable("TensorRT failed to run the engine")
        stream.synchronize()
        return {n: t.cpu().numpy() for n, t in outs.items()}

    return run
