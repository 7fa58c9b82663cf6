"""JSON in and out: one encoding for HTTP bodies, WebSocket frames and ``cloud.kv``.

The same value encodes the same way at the top level and nested: dict, list, tuple,
set/frozenset (→ array), str, int, float, bool, None, ``datetime``/``date``/``time`` (ISO 8601),
``UUID``, ``Decimal`` (a number with its exact digits), ``Enum`` (its value) and dataclasses (their
public fields). Anything else is a TypeError naming the type and where it sits
(``cannot encode value at $.items[2].when: Foo is not JSON-serialisable``).

The fast path is one ``orjson.dumps`` call; its ``default`` hook only runs for the few types orjson
does not know. Only when that call fails is the value walked in Python (:func:`_rebuild`): to encode
what orjson cannot (integers past 64 bits, a ``time`` with a time zone) or to find the key path of
what nobody can.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import date, time
from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID

import orjson

__all__ = ["JSONDecodeError", "dumps", "dumps_strict", "loads"]

JSONDecodeError = orjson.JSONDecodeError
_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY
_MIN_INT, _MAX_INT = -(2**63), 2**64 - 1  # what orjson encodes itself
_MAX_DEPTH = 254  # orjson's nesting limit; deeper is almost always a circular reference
_NULL = orjson.Fragment(b"null")


def dumps(value: Any) -> bytes:
    """Encode to UTF-8 JSON bytes; raises TypeError (with the key path) for what JSON cannot
    represent. Float and Decimal NaN/Infinity become null, as orjson does."""
    try:
        return orjson.dumps(value, default=_default, option=_OPTIONS)
    except TypeError:
        pass  # the slow path, outside the except block: no "during handling" noise in tracebacks
    rebuilt = _rebuild(value, False, None, 0)
    try:
        return orjson.dumps(rebuilt, default=_default, option=_OPTIONS)
    except TypeError as exc:  # not expected: _rebuild vets everything orjson refuses
        raise TypeError(f"cannot encode value at $: {exc}") from None


def dumps_strict(value: Any) -> str:
    """Strict JSON text with the standard library, for storage: NaN and Infinity are refused
    (ValueError), integers of any size stay exact. Accepts the same types as :func:`dumps`;
    they are stored as their JSON form (a ``datetime`` becomes its ISO string, a ``Decimal``
    the number ``json.loads`` reads back)."""
    try:
        return _strict(value)
    except TypeError:
        pass
    return _strict(_rebuild(value, True, None, 0))


def loads(data: bytes | str) -> Any:
    """Decode JSON; raises JSONDecodeError (a ValueError) on bad input."""
    return orjson.loads(data)


# -- the hooks the encoders call for types they do not know ------------------------------------


def _default(value: Any) -> Any:
    """orjson's hook: only called for types orjson does not encode itself."""
    if isinstance(value, Decimal):
        return orjson.Fragment(str(value)) if value.is_finite() else _NULL
    if isinstance(value, (set, frozenset, tuple)):  # orjson leaves namedtuples to us
        return list(value)
    if isinstance(value, float):  # float subclasses
        return float(value)
    raise TypeError


def _strict(value: Any) -> str:
    return json.dumps(
        value, allow_nan=False, ensure_ascii=False, separators=(",", ":"), default=_strict_default
    )


def _strict_default(value: Any) -> Any:
    """The standard library's hook: the types orjson knows and it does not."""
    if isinstance(value, Decimal):
        return _strict_decimal(value)
    if isinstance(value, (set, frozenset)):
        return list(value)
    if isinstance(value, Enum):
        return value.value
    if _is_dataclass(value):
        return _dataclass_fields(value)
    if isinstance(value, (date, time, UUID)):
        return _leaf(value, True)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _strict_decimal(value: Decimal) -> Any:
    if not value.is_finite():
        raise ValueError(f"Out of range value is not JSON compliant: {value!r}")
    return json.loads(str(value))  # int or float: what the exact number reads back as


def _is_dataclass(value: Any) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def _dataclass_fields(value: Any) -> dict[str, Any]:
    """What orjson writes for a dataclass: its public attributes (no ``_private`` ones)."""
    attributes = getattr(value, "__dict__", None)
    if attributes is not None:
        return {k: v for k, v in attributes.items() if not k.startswith("_")}
    return {
        f.name: getattr(value, f.name)
        for f in dataclasses.fields(value)
        if not f.name.startswith("_")
    }


def _leaf(value: Any, strict: bool) -> Any:
    """datetime, date, time, UUID (and, on the wire, numpy values): their JSON form."""
    if isinstance(value, time) and value.tzinfo is not None:
        return value.isoformat()  # orjson refuses a time with a time zone
    encoded = orjson.dumps(value, option=_OPTIONS)  # TypeError when orjson does not know it
    return orjson.loads(encoded) if strict else orjson.Fragment(encoded)


# -- the slow path: only after the fast encoder failed ------------------------------------------

# A key path as a linked list (parent, step): nothing is formatted unless there is an error.
_Path = tuple[Any, Any] | None


def _rebuild(value: Any, strict: bool, path: _Path, depth: int) -> Any:
    """``value`` as plain lists, str-keyed dicts and scalars the final encoder takes as they
    are; integers past 64 bits become exact number fragments for orjson. Raises TypeError
    naming the key path of the first value nothing can encode."""
    if depth > _MAX_DEPTH:
        raise TypeError(
            f"cannot encode value at {_format(path)}: nested more than {_MAX_DEPTH} levels deep "
            "(a circular reference?)"
        )
    if value is None or isinstance(value, (bool, float)):
        return value
    if isinstance(value, str):
        if not strict:
            try:
                value.encode()
            except UnicodeEncodeError:
                raise TypeError(
                    f"cannot encode value at {_format(path)}: str with a lone surrogate "
                    "is not valid UTF-8"
                ) from None
        return value
    if isinstance(value, int):
        if strict or _MIN_INT <= value <= _MAX_INT:
            return value
        return orjson.Fragment(int.__repr__(value).encode())
    if isinstance(value, dict):
        return {
            _key(key, path): _rebuild(item, strict, (path, key), depth + 1)
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_rebuild(item, strict, (path, i), depth + 1) for i, item in enumerate(value)]
    if isinstance(value, Enum):
        return _rebuild(value.value, strict, path, depth + 1)
    if _is_dataclass(value):
        return _rebuild(_dataclass_fields(value), strict, path, depth + 1)
    if isinstance(value, Decimal):
        if strict:
            return _strict_decimal(value)
        return _default(value)
    if isinstance(value, (date, time, UUID)) or not strict:
        try:
            return _leaf(value, strict)
        except TypeError:
            pass
    raise TypeError(
        f"cannot encode value at {_format(path)}: {type(value).__name__} is not JSON-serialisable"
    )


def _key(key: Any, path: _Path) -> str:
    """A dict key as the text orjson writes for it (OPT_NON_STR_KEYS)."""
    if isinstance(key, str):
        return key
    if isinstance(key, int) and not isinstance(key, bool) and not _MIN_INT <= key <= _MAX_INT:
        return int.__repr__(key)
    if isinstance(key, time) and key.tzinfo is not None:
        return key.isoformat()
    try:
        text: str = next(iter(orjson.loads(orjson.dumps({key: None}, option=_OPTIONS))))
    except TypeError:
        raise TypeError(
            f"cannot encode a key at {_format(path)}: {type(key).__name__} is not valid as a "
            "JSON object key"
        ) from None
    return text


def _format(path: _Path) -> str:
    steps: list[Any] = []
    while path is not None:
        path, step = path
        steps.append(step)
    text = "$"
    for step in reversed(steps):
        if isinstance(step, str):
            text += f".{step}" if step.isidentifier() else f"[{json.dumps(step)}]"
        elif isinstance(step, int) and not isinstance(step, bool):
            text += f"[{step}]"
        else:
            text += f"[{step!r}]"
    if len(text) > 300:  # a circular reference: the start tells where it is
        text = text[:300] + "…"
    return text
