"""Typed dataclasses from plain data (parsed TOML): type coercion, ranges, and unknown keys named with the nearest match.

One mechanism for every schema in the package: the config sections, the model knobs (a builder's
annotated signature) and the study suite file.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fasttrain.errors import UserError, did_you_mean


class ConfigError(UserError):
    """A config file, override or suite file that does not fit the schema."""


@dataclass(frozen=True)
class Range:
    """Bounds of a number, read from `Annotated[float, Range(0, 1, max_open=True)]` by `coerce`."""

    min: float | None = None
    max: float | None = None
    min_open: bool = False
    """Exclude `min` itself (a number > min)."""
    max_open: bool = False

    def holds(self, value: float) -> bool:
        low_ok = self.min is None or (value > self.min if self.min_open else value >= self.min)
        high_ok = self.max is None or (value < self.max if self.max_open else value <= self.max)
        return low_ok and high_ok

    def describe(self) -> str:
        if self.min is not None and self.max is not None:
            return f"in {'(' if self.min_open else '['}{self.min:g}, {self.max:g}{')' if self.max_open else ']'}"
        if self.min is not None:
            return f"{'>' if self.min_open else '>='} {self.min:g}"
        return f"{'<' if self.max_open else '<='} {self.max:g}"


_SINGULAR = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
_PLURAL = {int: "integers", float: "numbers", bool: "booleans", str: "strings"}


def _unwrap(tp: Any) -> tuple[Any, Range | None]:
    """(base type, its Range or None) of a possibly Annotated type."""
    if typing.get_origin(tp) is Annotated:
        base, *extras = typing.get_args(tp)
        return base, next((e for e in extras if isinstance(e, Range)), None)
    return tp, None


def type_name(tp: Any, plural: bool = False) -> str:
    """What a value of annotation `tp` must be, in words ("a list of 4 integers >= 1")."""
    base, bounds = _unwrap(tp)
    suffix = f" {bounds.describe()}" if bounds else ""
    origin = typing.get_origin(base)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(base))
    if origin is typing.Union:
        return type_name(next(a for a in typing.get_args(base) if a is not type(None)), plural)
    if origin in (list, tuple):
        args = typing.get_args(base)
        if dataclasses.is_dataclass(_unwrap(args[0])[0]):
            return "an array of tables"
        n = f"{len(args)} " if origin is tuple and Ellipsis not in args else ""
        return f"a list of {n}{type_name(args[0], plural=True)}"
    if dataclasses.is_dataclass(base):
        return "tables" if plural else "a table"
    words = _PLURAL.get(base, "values") if plural else _SINGULAR.get(base, str(base))
    return words + suffix


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp` (Annotated ranges included); return it in the schema's Python type."""
    base, bounds = _unwrap(tp)
    origin = typing.get_origin(base)
    bad = ConfigError(f"{where} must be {type_name(tp)}, got {type(value).__name__} {value!r}")
    if origin is typing.Union:
        if value is None and type(None) in typing.get_args(base):
            return None  # an unset optional value (from a checkpoint's config; TOML itself has no null)
        return coerce(value, next(a for a in typing.get_args(base) if a is not type(None)), where)
    if origin is Literal:
        choices = typing.get_args(base)
        if value not in choices:
            hint = did_you_mean(str(value), [str(a) for a in choices])
            raise ConfigError(f"{where} must be {type_name(base)}, got {value!r}; {hint}".rstrip("; "))
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise bad
        args = typing.get_args(base)
        if origin is tuple and Ellipsis not in args:
            if len(value) != len(args):
                raise bad
            return tuple(coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        return origin(coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    if base is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if base is str:
        if not isinstance(value, str):
            raise bad
        return value
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
    elif base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        value = float(value)
    else:
        raise TypeError(f"unsupported schema type {tp!r}")  # a schema bug, not a user error
    if bounds is not None and not bounds.holds(value):
        raise ConfigError(f"{where} must be {type_name(tp)}, got {value!r}")
    return value


def _is_required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def build_dataclass(cls: type, values: Any, where: str, table: str = "") -> Any:
    """An instance of dataclass `cls` from the TOML table `values`; errors name `where` (the file) and `table`.

    A field typed as a dataclass is a nested table ([key]); `tuple[SomeDataclass, ...]` is an array
    of tables ([[key]]). Unknown keys name the nearest valid one; required fields must be present.
    """
    at = f"{where}: {table}" if table else where
    if not isinstance(values, dict):
        raise ConfigError(f"{at} must be a table, got {type(values).__name__} {values!r}")
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            where_key = f" in {table}" if table else ""
            raise ConfigError(f"{where}: unknown key '{key}'{where_key}; {did_you_mean(key, list(fields))}"
                              f"valid keys: {', '.join(fields)}")
        kwargs[key] = _build_value(value, hints[key], where, f"{table} {key}".strip(), key)
    missing = [name for name, f in fields.items() if _is_required(f) and name not in values]
    if missing:
        raise ConfigError(f"{at}: missing '{missing[0]}' ({type_name(hints[missing[0]])})")
    return cls(**kwargs)


def _build_value(value: Any, tp: Any, where: str, location: str, key: str) -> Any:
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: '{key}' must be a table ([{key}]), got a {type(value).__name__}")
        return build_dataclass(tp, value, where, f"[{key}]")
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (list, tuple) and args and dataclasses.is_dataclass(args[0]):
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            raise ConfigError(f"{where}: '{key}' must be an array of tables ([[{key}]] entries)")
        return tuple(build_dataclass(args[0], item, where, f"[[{key}]] #{i + 1}") for i, item in enumerate(value))
    return coerce(value, tp, f"{where}: {location}")
