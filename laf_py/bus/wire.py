"""Messages between nodes: a small JSON header, a NUL byte, then the frame bytes as they go
to the sockets (encoded once, by the sender)."""

from __future__ import annotations

from typing import Any

from ..core import jsoncodec

__all__ = ["decode", "encode"]

_SEPARATOR = b"\x00"  # never inside JSON text


def encode(header: dict[str, Any], frame: bytes = b"") -> bytes:
    return jsoncodec.dumps(header) + _SEPARATOR + frame


def decode(data: bytes) -> tuple[dict[str, Any], bytes]:
    header, _, frame = data.partition(_SEPARATOR)
    decoded: dict[str, Any] = jsoncodec.loads(header)
    return decoded, frame
