"""What an HTTP function returns, and how it becomes status, headers and body bytes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from . import jsoncodec

__all__ = ["Rendered", "Response", "render"]

JSON_TYPE = "application/json"
TEXT_TYPE = "text/plain; charset=utf-8"
BYTES_TYPE = "application/octet-stream"


class Response:
    """A body with an explicit status, headers or content type.

    Return one from ``main(ctx)`` (``Response({"id": 1}, status=201)``), or set fields on
    ``ctx.response`` and return the body alone. ``status=None`` means 200, or 204 when the
    body is None.
    """

    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(
        self,
        body: Any = None,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
        content_type: str | None = None,
    ) -> None:
        self.body = body
        self.status = status
        self.headers: dict[str, str] = dict(headers or {})
        self.content_type = content_type

    def __repr__(self) -> str:
        return f"Response(status={self.status!r}, content_type={self.content_type!r})"


@dataclass(frozen=True, slots=True)
class Rendered:
    """A response ready for the wire."""

    status: int
    headers: dict[str, str]
    body: bytes


def render(result: Any, defaults: Response | None = None) -> Rendered:
    """Turn a function's return value (and ``ctx.response``, if touched) into a response.

    str → text, bytes → octet-stream, None → 204, anything else → JSON (see ``jsoncodec``).
    Raises TypeError, naming the type and its key path, for what JSON cannot represent.
    """
    status = defaults.status if defaults else None
    headers = dict(defaults.headers) if defaults else {}
    content_type = defaults.content_type if defaults else None
    if isinstance(result, Response):
        if result.status is not None:
            status = result.status
        headers.update(result.headers)
        content_type = result.content_type or content_type
        result = result.body

    if result is None:
        body, implied_type = b"", None
    elif isinstance(result, (dict, list)):  # the common case first; same as the last branch
        body, implied_type = jsoncodec.dumps(result), JSON_TYPE
    elif isinstance(result, (bytes, bytearray, memoryview)):
        body, implied_type = bytes(result), BYTES_TYPE
    elif type(result) is str or (isinstance(result, str) and not isinstance(result, Enum)):
        body, implied_type = result.encode(), TEXT_TYPE  # a str Enum is JSON, as when nested
    else:  # every other value as JSON; what JSON cannot hold is a TypeError naming it
        body, implied_type = jsoncodec.dumps(result), JSON_TYPE

    if status is None:
        status = 204 if result is None else 200
    final_type = content_type or implied_type
    if final_type and status != 204 and not _has_header(headers, "content-type"):
        headers["Content-Type"] = final_type
    return Rendered(status, headers, body)


def error_body(message: str, request_id: str) -> bytes:
    """The one JSON shape of every error laf-py sends."""
    return jsoncodec.dumps({"error": message, "request_id": request_id})


def _has_header(headers: Mapping[str, str], name: str) -> bool:
    return any(key.lower() == name for key in headers)
