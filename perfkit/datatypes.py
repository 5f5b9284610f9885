"""The one KServe v2 datatype table: v2 name <-> numpy dtype <-> config.pbtxt TYPE_* <-> byte size.

Pure, shared by perfkit and perfkit_server: imports numpy only, nothing else of perfkit, and raises
its own `UnknownDatatype` (a ValueError), which each side maps to its own error.

BYTES tensors are numpy object arrays of `bytes`, and have no fixed element size. BF16 has a config
type and a size but no numpy dtype: it is absent from `NP_BY_V2`, so neither side decodes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


class UnknownDatatype(ValueError):
    """A datatype name that is not in the table."""


@dataclass(frozen=True, slots=True)
class Datatype:
    """One row of the table."""

    v2: str
    """KServe v2 name, e.g. "FP32"."""
    config: str
    """config.pbtxt `DataType` enum name, e.g. "TYPE_FP32"."""
    numpy: np.dtype[Any] | None
    """numpy dtype (object for BYTES); None where numpy has none (BF16)."""
    byte_size: int | None
    """Bytes per element; None for BYTES (each element carries its own length)."""
    grpc_contents: str | None
    """gRPC `InferTensorContents` field holding typed values; None: raw contents only."""


def _row(v2: str, config: str, dtype: Any, byte_size: int | None, contents: str | None) -> Datatype:
    return Datatype(
        v2=v2,
        config=config,
        numpy=None if dtype is None else np.dtype(dtype),
        byte_size=byte_size,
        grpc_contents=contents,
    )


DATATYPES: tuple[Datatype, ...] = (
    _row("BOOL", "TYPE_BOOL", np.bool_, 1, "bool_contents"),
    _row("UINT8", "TYPE_UINT8", np.uint8, 1, "uint_contents"),
    _row("UINT16", "TYPE_UINT16", np.uint16, 2, "uint_contents"),
    _row("UINT32", "TYPE_UINT32", np.uint32, 4, "uint_contents"),
    _row("UINT64", "TYPE_UINT64", np.uint64, 8, "uint64_contents"),
    _row("INT8", "TYPE_INT8", np.int8, 1, "int_contents"),
    _row("INT16", "TYPE_INT16", np.int16, 2, "int_contents"),
    _row("INT32", "TYPE_INT32", np.int32, 4, "int_contents"),
    _row("INT64", "TYPE_INT64", np.int64, 8, "int64_contents"),
    # KServe v2 has no fp16_contents: FP16 travels raw.
    _row("FP16", "TYPE_FP16", np.float16, 2, None),
    _row("FP32", "TYPE_FP32", np.float32, 4, "fp32_contents"),
    _row("FP64", "TYPE_FP64", np.float64, 8, "fp64_contents"),
    _row("BYTES", "TYPE_STRING", np.object_, None, "bytes_contents"),
    _row("BF16", "TYPE_BF16", None, 2, None),
)

# Lookups are plain dicts so hot paths stay one dict lookup.
BY_V2: dict[str, Datatype] = {d.v2: d for d in DATATYPES}
BY_CONFIG: dict[str, Datatype] = {d.config: d for d in DATATYPES}
NP_BY_V2: dict[str, np.dtype[Any]] = {d.v2: d.numpy for d in DATATYPES if d.numpy is not None}
V2_BY_NP: dict[np.dtype[Any], str] = {dt: v2 for v2, dt in NP_BY_V2.items()}
# numpy dtype name ("float32", "object") -> v2, for callers holding str(array.dtype).
V2_BY_NP_NAME: dict[str, str] = {str(dt): v2 for dt, v2 in V2_BY_NP.items()}


def by_v2(v2: str) -> Datatype:
    """The row of a KServe v2 name (case-insensitive: "fp32" is FP32)."""
    try:
        return BY_V2[v2.upper()]
    except KeyError:
        raise UnknownDatatype(
            f"unknown datatype {v2!r}; expected one of {', '.join(sorted(BY_V2))}"
        ) from None


def by_config(name: str) -> Datatype:
    """The row of a config.pbtxt enum name ("TYPE_FP32")."""
    try:
        return BY_CONFIG[name]
    except KeyError:
        raise UnknownDatatype(f"data type {name} has no KServe v2 equivalent") from None
