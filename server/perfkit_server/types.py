"""V2 request/response values, and decoding/encoding of their tensors through perfkit.datatypes' table
(KServe v2 datatype <-> numpy dtype; BYTES tensors are numpy object arrays of `bytes`)."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from perfkit.datatypes import NP_BY_V2, V2_BY_NP
from perfkit_server.errors import InvalidInput

Array = npt.NDArray[Any]


def v2_of_array(array: Array) -> str:
    """V2 datatype of a numpy array (strings and bytes map to BYTES)."""
    if array.dtype.kind in "OSU":
        return "BYTES"
    try:
        return V2_BY_NP[array.dtype]
    except KeyError:
        raise InvalidInput(f"unsupported output dtype {array.dtype}") from None


@dataclass(slots=True)
class InferInput:
    """One decoded input tensor."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: Array


@dataclass(slots=True)
class RequestedOutput:
    """An output the client asked for; `binary` is HTTP's binary_data (None: request default)."""

    name: str
    binary: bool | None = None


@dataclass(slots=True)
class InferRequest:
    """A transport-independent inference request."""

    model_name: str
    model_version: str
    id: str
    inputs: list[InferInput]
    outputs: list[RequestedOutput] = field(default_factory=list)
    priority: int = 0
    timeout_us: int | None = None
    # Set by a transport when every request it decodes from the same header shares this object
    # (same input names, datatypes and shapes, same outputs): the dataplane checks such a request
    # against its model once, not every time. None: check this request.
    signature: object | None = None
    # Requested outputs that go to shared memory: name -> perfkit_server.shm.OutputSlot.
    shm_outputs: dict[str, Any] | None = None
    # The request-level parameters other than priority and timeout (and HTTP's
    # binary_data_output), as Python values: sequence_id (int or str), sequence_start,
    # sequence_end, and any custom parameter. None: there were none.
    parameters: dict[str, Any] | None = None


@dataclass(slots=True)
class InferOutput:
    """One output tensor of a response."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: Array


@dataclass(slots=True)
class InferResponse:
    """A transport-independent inference response."""

    model_name: str
    model_version: str
    id: str
    outputs: list[InferOutput]
    # Decoupled models (`DataPlane.infer_stream`): a response may be an error instead of outputs,
    # and only the last response of a request is final.
    error: Exception | None = None
    final: bool = True


def check_shape(name: str, shape: Any) -> tuple[int, ...]:
    """Validate a request's shape list: non-negative ints."""
    try:
        dims = tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        raise InvalidInput(
            f"input '{name}': shape must be a list of integers, got {shape!r}"
        ) from None
    if any(d < 0 for d in dims):
        raise InvalidInput(f"input '{name}': shape {list(dims)} has a negative dimension")
    return dims


def _element_count(shape: tuple[int, ...]) -> int:
    count = 1
    for d in shape:
        count *= d
    return count


def deserialize_bytes(name: str, buf: bytes | bytearray | memoryview, count: int) -> Array:
    """Decode Triton's BYTES wire format: each element is a 4-byte little-endian length + bytes."""
    view = memoryview(buf)
    items: list[bytes] = []
    offset = 0
    while offset < len(view):
        if offset + 4 > len(view):
            raise InvalidInput(f"input '{name}': truncated BYTES element length")
        (length,) = struct.unpack_from("<I", view, offset)
        offset += 4
        if offset + length > len(view):
            raise InvalidInput(f"input '{name}': BYTES element overruns the tensor data")
        items.append(bytes(view[offset : offset + length]))
        offset += length
    if len(items) != count:
        raise InvalidInput(
            f"input '{name}': expected {count} BYTES elements for its shape, got {len(items)}"
        )
    array = np.empty(count, dtype=np.object_)
    array[:] = items
    return array


def serialize_bytes(array: Array) -> bytes:
    """Encode a BYTES tensor in Triton's wire format."""
    parts: list[bytes] = []
    for item in array.reshape(-1):
        data = item if isinstance(item, bytes) else str(item).encode()
        parts.append(struct.pack("<I", len(data)))
        parts.append(data)
    return b"".join(parts)


def raw_layout(
    name: str, datatype: str, shape: tuple[int, ...], size: int
) -> tuple[np.dtype[Any] | None, int]:
    """Check a raw tensor's datatype, and its byte size against datatype x shape.

    Returns (numpy dtype, or None for BYTES, whose size only its data tells; element count).
    """
    dtype = NP_BY_V2.get(datatype)
    if dtype is None:
        raise InvalidInput(f"input '{name}': unsupported datatype '{datatype}'")
    count = _element_count(shape)
    if datatype == "BYTES":
        return None, count
    expected = count * dtype.itemsize
    if size != expected:
        raise InvalidInput(
            f"input '{name}': unexpected byte size {size}, expected {expected} for "
            f"datatype {datatype} and shape {list(shape)}"
        )
    return dtype, count


def array_from_raw(
    name: str, datatype: str, shape: tuple[int, ...], raw: bytes | memoryview
) -> Array:
    """Decode a raw (binary) tensor; refuse a byte size that does not match datatype x shape."""
    dtype, count = raw_layout(name, datatype, shape, len(raw))
    if dtype is None:
        return deserialize_bytes(name, raw, count).reshape(shape)
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def array_from_json(name: str, datatype: str, shape: tuple[int, ...], data: Any) -> Array:
    """Decode a JSON tensor (`data` flat or nested, row-major)."""
    dtype = NP_BY_V2.get(datatype)
    if dtype is None:
        raise InvalidInput(f"input '{name}': unsupported datatype '{datatype}'")
    if datatype == "BYTES":
        items = _flatten(data)
        if not all(isinstance(x, str) for x in items):  # bytes(10**9) would allocate 1 GB
            raise InvalidInput(f"input '{name}': BYTES data must be JSON strings")
        flat = np.array([x.encode() for x in items], dtype=np.object_)
    else:
        try:
            flat = np.asarray(data, dtype=dtype).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(
                f"input '{name}': data does not match datatype {datatype}: {exc}"
            ) from None
    count = _element_count(shape)
    if flat.size != count:
        raise InvalidInput(
            f"input '{name}': got {flat.size} elements, expected {count} for shape {list(shape)}"
        )
    return flat.reshape(shape)


def _flatten(data: Any) -> list[Any]:
    if isinstance(data, list):
        out: list[Any] = []
        for item in data:
            out.extend(_flatten(item))
        return out
    return [data]


def array_to_raw(array: Array) -> bytes:
    """Raw bytes of an output tensor (row-major)."""
    if array.dtype.kind in "OSU":
        return serialize_bytes(array)
    return np.ascontiguousarray(array).tobytes()


def array_to_json(array: Array) -> list[Any]:
    """Flat JSON list of an output tensor."""
    if array.dtype.kind in "OSU":
        return [
            x.decode(errors="replace") if isinstance(x, bytes) else str(x)
            for x in array.reshape(-1)
        ]
    flat: list[Any] = array.reshape(-1).tolist()
    return flat
