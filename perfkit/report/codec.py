"""Result dataclasses <-> JSON values, driven by the dataclass annotations (so the JSON form cannot
drift from `perfkit.results`). Stdlib only; knows nothing of files or schema versions.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar, Union

from perfkit.errors import ConfigError

T = TypeVar("T")

# ---------------------------------------------------------------------------------------------
# Encoding


def _encode(value: Any) -> Any:
    """Dataclass values -> JSON-ready values. Non-finite floats become null (strict JSON)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {_encode_key(k): _encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _encode_key(key: Any) -> str:
    # JSON object keys are strings; the decoder turns them back into the annotated key type.
    if isinstance(key, float) and key.is_integer():
        return repr(key)  # "99.0", so that it reads back as a float key
    return str(key)


def encode_value(value: Any) -> Any:
    """The JSON form of any result value (a Measurement, a TrialRecord, ...)."""
    return _encode(value)


# ---------------------------------------------------------------------------------------------
# Decoding


class DecodeError(Exception):
    """A JSON value that does not fit its annotation; the message starts with the key path."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")


def _decode(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _decode(inner[0], value, where)
    if origin is typing.Literal:
        if value not in args:
            raise DecodeError(where, f"{value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return decode_dataclass(tp, value, where)
    if origin is tuple:
        if not isinstance(value, list):
            raise DecodeError(where, f"expected a list, found {type(value).__name__}")
        item = args[0]
        return tuple(_decode(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise DecodeError(where, f"expected an object, found {type(value).__name__}")
        key_tp, val_tp = args
        return {
            _decode_key(key_tp, k, where): _decode(val_tp, v, f"{where}.{k}")
            for k, v in value.items()
        }
    if tp is float:
        if value is None:
            return math.nan
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise DecodeError(where, f"expected a number, found {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise DecodeError(where, f"expected an integer, found {value!r}")
        return value
    if tp is bool or tp is str:
        if not isinstance(value, tp):
            raise DecodeError(where, f"expected {tp.__name__}, found {value!r}")
        return value
    return value  # Any


def _decode_key(tp: Any, key: str, where: str) -> Any:
    try:
        return tp(key) if tp in (int, float) else key
    except ValueError as exc:
        raise DecodeError(where, f"key {key!r} is not {tp.__name__}") from exc


def decode_dataclass(cls: type[T], value: Any, where: str) -> T:
    """A dataclass from its JSON form; raises `DecodeError` naming the key path."""
    if not isinstance(value, dict):
        raise DecodeError(where, f"expected an object, found {type(value).__name__}")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name not in value:
            has_default = (
                f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            )
            if has_default:
                continue
            raise DecodeError(where, f"missing key {f.name!r}")
        kwargs[f.name] = _decode(hints[f.name], value[f.name], f"{where}.{f.name}")
    return cls(**kwargs)


def decode_value(cls: type[T], value: Any, where: str = "$") -> T:
    """A result dataclass (e.g. Measurement) from its JSON form; `ConfigError` names the key."""
    try:
        return decode_dataclass(cls, value, where)
    except DecodeError as exc:
        raise ConfigError(f"{exc}: does not match {cls.__name__}.") from exc
