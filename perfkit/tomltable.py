"""Typed, checked access to the tables of a TOML document (the sweep file's reader).

Every error is a ConfigError that names `file:table.key` and the reason. Imports the stdlib and
perfkit.errors only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from perfkit.errors import ConfigError


class TableReader:
    """Typed access to one TOML table; every error names file:key."""

    def __init__(self, source: str, prefix: str, table: Mapping[str, Any]) -> None:
        self.source = source
        self.prefix = prefix
        self.table = table
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def fail(self, name: str, reason: str) -> ConfigError:
        return ConfigError(f"{self.source}:{self.key(name)}: {reason}")

    def raw(self, name: str) -> Any:
        self.used.add(name)
        return self.table.get(name)

    def str_(
        self, name: str, default: str | None = None, choices: tuple[str, ...] = ()
    ) -> str | None:
        value = self.raw(name)
        if value is None:
            return default
        if not isinstance(value, str) or not value:
            raise self.fail(name, f"must be a non-empty string, got {value!r}")
        if choices and value not in choices:
            raise self.fail(name, f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    def num(
        self,
        name: str,
        default: float | None,
        *,
        minimum: float | None = None,
        integer: bool = False,
    ) -> float | None:
        value = self.raw(name)
        if value is None:
            return default
        ok = isinstance(value, int) if integer else isinstance(value, int | float)
        if isinstance(value, bool) or not ok:
            kind = "an integer" if integer else "a number"
            raise self.fail(name, f"must be {kind}, got {value!r}")
        if minimum is not None and value < minimum:
            raise self.fail(name, f"must be >= {minimum:g}, got {value!r}")
        return float(value)

    def int_(self, name: str, default: int, *, minimum: int = 0) -> int:
        value = self.num(name, default, minimum=minimum, integer=True)
        return default if value is None else int(value)

    def bool_(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.fail(name, f"must be true or false, got {value!r}")
        return value

    def int_list(
        self, name: str, *, minimum: int = 0, default: tuple[int, ...] = ()
    ) -> tuple[int, ...]:
        value = self.raw(name)
        if value is None:
            return default
        items = value if isinstance(value, list) else [value]
        if not items:
            raise self.fail(name, "must list at least one value")
        for item in items:
            if isinstance(item, bool) or not isinstance(item, int):
                raise self.fail(name, f"values must be integers, got {item!r}")
            if item < minimum:
                raise self.fail(name, f"values must be >= {minimum}, got {item}")
        if len(set(items)) != len(items):
            raise self.fail(name, f"lists a value twice: {items}")
        return tuple(int(i) for i in items)

    def check_unknown(self, known: set[str]) -> None:
        for name in self.table:
            if name not in known:
                hint = f"; known keys: {', '.join(sorted(known))}" if known else ""
                raise self.fail(name, f"unknown key{hint}")


def table(source: str, doc: Mapping[str, Any], name: str) -> TableReader:
    value = doc.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(
            f"{source}:{name}: must be a table ([{name}]), got {type(value).__name__}"
        )
    return TableReader(source, name, value)
