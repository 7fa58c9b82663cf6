"""JSON in and out, with orjson for speed and the standard library as a fallback."""

from __future__ import annotations

import json
from typing import Any

import orjson

__all__ = ["JSONDecodeError", "dumps", "loads"]

JSONDecodeError = orjson.JSONDecodeError
_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


def dumps(value: Any) -> bytes:
    """Encode to UTF-8 JSON bytes; raises TypeError for values JSON cannot represent."""
    try:
        return orjson.dumps(value, option=_OPTIONS)
    except TypeError:
        # orjson refuses integers past 64 bits and a few other things the stdlib accepts.
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def loads(data: bytes | str) -> Any:
    """Decode JSON; raises JSONDecodeError (a ValueError) on bad input."""
    return orjson.loads(data)
