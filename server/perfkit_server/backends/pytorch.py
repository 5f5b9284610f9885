"""PyTorch backend (platform `pytorch_libtorch` / backend `pytorch`): a TorchScript `model.pt` per
version directory, loaded with `torch.jit.load`, as Triton's pytorch backend (libtorch) serves it.

torch is optional (`pip install 'perfkit[torch]'`) and imported on the first load; without it a
pytorch model fails its own load and the others serve.

Tensors (Triton's rules, pytorch_backend src/pt/model_instance_state.cc):
- Inputs map to forward()'s arguments. When every config input is named after an argument, by name;
  else when every name is `<name>__<index>` (input__0, INPUT__1), by that index; else by their order
  in config.pbtxt. A forward() taking one `Dict[str, Tensor]` gets every input keyed by its name.
- Outputs map to the returned tensor or tuple: by `<name>__<index>` when every output is so named,
  else by their order in config.pbtxt. Their datatype is checked on every execution.
- Datatypes: BOOL, UINT8, INT8, INT16, INT32, INT64, FP16, FP32, FP64. BYTES (TYPE_STRING, a
  `List[str]` in TorchScript) is refused on load. No autocomplete: config.pbtxt names the tensors.

Parameters (string values; booleans as true/false, on/off or 1/0; unknown keys are ignored, as
Triton ignores them): INFERENCE_MODE (default true: torch.inference_mode, else no_grad),
DISABLE_OPTIMIZED_EXECUTION (the TorchScript graph executor's optimizations, per calling thread),
ENABLE_JIT_PROFILING, ENABLE_JIT_EXECUTOR, ENABLE_TENSOR_FUSER (set only when given; they are
process-wide in torch, so the last model to run sets them for all, as in Triton), DISABLE_CUDNN and
ENABLE_CACHE_CLEANING (GPU instances), ENABLE_WEIGHT_SHARING (instances on one device share one
loaded module), INTRA_OP_THREAD_COUNT and INTER_OP_THREAD_COUNT.

Threads: torch's intra-op and inter-op thread pools belong to the process, not to an instance.
As in Triton, the first pytorch model that sets INTRA_OP_THREAD_COUNT / INTER_OP_THREAD_COUNT sets
them for the whole server, once (a later model's different value is logged and not applied);
without them torch's defaults hold (one intra-op thread per core), so N instances running at once
can use N x that many threads: set INTRA_OP_THREAD_COUNT to cores / instances to avoid it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from perfkit.model_repo import ModelRepoError
from perfkit.model_repo.config import v2_datatype
from perfkit_server.backends.base import (
    Array,
    InstanceSpec,
    check_file_name,
    int_parameter,
    string_parameter,
)

logger = logging.getLogger(__name__)

BACKEND_NAME = "pytorch"
DEFAULT_FILENAME = "model.pt"
INSTALL_HINT = "pip install 'perfkit[torch]'"
CUDA_HINT = "pip install torch --index-url https://download.pytorch.org/whl/cu124"

# KServe v2 datatype -> torch dtype name: the types Triton's pytorch backend maps.
TORCH_DTYPES = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
}

# Triton's boolean parameters and their defaults (None: leave torch's setting alone).
BOOL_PARAMETERS: dict[str, bool | None] = {
    "INFERENCE_MODE": True,
    "DISABLE_OPTIMIZED_EXECUTION": False,
    "DISABLE_CUDNN": False,
    "ENABLE_CACHE_CLEANING": False,
    "ENABLE_WEIGHT_SHARING": False,
    "ENABLE_JIT_PROFILING": None,
    "ENABLE_JIT_EXECUTOR": None,
    "ENABLE_TENSOR_FUSER": None,
}
THREAD_PARAMETERS = ("INTRA_OP_THREAD_COUNT", "INTER_OP_THREAD_COUNT")

_INDEX_SEPARATOR = "__"


def model_path(version_dir: Path, config: Any) -> Path:
    """The TorchScript file of a version directory (`default_model_filename` or model.pt)."""
    name = check_file_name(
        config.default_model_filename or DEFAULT_FILENAME,
        "default_model_filename",
        f"model '{config.name}' config",
    )
    return version_dir / name


def bool_parameter(config: Any, key: str, source: str) -> bool | None:
    """A boolean parameter as Triton parses it (true/on/1, false/off/0, any case), else its default."""
    if key not in config.parameters:
        return BOOL_PARAMETERS[key]
    text = string_parameter(config, key, "")
    value = text.strip().lower()
    if value in {"true", "on", "1"}:
        return True
    if value in {"false", "off", "0"}:
        return False
    raise ValueError(
        f"{source}: parameters['{key}'].string_value must be true or false (or on/off, 1/0), "
        f"got {text!r}"
    )


def named_index(name: str) -> int | None:
    """The index of a `<name>__<index>` tensor name (after the first '__'), else None."""
    _, sep, tail = name.partition(_INDEX_SEPARATOR)
    if not sep or not tail.isdigit() or not tail.isascii():
        return None
    return int(tail)


def input_indices(names: list[str], arguments: list[str], source: str) -> dict[str, int]:
    """Config input name -> forward() argument position, by Triton's three conventions."""
    if all(n in arguments for n in names):
        return {n: arguments.index(n) for n in names}
    indices = {n: named_index(n) for n in names}
    if all(i is not None for i in indices.values()):
        mapping = {n: i for n, i in indices.items() if i is not None}
        for name, index in mapping.items():
            if index >= len(arguments) or list(mapping.values()).count(index) > 1:
                raise ValueError(
                    f"{source}: input '{name}': index {index} by the <name>__<index> convention, "
                    f"but forward() takes {len(arguments)} tensor argument(s) {arguments}: number "
                    f"the inputs 0 to {len(arguments) - 1}, once each, or name them after the "
                    "arguments"
                )
        return mapping
    logger.warning(
        "%s: inputs %s are neither all forward() arguments %s nor all <name>__<index>: "
        "mapped by their order in the config",
        source,
        names,
        arguments,
    )
    return {n: i for i, n in enumerate(names)}


def output_indices(names: list[str], returned: int, source: str) -> dict[str, int]:
    """Config output name -> position in what forward() returns (`returned` tensors)."""
    indices = {n: named_index(n) for n in names}
    if all(i is not None for i in indices.values()):
        mapping = {n: i for n, i in indices.items() if i is not None}
    else:
        mapping = {n: i for i, n in enumerate(names)}
    for name, index in mapping.items():
        if index >= returned:
            raise ValueError(
                f"{source}: output '{name}': maps to element {index} of what forward() returns, "
                f"but it returns {returned} tensor(s); name the outputs <name>__0 to "
                f"<name>__{returned - 1}, or list them in the order forward() returns them"
            )
    return mapping


def _check_datatypes(config: Any, source: str) -> None:
    for kind, tensors in (("input", config.input), ("output", config.output)):
        for t in tensors:
            try:
                v2 = v2_datatype(t.data_type)
            except (ModelRepoError, ValueError) as exc:
                raise ValueError(f"{source}: {kind} '{t.name}': {exc}") from None
            if v2 == "BYTES":
                raise ValueError(
                    f"{source}: {kind} '{t.name}': TYPE_STRING (BYTES) tensors are not supported "
                    "by this server's pytorch backend (TorchScript takes them as List[str]); use "
                    "a numeric type"
                )
            if v2 not in TORCH_DTYPES:
                raise ValueError(
                    f"{source}: {kind} '{t.name}': unsupported datatype TYPE_{v2} for the pytorch "
                    f"backend; it maps TYPE_{', TYPE_'.join(TORCH_DTYPES)}"
                )


def _import_torch(model: str) -> Any:
    try:
        import torch
    except ImportError as exc:
        raise ValueError(
            f"model '{model}': the pytorch backend needs torch, which is not installed here "
            f"({exc}); install it with: {INSTALL_HINT} (a CUDA build: {CUDA_HINT})"
        ) from None
    return torch


# -- process-wide state: thread pools (set once) and shared modules (ENABLE_WEIGHT_SHARING) -----

_lock = threading.Lock()
_threads: dict[str, int] = {}  # the thread counts set for this process, by parameter
_shared: dict[tuple[Any, ...], list[Any]] = {}  # key -> [module, users]


def _set_threads(torch: Any, config: Any, source: str) -> None:
    setters = {
        "INTRA_OP_THREAD_COUNT": (torch.set_num_threads, torch.get_num_threads),
        "INTER_OP_THREAD_COUNT": (torch.set_num_interop_threads, torch.get_num_interop_threads),
    }
    for key in THREAD_PARAMETERS:
        wanted = int_parameter(config, key, 0, source)
        if wanted <= 0:
            continue
        set_count, get_count = setters[key]
        with _lock:
            if key not in _threads:
                _threads[key] = wanted
                try:
                    set_count(wanted)
                    logger.info("%s: %s=%d set for this server's process", source, key, wanted)
                except RuntimeError as exc:  # inter-op: torch refuses once parallel work started
                    logger.warning("%s: %s=%d not applied: %s", source, key, wanted, exc)
        if get_count() != wanted:
            logger.warning(
                "%s: %s=%d asked for, but torch's pools are per process and already set to %d "
                "(the first pytorch model's value holds)",
                source,
                key,
                wanted,
                get_count(),
            )


def _file_key(path: Path) -> tuple[Any, ...]:
    st = path.stat()
    return (str(path), st.st_ino, st.st_size, st.st_mtime_ns)


class PyTorchBackend:
    """One TorchScript module per model instance (shared per device with ENABLE_WEIGHT_SHARING)."""

    def __init__(self, spec: InstanceSpec) -> None:
        config = spec.config
        source = f"model '{spec.model_name}' config"
        if not config.input or not config.output:
            raise ValueError(
                f"{source}: input/output: the pytorch backend cannot complete a config from a "
                "TorchScript file (nor does Triton's): list every input and output in config.pbtxt"
            )
        _check_datatypes(config, source)
        flags = {key: bool_parameter(config, key, source) for key in BOOL_PARAMETERS}
        path = model_path(spec.version_dir, config)
        if not path.is_file():
            raise FileNotFoundError(
                f"model '{spec.model_name}': unable to find '{path}' (the TorchScript file of "
                f"version {spec.version}; save it with torch.jit.save)"
            )
        torch = self._torch = _import_torch(spec.model_name)
        self._device = self._place(torch, spec)
        _set_threads(torch, config, source)
        self._inference_mode = bool(flags["INFERENCE_MODE"])
        self._optimize = not flags["DISABLE_OPTIMIZED_EXECUTION"]
        self._cudnn = not flags["DISABLE_CUDNN"]
        on_gpu = self._device is not None and self._device.type == "cuda"
        self._clean_cache = bool(flags["ENABLE_CACHE_CLEANING"]) and on_gpu
        self._jit = {
            key: value
            for key, value in flags.items()
            if key in {"ENABLE_JIT_PROFILING", "ENABLE_JIT_EXECUTOR", "ENABLE_TENSOR_FUSER"}
            and value is not None
        }
        self._share_key: tuple[Any, ...] | None = None
        if flags["ENABLE_WEIGHT_SHARING"]:
            self._share_key = (spec.model_name, spec.version, _file_key(path), str(self._device))
        self._module = self._load(path, spec)
        try:
            self._bind(config, source)
        except BaseException:
            self.close()
            raise
        # A CPU forward computes and returns; a GPU one waits for the device.
        self.may_block = on_gpu
        self._stream = torch.cuda.Stream(device=self._device) if self.may_block else None

    @staticmethod
    def _place(torch: Any, spec: InstanceSpec) -> Any:
        """The instance's device: cpu for KIND_CPU, cuda:<device_id> for KIND_GPU, None for
        KIND_MODEL (the module keeps the devices it was saved with)."""
        if spec.kind == "KIND_GPU":
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if count == 0:
                build = "a CPU-only build" if torch.version.cuda is None else "no GPU visible"
                raise ValueError(
                    f"model '{spec.model_name}': instance kind KIND_GPU (GPU {spec.device_id}), "
                    f"but torch {torch.__version__} sees no CUDA GPU ({build}); use KIND_CPU, or "
                    f"on a GPU host install a CUDA build of torch: {CUDA_HINT}"
                )
            if spec.device_id >= count:
                raise ValueError(
                    f"model '{spec.model_name}': instance kind KIND_GPU on GPU {spec.device_id}, "
                    f"but torch sees {count} GPU(s) (0 to {count - 1})"
                )
            return torch.device("cuda", spec.device_id)
        if spec.kind == "KIND_MODEL":
            return None  # the module places its own tensors, inputs arrive on the CPU (Triton's)
        return torch.device("cpu")

    def _load(self, path: Path, spec: InstanceSpec) -> Any:
        torch = self._torch
        if self._share_key is not None:
            with _lock:
                entry = _shared.get(self._share_key)
                if entry is not None:
                    entry[1] += 1
                    return entry[0]
        try:
            # Triton loads under the same inference-mode guard it runs with.
            with torch.inference_mode(self._inference_mode):
                module = torch.jit.load(str(path), map_location=self._device)
        except Exception as exc:  # torch's own errors: a corrupt or non-TorchScript file
            raise ValueError(
                f"model '{spec.model_name}': failed to load '{path}' as TorchScript: "
                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            ) from None
        if self._share_key is not None:
            with _lock:
                entry = _shared.setdefault(self._share_key, [module, 0])
                entry[1] += 1
                return entry[0]
        return module

    def _bind(self, config: Any, source: str) -> None:
        """Map config inputs/outputs onto forward()'s arguments and returns (load-time checks)."""
        schema = self._module.forward.schema
        arguments = list(schema.arguments)
        if arguments and arguments[0].type.kind() == "ClassType":
            arguments = arguments[1:]  # self
        names = [t.name for t in config.input]
        self._dict_input = len(arguments) == 1 and arguments[0].type.kind() == "DictType"
        self._input_index: dict[str, int] = {}
        if not self._dict_input:
            for arg in arguments:
                if arg.type.kind() != "TensorType":
                    raise ValueError(
                        f"{source}: forward() argument '{arg.name}' is a {arg.type}; this "
                        "server's pytorch backend passes Tensor arguments (or one "
                        "Dict[str, Tensor])"
                    )
            if len(arguments) != len(names):
                raise ValueError(
                    f"{source}: input: the configuration lists {len(names)} input(s) {names}, "
                    f"the model's forward() takes {len(arguments)} "
                    f"{[a.name for a in arguments]}"
                )
            self._input_index = input_indices(names, [a.name for a in arguments], source)
        self._input_names = names
        returns: Any = schema.returns[0].type if schema.returns else None
        kind = returns.kind() if returns is not None else "NoneType"
        elements = list(returns.elements()) if kind == "TupleType" else [returns]
        if kind not in {"TupleType", "TensorType"} or any(
            e.kind() != "TensorType" for e in elements
        ):
            raise ValueError(
                f"{source}: output: forward() returns {returns}; this server's pytorch backend "
                "serves a Tensor or a Tuple of Tensors"
            )
        self._output_index = output_indices([t.name for t in config.output], len(elements), source)
        torch = self._torch
        self._output_dtypes = {
            t.name: getattr(torch, TORCH_DTYPES[v2_datatype(t.data_type)]) for t in config.output
        }

    def _tensor(self, array: Array) -> Any:
        # The request's buffer may be read-only (a view of the received bytes): a model that
        # writes into its input must not write there, so such an array is copied first.
        if not array.flags.writeable:
            array = np.array(array)
        tensor = self._torch.from_numpy(array)
        if self._device is not None and self._device.type == "cuda":
            tensor = tensor.to(self._device)
        return tensor

    def _forward(self, inputs: Mapping[str, Array]) -> Any:
        torch = self._torch
        torch._C._set_graph_executor_optimize(self._optimize)
        for key, value in self._jit.items():
            if key == "ENABLE_JIT_PROFILING":
                torch._C._jit_set_profiling_mode(value)
            elif key == "ENABLE_JIT_EXECUTOR":
                torch._C._jit_set_profiling_executor(value)
            else:
                torch._C._jit_set_texpr_fuser_enabled(value)
        threads = _threads.get("INTRA_OP_THREAD_COUNT")
        if threads and torch.get_num_threads() != threads:
            torch.set_num_threads(threads)  # a thread that ran torch before the count was set
        guard = torch.inference_mode() if self._inference_mode else torch.no_grad()
        with guard:
            if self._dict_input:
                return self._module({n: self._tensor(inputs[n]) for n in self._input_names})
            args: list[Any] = [None] * len(self._input_index)
            for name, index in self._input_index.items():
                args[index] = self._tensor(inputs[name])
            return self._module(*args)

    def infer(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        if self._stream is None:
            returned = self._forward(inputs)
            return self._outputs(returned)
        torch = self._torch
        torch._C._set_cudnn_enabled(self._cudnn)
        with torch.cuda.stream(self._stream):
            returned = self._forward(inputs)
            outputs = self._outputs(returned)  # the copies to the host wait for the stream
        if self._clean_cache:
            torch.cuda.empty_cache()
        return outputs

    def _outputs(self, returned: Any) -> dict[str, Array]:
        elements = returned if isinstance(returned, tuple) else (returned,)
        out: dict[str, Array] = {}
        for name, index in self._output_index.items():
            tensor = elements[index]
            if tensor.dtype != self._output_dtypes[name]:
                raise ValueError(
                    f"configuration expects datatype {self._type_name(self._output_dtypes[name])}"
                    f" for output '{name}', model provides {self._type_name(tensor.dtype)}"
                )
            if tensor.dim() == 0:
                raise ValueError(f"output '{name}' is a scalar which is not supported")
            out[name] = tensor.detach().contiguous().cpu().numpy()
        return out

    def _type_name(self, dtype: Any) -> str:
        """Triton's name of a torch dtype in messages: TYPE_FP32."""
        for v2, name in TORCH_DTYPES.items():
            if getattr(self._torch, name) == dtype:
                return f"TYPE_{v2}"
        return str(dtype)

    def close(self) -> None:
        key, self._share_key = self._share_key, None
        if key is not None:
            with _lock:
                entry = _shared.get(key)
                if entry is not None:
                    entry[1] -= 1
                    if entry[1] <= 0:
                        del _shared[key]
        self._module = None
        if self._clean_cache:
            self._torch.cuda.empty_cache()


__all__ = [
    "BACKEND_NAME",
    "DEFAULT_FILENAME",
    "PyTorchBackend",
    "bool_parameter",
    "input_indices",
    "model_path",
    "named_index",
    "output_indices",
]
