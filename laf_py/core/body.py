"""Request bodies and query strings into the plain Python values ``ctx`` carries."""

from __future__ import annotations

import codecs
from typing import Any
from urllib.parse import parse_qsl

from ..exceptions import HTTPError
from . import jsoncodec

__all__ = ["parse_body", "parse_query", "split_content_type"]


def split_content_type(header: str) -> tuple[str, dict[str, str]]:
    """``"Text/Plain; charset=UTF-8"`` → ``("text/plain", {"charset": "UTF-8"})``."""
    media_type, _, rest = header.partition(";")
    params: dict[str, str] = {}
    for part in rest.split(";"):
        key, sep, value = part.partition("=")
        if sep:
            params[key.strip().lower()] = value.strip().strip('"')
    return media_type.strip().lower(), params


def parse_query(query: str) -> dict[str, str]:
    """A query string as a dict; for a repeated key the last value wins."""
    return dict(parse_qsl(query, keep_blank_values=True)) if query else {}


def parse_body(content_type: str, raw: bytes) -> Any:
    """JSON → dict/list/…, urlencoded form → dict, text → str, other → bytes, empty → None.

    Raises HTTPError(400) for bodies that do not match what their content type promises.
    Multipart forms need a real parser and are handled by the server layer.
    """
    if not raw:
        return None
    media_type, params = split_content_type(content_type)
    if media_type == "application/json" or media_type.endswith("+json"):
        try:
            return jsoncodec.loads(raw)
        except jsoncodec.JSONDecodeError as exc:
            raise HTTPError(400, f"Invalid JSON body: {exc}") from None
    if media_type == "application/x-www-form-urlencoded":
        return parse_query(_decode(raw, "utf-8"))
    if media_type.startswith("text/"):
        return _decode(raw, params.get("charset", "utf-8"))
    return raw


def _decode(raw: bytes, charset: str) -> str:
    try:
        codecs.lookup(charset)
    except (LookupError, ValueError):  # unknown, or not even a name (a NUL inside)
        raise HTTPError(400, f"Unsupported charset {charset!r}") from None
    try:
        return raw.decode(charset)
    except UnicodeError:  # UnicodeDecodeError, and the bare UnicodeError of idna or punycode
        raise HTTPError(400, f"Body is not valid {charset}") from None
    except LookupError:  # a codec that exists but is not a text encoding, like base64
        raise HTTPError(400, f"Unsupported charset {charset!r}") from None
