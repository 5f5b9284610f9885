"""TensorRT plan backend (platform `tensorrt_plan` / backend `tensorrt`, `<version>/model.plan`).

A serialized TensorRT 10 engine, run through the tensorrt Python API: one IExecutionContext and one
CUDA stream per instance, on the instance's GPU (KIND_GPU only, as Triton's tensorrt backend). The
device buffers and the stream are torch's (torch.cuda): `pip install 'perfkit[gpu]'` brings
tensorrt and a CUDA build of torch. Both are imported lazily, when an instance loads; without them
the model's load fails naming the extra.

Per batch: inputs are copied to the GPU, `set_input_shape` and `set_tensor_address` bind them,
output buffers are sized from the context's inferred shapes, `execute_async_v3` runs on the
instance's stream and the outputs are copied back. An instance group's `profile` list names the
optimization profiles it may use; each batch takes the first whose ranges hold its input shapes.

Not supported (the load or the batch fails saying so): shape tensors and host-located inputs,
outputs whose shape depends on the data, BF16/FP8/INT4 inputs and outputs (no numpy type).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from perfkit.datatypes import NP_BY_V2
from perfkit.model_repo.config import v2_datatype
from perfkit_server.backends.base import Array, InstanceSpec, check_file_name

logger = logging.getLogger(__name__)

BACKEND_NAME = "tensorrt"
DEFAULT_FILENAME = "model.plan"
INSTALL = "pip install 'perfkit[gpu]'"
# tensorrt.DataType names -> KServe v2 names (the types numpy and torch both hold).
_TRT_TO_V2 = {
    "FLOAT": "FP32",
    "HALF": "FP16",
    "INT8": "INT8",
    "INT32": "INT32",
    "INT64": "INT64",
    "BOOL": "BOOL",
    "UINT8": "UINT8",
}


def _import(where: str) -> tuple[Any, Any]:
    """(tensorrt, torch), or a load failure naming what is missing and the extra."""
    try:
        import tensorrt as trt
    except (ImportError, OSError) as exc:
        raise ValueError(
            f"{where}: backend 'tensorrt' needs the tensorrt package ({exc}): {INSTALL}"
        ) from None
    try:
        import torch
    except ImportError:
        raise ValueError(
            f"{where}: backend 'tensorrt' keeps its buffers in torch CUDA tensors, and torch is "
            f"not installed: {INSTALL}"
        ) from None
    if not torch.cuda.is_available():
        raise ValueError(
            f"{where}: backend 'tensorrt' needs torch with CUDA (torch {torch.__version__} sees "
            f"no CUDA device): {INSTALL}, with a CUDA build of torch"
        )
    return trt, torch


def _profiles(group: Any, count: int, where: str) -> list[int]:
    """The optimization profiles an instance group may use (Triton: all listed, else profile 0)."""
    chosen: list[int] = []
    for text in group.profile:
        if not str(text).isdigit() or int(text) >= count:
            raise ValueError(
                f"{where}: instance group '{group.name}' profile {text!r}: the engine has "
                f"{count} optimization profile(s), 0 to {count - 1}"
            )
        chosen.append(int(text))
    return chosen or [0]


class TensorRTBackend:
    """One TensorRT execution context and CUDA stream per model instance, on its GPU."""

    def __init__(self, spec: InstanceSpec) -> None:
        where = f"model '{spec.model_name}' instance {spec.index}"
        if spec.kind != "KIND_GPU":
            raise ValueError(
                f"{where}: backend 'tensorrt' runs only on a GPU (KIND_GPU), not {spec.kind}"
            )
        trt, torch = _import(where)
        config = spec.config
        name = check_file_name(
            config.default_model_filename or DEFAULT_FILENAME, "default_model_filename", where
        )
        path = spec.version_dir / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: model file not found")
        self._torch = torch
        self._device = torch.device("cuda", spec.device_id)
        with torch.cuda.device(self._device):
            self._stream = torch.cuda.Stream(device=self._device)
            self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            self._engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
            if self._engine is None:
                raise ValueError(
                    f"{where}: {path} is not a TensorRT engine this tensorrt ({trt.__version__}) "
                    f"can load on GPU {spec.device_id} (engines are built for one TensorRT "
                    "version and GPU architecture)"
                )
            self._context = self._engine.create_execution_context()
        self._io = self._check_io(trt, spec, where)
        self._inputs = [n for n, (mode, _) in self._io.items() if mode == "INPUT"]
        # Every engine output needs a buffer; the config's outputs are the ones returned.
        self._outputs = [n for n, (mode, _) in self._io.items() if mode == "OUTPUT"]
        self._returned = [o.name for o in config.output]
        groups = config.instance_group
        self._profiles = (
            _profiles(groups[spec.group_index], self._engine.num_optimization_profiles, where)
            if spec.group_index < len(groups)
            else [0]
        )
        self._profile = -1
        self._where = where

    def _check_io(self, trt: Any, spec: InstanceSpec, where: str) -> dict[str, tuple[str, Any]]:
        """The engine's tensors (name -> (INPUT/OUTPUT, torch dtype)) checked against the config."""
        engine, config = self._engine, spec.config
        io: dict[str, tuple[str, Any]] = {}
        for i in range(engine.num_io_tensors):
            tensor = engine.get_tensor_name(i)
            mode = "INPUT" if engine.get_tensor_mode(tensor) == trt.TensorIOMode.INPUT else "OUTPUT"
            if engine.is_shape_inference_io(tensor) or (
                engine.get_tensor_location(tensor) != trt.TensorLocation.DEVICE
            ):
                raise ValueError(
                    f"{where}: engine tensor '{tensor}' is a shape tensor or lives on the host; "
                    "this server's tensorrt backend takes device tensors only"
                )
            trt_type = engine.get_tensor_dtype(tensor).name
            v2 = _TRT_TO_V2.get(trt_type)
            if v2 is None:
                raise ValueError(
                    f"{where}: engine tensor '{tensor}' is {trt_type}; this server's tensorrt "
                    f"backend takes {', '.join(_TRT_TO_V2.values())}"
                )
            io[tensor] = (mode, getattr(self._torch, str(NP_BY_V2[v2])))
            declared = {t.name: t for t in (config.input if mode == "INPUT" else config.output)}
            if tensor in declared and v2_datatype(declared[tensor].data_type) != v2:
                raise ValueError(
                    f"{where}: {mode.lower()} '{tensor}': the config says "
                    f"{v2_datatype(declared[tensor].data_type)}, the engine {v2}"
                )
            if mode == "INPUT" and tensor not in declared:
                raise ValueError(
                    f"{where}: the engine's input '{tensor}' is not in the config; declare it"
                )
        for kind, tensors in (("INPUT", config.input), ("OUTPUT", config.output)):
            for t in tensors:
                if io.get(t.name, ("",))[0] != kind:
                    raise ValueError(
                        f"{where}: {kind.lower()} '{t.name}' of the config is not an engine "
                        f"{kind.lower()} (engine tensors: {', '.join(io) or 'none'})"
                    )
        return io

    def _choose_profile(self, shapes: Mapping[str, Sequence[int]]) -> None:
        for profile in self._profiles:
            if all(self._fits(name, shape, profile) for name, shape in shapes.items()):
                if profile != self._profile:
                    self._context.set_optimization_profile_async(profile, self._stream.cuda_stream)
                    self._profile = profile
                return
        raise ValueError(
            f"{self._where}: input shapes {dict(shapes)} are outside the ranges of the instance's "
            f"optimization profiles {self._profiles}"
        )

    def _fits(self, name: str, shape: Sequence[int], profile: int) -> bool:
        low, _, high = self._engine.get_tensor_profile_shape(name, profile)
        return len(low) == len(shape) and all(
            lo <= d <= hi for lo, d, hi in zip(low, shape, high, strict=True)
        )

    def infer(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        torch, context = self._torch, self._context
        with torch.cuda.device(self._device), torch.cuda.stream(self._stream):
            self._choose_profile({n: a.shape for n, a in inputs.items()})
            keep: list[Any] = []  # device buffers live until the stream is done with them
            for name in self._inputs:
                array = np.ascontiguousarray(inputs[name])
                if not array.flags.writeable:
                    array = array.copy()  # torch.from_numpy wants a writable array
                device = torch.from_numpy(array).to(self._device, non_blocking=True)
                keep.append(device)
                if not context.set_input_shape(name, tuple(array.shape)):
                    raise ValueError(f"{self._where}: input '{name}' shape {array.shape} refused")
                context.set_tensor_address(name, device.data_ptr())
            unresolved = context.infer_shapes()
            if unresolved:
                raise ValueError(f"{self._where}: shapes of {unresolved} cannot be inferred")
            results: dict[str, Any] = {}
            for name in self._outputs:
                shape = tuple(context.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise ValueError(
                        f"{self._where}: output '{name}' has a data-dependent shape {shape}, "
                        "which this server's tensorrt backend does not support"
                    )
                out = torch.empty(shape, dtype=self._io[name][1], device=self._device)
                context.set_tensor_address(name, out.data_ptr())
                results[name] = out
            if not context.execute_async_v3(self._stream.cuda_stream):
                raise RuntimeError(f"{self._where}: TensorRT execution failed")
            host = {name: results[name].to("cpu") for name in self._returned}
            self._stream.synchronize()
            del keep
        return {name: t.numpy() for name, t in host.items()}

    def close(self) -> None:
        self._context = None
        self._engine = None
        self._runtime = None
