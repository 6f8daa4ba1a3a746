"""Step descriptors as JSON and back, generically: a dataclass is its fields, and reading one back
rebuilds nested dataclasses, tuples and optionals from the class's type hints.

The descriptors the steps hand each other (`Plan`, `ChunkResult`) change as the stages grow, so nothing
here lists their fields: a field added or renamed in the dataclass is carried as it is declared. What
can be carried is JSON's own values (None, bool, int, float, str), lists, tuples, dicts with string
keys, and dataclasses of those; anything else is refused when written, naming the field. The
document names its top-level type, which must be one of the `types` the caller allows: reading a
document never builds a class the caller did not name (the point of not pickling).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Iterable
from functools import cache
from typing import Any

_SCALARS = (type(None), bool, int, float, str)


def dumps(value: Any, allowed: Iterable[type]) -> bytes:
    """`value` (an instance of exactly one of the `allowed` types) as a JSON document."""
    kind = type(value)
    if kind not in tuple(allowed):
        raise TypeError(f"{kind.__name__} is not a step output type here: one of {_names(allowed)}")
    document = {"type": kind.__name__, "value": encode(value, kind.__name__)}
    return json.dumps(document, allow_nan=False).encode()


def loads(body: bytes, allowed: Iterable[type]) -> Any:
    """The value `dumps` wrote; ValueError when the document is not one or names a type not allowed."""
    by_name = {kind.__name__: kind for kind in allowed}
    try:
        document = json.loads(body)
        kind = by_name[document["type"]]
        value = document["value"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"not a step output document of {_names(allowed)}: {exc!r}") from exc
    return decode(value, kind, kind.__name__)


def encode(value: Any, where: str) -> Any:
    """JSON's structure of `value`: dataclasses as objects of their fields, tuples as lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: encode(getattr(value, f.name), f"{where}.{f.name}") for f in _init_fields(type(value))
        }
    if isinstance(value, list | tuple):
        return [encode(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            raise TypeError(f"{where}: a dict written as JSON needs string keys, got {list(value)[:5]}")
        return {key: encode(item, f"{where}.{key}") for key, item in value.items()}
    if isinstance(value, _SCALARS):
        return value
    raise TypeError(
        f"{where}: {type(value).__name__} cannot be written as JSON; declare it as None, bool, int, float, "
        "str, a list, tuple or dict (string keys) of those, or a dataclass"
    )


def decode(data: Any, hint: Any, where: str) -> Any:
    """`data` (JSON's structure) as the type `hint` declares; ValueError naming the field otherwise."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is object:
        return data
    if origin is typing.Union or origin is types.UnionType:
        return _decode_union(data, args, where)
    if dataclasses.is_dataclass(hint):
        return _decode_dataclass(data, hint, where)
    if hint is tuple or origin is tuple:
        items = _expect(data, list, where)
        if not args:
            return tuple(items)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(decode(item, args[0], f"{where}[{i}]") for i, item in enumerate(items))
        if len(items) != len(args):
            raise ValueError(f"{where}: expected {len(args)} items, got {len(items)}")
        return tuple(
            decode(item, arg, f"{where}[{i}]") for i, (item, arg) in enumerate(zip(items, args, strict=True))
        )
    if hint is list or origin is list:
        items = _expect(data, list, where)
        return [decode(item, args[0], f"{where}[{i}]") for i, item in enumerate(items)] if args else items
    if hint is dict or origin is dict:
        mapping = _expect(data, dict, where)
        value_hint = args[1] if args else Any
        return {key: decode(item, value_hint, f"{where}.{key}") for key, item in mapping.items()}
    if hint is float:
        return float(_expect(data, int | float, where))
    if hint is int:
        return _expect(data, int, where)
    if hint in _SCALARS:
        return _expect(data, hint, where)
    raise TypeError(f"{where}: {hint!r} cannot be read from JSON")


def _decode_union(data: Any, args: tuple, where: str) -> Any:
    if data is None and type(None) in args:
        return None
    problems = []
    for arg in (a for a in args if a is not type(None)):
        try:
            return decode(data, arg, where)
        except ValueError as exc:
            problems.append(str(exc))
    raise ValueError("; ".join(problems) or f"{where}: None where a value is required")


def _decode_dataclass(data: Any, kind: type, where: str) -> Any:
    fields = _expect(data, dict, where)
    hints = _hints(kind)
    declared = {f.name for f in _init_fields(kind)}
    unknown = sorted(set(fields) - declared)
    if unknown:
        raise ValueError(f"{where}: {kind.__name__} has no field {', '.join(unknown)}")
    values = {name: decode(value, hints[name], f"{where}.{name}") for name, value in fields.items()}
    try:
        return kind(**values)
    except TypeError as exc:  # a field without a default that the document lacks
        raise ValueError(f"{where}: {exc}") from exc


def _expect(data: Any, kind: Any, where: str) -> Any:
    # bool is an int to isinstance, but a count written as true is not one
    if not isinstance(data, kind) or (isinstance(data, bool) and kind is not bool):
        raise ValueError(f"{where}: expected {getattr(kind, '__name__', kind)}, got {data!r}"[:300])
    return data


@cache
def _hints(kind: type) -> dict[str, Any]:
    """The class's field types, its string annotations resolved in its own module."""
    return typing.get_type_hints(kind)


def _init_fields(kind: type) -> tuple[dataclasses.Field, ...]:
    """The fields the constructor takes: what a document carries (`init=False` ones are derived)."""
    return tuple(f for f in dataclasses.fields(kind) if f.init)


def _names(allowed: Iterable[type]) -> str:
    return ", ".join(kind.__name__ for kind in allowed)
