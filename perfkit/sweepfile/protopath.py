"""A config field named by its path in model_config.proto, checked against the proto's descriptors.

    optimization.graph.level                       a scalar inside nested messages
    instance_group[0].count                        a repeated message by index
    instance_group[KIND_CPU].count                 every instance group of that kind
    input[INPUT0].optional                         a repeated message with a `name`, by name
    dynamic_batching.preferred_batch_size          a repeated scalar: each value is a list

`resolve(text)` parses a path and walks tritonclient's model_config_pb2 descriptors, so that a
path model_config.proto does not have, a message where a value is needed, or a map is refused
before any trial; `FieldPath.coerce` checks one sweep-file value against the leaf's proto type.
Whether a repeated entry exists (index 3 of a config with one instance group) depends on the
model's config: `perfkit.tune.knobs.set_field` checks it when a variant is built.

Pure: protobuf descriptors only. Errors are ValueError with the reason and what to do; the
sweep-file parser adds `file:key`.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import FieldDescriptor as FD

from perfkit.model_repo.config import ModelConfig

# Proto scalar type -> (its name in model_config.proto, kind, bits).
_SCALARS: dict[int, tuple[str, str, int]] = {
    FD.TYPE_DOUBLE: ("double", "float", 64),
    FD.TYPE_FLOAT: ("float", "float", 32),
    FD.TYPE_INT64: ("int64", "int", 64),
    FD.TYPE_SINT64: ("sint64", "int", 64),
    FD.TYPE_SFIXED64: ("sfixed64", "int", 64),
    FD.TYPE_INT32: ("int32", "int", 32),
    FD.TYPE_SINT32: ("sint32", "int", 32),
    FD.TYPE_SFIXED32: ("sfixed32", "int", 32),
    FD.TYPE_UINT64: ("uint64", "uint", 64),
    FD.TYPE_FIXED64: ("fixed64", "uint", 64),
    FD.TYPE_UINT32: ("uint32", "uint", 32),
    FD.TYPE_FIXED32: ("fixed32", "uint", 32),
    FD.TYPE_BOOL: ("bool", "bool", 0),
    FD.TYPE_STRING: ("string", "string", 0),
    FD.TYPE_ENUM: ("enum", "enum", 0),
}
_SEGMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:\[([^\[\]]+)\])?")


@dataclass(frozen=True, slots=True)
class Step:
    """One segment of a path: a field name and, for a repeated message, which entries."""

    name: str
    # An index, a kind ("KIND_CPU": every entry of that kind) or a name; None: not repeated.
    selector: int | str | None = None


@dataclass(frozen=True, slots=True)
class FieldPath:
    """A resolved path: its steps and the leaf field's descriptor."""

    text: str
    steps: tuple[Step, ...]
    leaf: Any  # google.protobuf.descriptor.FieldDescriptor

    @property
    def repeated(self) -> bool:
        return bool(self.leaf.label == FD.LABEL_REPEATED)

    @property
    def kind(self) -> str:
        """One of "int", "uint", "float", "bool", "string", "enum"."""
        return _SCALARS[self.leaf.type][1]

    @property
    def numeric(self) -> bool:
        """An integer or float with a magnitude (not an enum, not a list): an ordered dimension."""
        return not self.repeated and self.kind in ("int", "uint", "float")

    def type_name(self) -> str:
        """The leaf's type as model_config.proto declares it, e.g. "uint64" or
        "repeated int32", with where it is declared: "uint64 (ModelDynamicBatching.x)"."""
        name = _SCALARS[self.leaf.type][0]
        if self.leaf.type == FD.TYPE_ENUM:
            name = self.leaf.enum_type.name
        if self.repeated:
            name = f"repeated {name}"
        return f"{name} ({self.leaf.containing_type.name}.{self.leaf.name})"

    def enum_names(self) -> tuple[str, ...]:
        return tuple(v.name for v in self.leaf.enum_type.values)

    def coerce(self, value: Any) -> Any:
        """`value` (as TOML gives it) as this field takes it: a list becomes a tuple for a
        repeated field; ValueError says what the field wants."""
        if not self.repeated:
            return self._scalar(value)
        if not isinstance(value, list):
            raise ValueError(
                f"{value!r} is not a list: {self.text} has type {self.type_name()}, so each value "
                "is a list, e.g. [[4, 8], [16]]"
            )
        return tuple(self._scalar(item) for item in value)

    def _scalar(self, value: Any) -> Any:
        _, kind, bits = _SCALARS[self.leaf.type]
        what = f"{self.text} has type {self.type_name()}"
        if kind in ("int", "uint"):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{value!r} is not an integer: {what}")
            low = 0 if kind == "uint" else -(2 ** (bits - 1))
            high = 2**bits - 1 if kind == "uint" else 2 ** (bits - 1) - 1
            if not low <= value <= high:
                raise ValueError(f"{value} is out of range: {what} ({low} to {high})")
            return value
        if kind == "float":
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{value!r} is not a number: {what}")
            return float(value)
        if kind == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"{value!r} is not true or false: {what}")
            return value
        if kind == "enum":
            names = self.enum_names()
            if value not in names:
                raise ValueError(f"{value!r} is not allowed: {what}, one of {', '.join(names)}")
            return value
        if not isinstance(value, str):
            raise ValueError(f"{value!r} is not a string: {what}")
        return value


def parse_steps(text: str) -> tuple[Step, ...]:
    """The segments of a path; ValueError for text that is not `name[selector].name...`."""
    steps: list[Step] = []
    for part in text.split("."):
        match = _SEGMENT.fullmatch(part)
        if match is None:
            raise ValueError(
                f"{part!r} is not a field name (with an optional [index], [KIND_...] or [name]): "
                'write the path as in config.pbtxt, e.g. "instance_group[0].count"'
            )
        raw = match.group(2)
        selector: int | str | None = raw
        if raw is not None and raw.strip().isdigit():
            selector = int(raw)
        steps.append(Step(match.group(1), selector))
    return tuple(steps)


@functools.lru_cache(maxsize=256)
def resolve(text: str) -> FieldPath:
    """The field `text` names in model_config.proto; ValueError says what is wrong and what to do."""
    steps = parse_steps(text)
    message = ModelConfig.DESCRIPTOR
    leaf: Any = None
    for i, step in enumerate(steps):
        where = ".".join(s.name for s in steps[: i + 1])
        field = message.fields_by_name.get(step.name)
        if field is None:
            known = ", ".join(f.name for f in message.fields)
            raise ValueError(
                f"model_config.proto's {message.name} has no field {step.name!r} (at {where}); "
                f"its fields: {known}"
            )
        last = i == len(steps) - 1
        is_message = field.type == FD.TYPE_MESSAGE
        repeated = field.label == FD.LABEL_REPEATED
        if is_message and field.message_type.GetOptions().map_entry:
            hint = (
                " Backend parameters are searched under [space.parameters]."
                if where == "parameters"
                else ""
            )
            raise ValueError(f"{where} is a map, which [space.fields] cannot set.{hint}")
        if step.selector is not None and not (repeated and is_message):
            raise ValueError(
                f"{where} is not a repeated message: drop [{step.selector}] from the path"
            )
        if is_message:
            if repeated and step.selector is None:
                raise ValueError(
                    f"{where} is a repeated {field.message_type.name}: pick its entries with "
                    f"[0] (an index), [KIND_CPU] (every instance group of a kind) or [NAME]"
                )
            if repeated:
                _check_selector(field.message_type, step.selector, where)
            if last:
                names = ", ".join(f.name for f in field.message_type.fields)
                raise ValueError(
                    f"{where} is a message ({field.message_type.name}), not a value: name one "
                    f"of its fields, {names}"
                )
            message = field.message_type
            continue
        if not last:
            raise ValueError(f"{where} is a {_SCALARS[field.type][0]}, it has no fields")
        if field.type not in _SCALARS:
            raise ValueError(f"{where} is bytes, which [space.fields] cannot set")
        leaf = field
    return FieldPath(text, steps, leaf)


def _check_selector(message: Any, selector: int | str | None, where: str) -> None:
    if isinstance(selector, int):
        return
    kind = message.fields_by_name.get("kind")
    if kind is not None and kind.type == FD.TYPE_ENUM:
        names = [v.name for v in kind.enum_type.values]
        if selector in names:
            return
        if str(selector).startswith("KIND_"):
            raise ValueError(f"{where}[{selector}]: no such kind; the kinds: {', '.join(names)}")
    if "name" in message.fields_by_name:
        return
    raise ValueError(f"{where}[{selector}]: {message.name} is selected by index only, e.g. [0]")


def selects_kind(path: FieldPath) -> bool:
    """Whether a step selects entries by kind (their existence depends on the instance kinds)."""
    return any(isinstance(s.selector, str) and s.selector.startswith("KIND_") for s in path.steps)


def bare(text: str) -> str:
    """The path without its selectors: "instance_group[0].count" -> "instance_group.count"."""
    return ".".join(s.name for s in parse_steps(text))
