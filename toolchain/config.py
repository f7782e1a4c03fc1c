"""Stage configs: frozen dataclasses that validate themselves and refuse unknown keys."""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from typing import Any, TypeVar

from .errors import RecipeError

C = TypeVar("C")


def config_from_dict(cls: type[C], data: dict[str, Any] | None, where: str = "config") -> C:
    """Build `cls` from a plain dict (a recipe's YAML, a manifest's JSON); unknown keys are errors.

    >>> config_from_dict(ExportConfig, {"opset": 17})  # doctest: +SKIP
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: must be a mapping of option names to values, got {type(data).__name__}",
                          "write the config as `key: value` lines")
    if not all(isinstance(k, str) for k in data):
        raise RecipeError(f"{where}: keys must be text, got {next(k for k in data if not isinstance(k, str))!r}",
                          "write option names as words")
    data = dict(data)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise _keyed(RecipeError(f"{where}: unknown key {unknown[0]!r} for {cls.__name__}",
                                 f"use one of: {', '.join(sorted(fields))}"), unknown[0])
    hints = typing.get_type_hints(cls)
    for name, value in data.items():
        try:
            data[name] = _coerce(value, hints[name], f"{where}.{name}")
        except RecipeError as exc:
            raise _keyed(exc, name) from None
    try:
        return cls(**data)
    except (TypeError, ValueError) as exc:
        error = RecipeError(f"{where}: {exc}", "correct the value in the config")
        # The key the message names, preferring ones the caller set: a recipe points at its line.
        named = [k for k in [*data, *fields] if re.search(rf"\b{re.escape(k)}\b", str(exc))]
        raise (_keyed(error, named[0]) if named else error) from None


def _keyed(exc: RecipeError, key: str) -> RecipeError:
    exc.key = key
    return exc


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """The JSON-ready dict of a config, as stored in the manifest's lineage."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()}


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check `value` against a simple type hint; lists become tuples so configs stay hashable."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except RecipeError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is typing.Literal:
        if value not in args:
            raise RecipeError(f"{where}: {value!r} is not one of {list(args)}", "pick one of the listed values")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"{where}: expected a list, got {type(value).__name__}", "write a YAML list")
        inner = args[0] if args else Any
        return tuple(_coerce(v, inner, where) for v in value)
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if hint is float and isinstance(value, float) and not math.isfinite(value):
        # YAML reads .inf and .nan; no setting means them, and int(inf) steps would crash much later.
        raise RecipeError(f"{where}: expected a finite number, got {value!r}", "write a finite number")
    if hint in (int, float, str, bool):
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise RecipeError(
                f"{where}: expected {hint.__name__}, got {type(value).__name__} {value!r}",
                f"write a {hint.__name__}",
            )
    return value
