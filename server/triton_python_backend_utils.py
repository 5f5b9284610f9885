"""perfkit_server's `triton_python_backend_utils`: the API a Triton python-backend `model.py` uses.

Triton's stub fills this module with C++ classes (Tensor, InferenceRequest, InferenceResponse,
TritonError, ...); here they are plain Python with the same names, arguments, defaults and methods,
so one model.py runs on both servers. The stub process (perfkit_server.backends.python.stub) sets
`_runtime` to what needs the server: BLS (`InferenceRequest.exec`), logging and the model
directory. Imported as-is it needs only numpy, so a model's unit tests can import it too.
"""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Callable
from enum import IntEnum
from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[Any]

# Set by the stub: exec_request(request), model_control(action, name, **args), log(level,
# message), model_dir().
_runtime: Any = None

TRITONSERVER_REQUEST_FLAG_SEQUENCE_START = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_END = 2
TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
TRITONSERVER_REQUEST_RELEASE_ALL = 1
TRITONSERVER_REQUEST_RELEASE_RESCHEDULE = 2

TRITON_STRING_TO_NUMPY: dict[str, Any] = {
    "TYPE_BOOL": bool,
    "TYPE_UINT8": np.uint8,
    "TYPE_UINT16": np.uint16,
    "TYPE_UINT32": np.uint32,
    "TYPE_UINT64": np.uint64,
    "TYPE_INT8": np.int8,
    "TYPE_INT16": np.int16,
    "TYPE_INT32": np.int32,
    "TYPE_INT64": np.int64,
    "TYPE_FP16": np.float16,
    "TYPE_FP32": np.float32,
    "TYPE_FP64": np.float64,
    "TYPE_STRING": np.object_,
}
# TRITONSERVER_DataType values (Tensor.triton_dtype()), BYTES = 13.
_TRITON_DTYPES = {
    np.dtype(np.bool_): 1, np.dtype(np.uint8): 2, np.dtype(np.uint16): 3,
    np.dtype(np.uint32): 4, np.dtype(np.uint64): 5, np.dtype(np.int8): 6, np.dtype(np.int16): 7,
    np.dtype(np.int32): 8, np.dtype(np.int64): 9, np.dtype(np.float16): 10,
    np.dtype(np.float32): 11, np.dtype(np.float64): 12,
}  # fmt: skip
_BYTES_DTYPE = 13


def triton_string_to_numpy(triton_type_string: str) -> Any:
    return TRITON_STRING_TO_NUMPY[triton_type_string]


def triton_to_numpy_type(data_type: int) -> Any:
    if data_type == _BYTES_DTYPE:
        return np.object_
    for dtype, code in _TRITON_DTYPES.items():
        if code == data_type:
            return dtype.type
    return None


def numpy_to_triton_type(data_type: Any) -> int | None:
    if data_type in (np.object_, np.bytes_):
        return _BYTES_DTYPE
    return _TRITON_DTYPES.get(np.dtype(data_type))


def serialize_byte_tensor(input_tensor: Array) -> bytes | tuple[()] | None:
    """Triton's BYTES serialization (4-byte little-endian length + bytes per element, C order)."""
    if input_tensor.size == 0:
        return ()
    if input_tensor.dtype == np.object_ or input_tensor.dtype.type == np.bytes_:
        parts: list[bytes] = []
        for item in input_tensor.reshape(-1):
            data = item if isinstance(item, bytes) else str(item).encode("utf-8")
            parts.append(struct.pack("<I", len(data)))
            parts.append(data)
        return b"".join(parts)
    return None


def deserialize_bytes_tensor(encoded_tensor: bytes) -> Array:
    items: list[bytes] = []
    offset = 0
    while offset < len(encoded_tensor):
        (length,) = struct.unpack_from("<I", encoded_tensor, offset)
        offset += 4
        items.append(bytes(encoded_tensor[offset : offset + length]))
        offset += length
    return np.array(items, dtype=np.object_)


class TritonModelException(Exception):
    """Raised by a model (or this module) to fail initialize, execute or finalize."""


class TritonError:
    """An error carried by an InferenceResponse (not an exception, as in Triton)."""

    UNKNOWN = 0
    INTERNAL = 1
    NOT_FOUND = 2
    INVALID_ARG = 3
    UNAVAILABLE = 4
    UNSUPPORTED = 5
    ALREADY_EXISTS = 6
    CANCELLED = 7

    def __init__(self, message: str, code: int = INTERNAL) -> None:
        if message is None or code is None:
            raise TypeError("TritonError(message, code=TritonError.INTERNAL): None is not allowed")
        self._message = str(message)
        self._code = int(code)

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code

    def __repr__(self) -> str:
        return f"TritonError({self._message!r}, code={self._code})"


class Tensor:
    """A named tensor on the CPU, over a numpy array."""

    def __init__(self, name: str, data: Array) -> None:
        if not isinstance(data, np.ndarray):
            raise TypeError(f"Tensor '{name}': expected a numpy array, got {type(data).__name__}")
        if data.dtype.kind in "SU":
            data = data.astype(np.object_)
        elif data.dtype.kind == "O":
            pass
        elif np.dtype(data.dtype.newbyteorder("=")) not in _TRITON_DTYPES:
            raise TritonModelException(f"Tensor '{name}': unsupported numpy dtype {data.dtype}")
        self._name = str(name)
        self._array = np.ascontiguousarray(data)

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> Array:
        return self._array

    def triton_dtype(self) -> int:
        if self._array.dtype.kind == "O":
            return _BYTES_DTYPE
        return _TRITON_DTYPES[np.dtype(self._array.dtype.newbyteorder("="))]

    def shape(self) -> list[int]:
        return list(self._array.shape)

    def is_cpu(self) -> bool:
        return True

    def to_dlpack(self) -> Any:
        return self._array.__dlpack__()

    def __dlpack__(self, stream: Any = None) -> Any:
        return self._array.__dlpack__()

    def __dlpack_device__(self) -> tuple[int, int]:
        return self._array.__dlpack_device__()

    @staticmethod
    def from_dlpack(name: str, capsule: Any) -> Tensor:
        return Tensor(name, np.from_dlpack(capsule))

    def __repr__(self) -> str:
        return f"Tensor({self._name!r}, shape={self.shape()}, dtype={self._array.dtype})"


class InferenceResponse:
    """One response: output tensors, or an error."""

    def __init__(
        self,
        output_tensors: list[Tensor] | None = None,
        error: TritonError | None = None,
        parameters: dict[str, Any] | None = None,
    ) -> None:
        self._outputs = list(output_tensors or [])
        for t in self._outputs:
            if not isinstance(t, Tensor):
                raise TypeError(f"output_tensors must hold Tensor objects, got {type(t).__name__}")
        if error is not None and not isinstance(error, TritonError):
            raise TypeError(f"error must be a TritonError, got {type(error).__name__}")
        self._error = error
        self._parameters = json.dumps(parameters or {})

    def output_tensors(self) -> list[Tensor]:
        return self._outputs

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error

    def parameters(self) -> str:
        return self._parameters


class InferenceResponseSender:
    """Sends a request's responses (decoupled models, or one final response otherwise)."""

    def __init__(self, deliver: Callable[[InferenceResponse | None, int], None]) -> None:
        self._deliver = deliver
        self._closed = False

    def send(self, response: InferenceResponse | None = None, flags: int = 0) -> None:
        if self._closed:
            raise TritonModelException("Unable to send response. Response sender has been closed.")
        if response is not None and not isinstance(response, InferenceResponse):
            raise TypeError(f"response must be an InferenceResponse, got {type(response).__name__}")
        if flags & TRITONSERVER_RESPONSE_COMPLETE_FINAL:
            self._closed = True
        elif response is None:
            raise TritonModelException(
                "Inference Response object must be provided when the response flags is not "
                "TRITONSERVER_RESPONSE_COMPLETE_FINAL."
            )
        self._deliver(response, flags)

    def is_cancelled(self) -> bool:
        return False

    def _is_closed(self) -> bool:
        return self._closed


class InferenceRequest:
    """A request to this model (built by the stub) or, built by a model, a BLS request."""

    def __init__(
        self,
        request_id: str = "",
        correlation_id: int | str = 0,
        inputs: list[Tensor] | None = None,
        requested_output_names: list[str] | None = None,
        model_name: str | None = None,
        model_version: int = -1,
        flags: int = 0,
        timeout: int = 0,
        preferred_memory: Any = None,
        trace: Any = None,
        parameters: dict[str, Any] | str | None = None,
    ) -> None:
        if inputs is None or requested_output_names is None or model_name is None:
            raise TypeError(
                "InferenceRequest() needs inputs, requested_output_names and model_name"
            )
        if not isinstance(correlation_id, int | str):
            raise TritonModelException("Correlation ID must be integer or string")
        self._request_id = str(request_id)
        self._correlation_id = correlation_id
        self._inputs = list(inputs)
        self._requested = list(requested_output_names)
        self._model_name = str(model_name)
        self._model_version = int(model_version)
        self._flags = int(flags)
        self._timeout = int(timeout)
        if isinstance(parameters, str):
            self._parameters = parameters
        else:
            self._parameters = json.dumps(parameters or {})
        self._sender: InferenceResponseSender | None = None
        self._release_flags = TRITONSERVER_REQUEST_RELEASE_ALL

    def inputs(self) -> list[Tensor]:
        return self._inputs

    def request_id(self) -> str:
        return self._request_id

    def correlation_id(self) -> int | str:
        return self._correlation_id

    def flags(self) -> int:
        return self._flags

    def set_flags(self, flags: int) -> None:
        self._flags = int(flags)

    def timeout(self) -> int:
        return self._timeout

    def parameters(self) -> str:
        return self._parameters

    def model_name(self) -> str:
        return self._model_name

    def model_version(self) -> int:
        return self._model_version

    def requested_output_names(self) -> list[str]:
        return self._requested

    def get_response_sender(self) -> InferenceResponseSender:
        if self._sender is None:
            raise TritonModelException("only a request the model received has a response sender")
        return self._sender

    def is_cancelled(self) -> bool:
        return False

    def set_release_flags(self, flags: int) -> None:
        self._release_flags = int(flags)

    def exec(self, decoupled: bool = False) -> Any:
        """Run this request on the server (BLS) and wait: an InferenceResponse (errors as
        `response.error()`), or with `decoupled=True` an iterator of responses."""
        if _runtime is None:
            raise TritonModelException("InferenceRequest.exec() runs only inside a model's stub")
        response = _runtime.exec_request(self)
        if decoupled:
            return iter([response])
        return response

    async def async_exec(self, decoupled: bool = False) -> Any:
        import asyncio

        return await asyncio.get_running_loop().run_in_executor(None, self.exec, decoupled)


def get_input_tensor_by_name(inference_request: InferenceRequest, name: str) -> Tensor | None:
    for tensor in inference_request.inputs():
        if tensor.name() == name:
            return tensor
    return None


def get_output_tensor_by_name(inference_response: InferenceResponse, name: str) -> Tensor | None:
    for tensor in inference_response.output_tensors():
        if tensor.name() == name:
            return tensor
    return None


def get_input_config_by_name(model_config: dict[str, Any], name: str) -> dict[str, Any] | None:
    tensors: list[dict[str, Any]] = model_config.get("input", [])
    for properties in tensors:
        if properties["name"] == name:
            return properties
    return None


def get_output_config_by_name(model_config: dict[str, Any], name: str) -> dict[str, Any] | None:
    tensors: list[dict[str, Any]] = model_config.get("output", [])
    for properties in tensors:
        if properties["name"] == name:
            return properties
    return None


def using_decoupled_model_transaction_policy(model_config: dict[str, Any]) -> bool:
    if "model_transaction_policy" in model_config:
        return bool(model_config["model_transaction_policy"].get("decoupled", False))
    return False


def get_model_dir() -> str:
    if _runtime is None:
        raise TritonModelException("get_model_dir() runs only inside a model's stub")
    return str(_runtime.model_dir())


# -- the model loading API (Triton's tritonserver.h load/unload/readiness, explicit mode only) --


def _control(action: str, model_name: str, **args: Any) -> bool:
    if not isinstance(model_name, str):
        raise TypeError(f"model_name must be a str, got {type(model_name).__name__}")
    if _runtime is None:
        raise TritonModelException(f"{action} runs only inside a model's stub")
    return bool(_runtime.model_control(action, model_name, **args))


def is_model_ready(model_name: str, model_version: str = "") -> bool:
    """Whether the server serves the model (the version, or the one its policy picks if empty)."""
    if not isinstance(model_version, str):
        raise TypeError(f"model_version must be a str, got {type(model_version).__name__}")
    return _control("ready", model_name, model_version=model_version)


def load_model(model_name: str, config: str = "", files: dict[str, bytes] | None = None) -> None:
    """Load (or reload) a model from the repository, with `config` (JSON) overriding its
    config.pbtxt; the server must run with --model-control-mode=explicit."""
    if not isinstance(config, str):
        raise TypeError(f"config must be a str (the model config as JSON), got {type(config)}")
    if files is not None:
        if not isinstance(files, dict):
            raise TritonModelException(
                f"failed to load model '{model_name}', files should be a dictionary of file "
                "paths and file contents"
            )
        if files:
            raise TritonModelException(
                f"failed to load model '{model_name}', override files (files=...) are not "
                "supported by perfkit_server; put the files in the model repository and load "
                "the model without them"
            )
    _control("load", model_name, config=config)


def unload_model(model_name: str, unload_dependents: bool = False) -> None:
    """Unload a model (with `unload_dependents`, an ensemble's composing models too); returns
    once it stopped serving. The server must run with --model-control-mode=explicit."""
    _control("unload", model_name, unload_dependents=bool(unload_dependents))


class Logger:
    """Writes to the server's log (Triton: the tritonserver log, at the matching level)."""

    class LogLevel(IntEnum):
        INFO = 0
        WARNING = 1
        ERROR = 2
        VERBOSE = 3

    @staticmethod
    def log(message: str, level: Logger.LogLevel = LogLevel.INFO) -> None:
        if _runtime is None:
            sys.stderr.write(f"{Logger.LogLevel(level).name}: {message}\n")
        else:
            _runtime.log(int(level), str(message))

    @staticmethod
    def log_info(message: str) -> None:
        Logger.log(message, Logger.LogLevel.INFO)

    @staticmethod
    def log_warn(message: str) -> None:
        Logger.log(message, Logger.LogLevel.WARNING)

    @staticmethod
    def log_error(message: str) -> None:
        Logger.log(message, Logger.LogLevel.ERROR)

    @staticmethod
    def log_verbose(message: str) -> None:
        Logger.log(message, Logger.LogLevel.VERBOSE)


class ModelConfig:
    """The config an `auto_complete_config` staticmethod receives (this server does not call it:
    configs here must be complete, as with tritonserver --disable-auto-complete-config)."""

    def __init__(self, model_config: str) -> None:
        self._model_config: dict[str, Any] = json.loads(model_config)

    def as_dict(self) -> dict[str, Any]:
        return self._model_config

    def set_max_batch_size(self, max_batch_size: int) -> None:
        self._model_config["max_batch_size"] = max_batch_size

    def set_dynamic_batching(self) -> None:
        self._model_config.setdefault("dynamic_batching", {})

    def add_input(self, input: dict[str, Any]) -> None:
        self._model_config.setdefault("input", []).append(input)

    def add_output(self, output: dict[str, Any]) -> None:
        self._model_config.setdefault("output", []).append(output)

    def set_model_transaction_policy(self, transaction_policy_dict: dict[str, Any]) -> None:
        self._model_config.setdefault("model_transaction_policy", {}).update(
            transaction_policy_dict
        )
