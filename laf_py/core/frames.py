"""Server-to-client WebSocket frames (RFC 6455), encoded once so one message can be written to
any number of connections without encoding it again."""

from __future__ import annotations

import struct
from enum import Enum
from typing import Any

from . import jsoncodec

__all__ = [
    "BINARY",
    "PING",
    "TEXT",
    "close_frame",
    "close_reason",
    "encode_frame",
    "encode_payload",
    "frame",
    "frame_size",
    "payload_size",
]

TEXT = 0x1
BINARY = 0x2
CLOSE = 0x8
PING_OPCODE = 0x9
_FIN = 0x80
MAX_REASON_BYTES = 123  # a control frame carries at most 125 bytes, 2 of them the close code


def encode_payload(message: Any) -> tuple[int, bytes]:
    """str → text, bytes → binary, any other value → JSON text, encoded as HTTP bodies are
    (see ``jsoncodec``); what JSON cannot represent is a TypeError naming its key path."""
    if type(message) is str:
        return TEXT, message.encode()
    if isinstance(message, (bytes, bytearray, memoryview)):
        return BINARY, bytes(message)
    if isinstance(message, str) and not isinstance(message, Enum):  # a str Enum is JSON
        return TEXT, message.encode()
    return TEXT, jsoncodec.dumps(message)


def frame(opcode: int, payload: bytes) -> bytes:
    """One final, unmasked frame (servers never mask)."""
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", _FIN | opcode, length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", _FIN | opcode, 126, length)
    else:
        header = struct.pack("!BBQ", _FIN | opcode, 127, length)
    return header + payload


def encode_frame(message: Any) -> bytes:
    return frame(*encode_payload(message))


def frame_size(payload_length: int) -> int:
    """The length of the frame that carries a payload of ``payload_length`` bytes."""
    if payload_length < 126:
        return 2 + payload_length
    if payload_length < 1 << 16:
        return 4 + payload_length
    return 10 + payload_length


def payload_size(encoded: bytes) -> int:
    """The payload length of one frame made by :func:`frame`."""
    length = encoded[1] & 0x7F
    return len(encoded) - (2 if length < 126 else 4 if length == 126 else 10)


def close_reason(reason: str) -> str:
    """``reason`` cut to fit a close frame, on a character boundary."""
    return reason.encode()[:MAX_REASON_BYTES].decode("utf-8", "ignore")


def close_frame(code: int, reason: str) -> bytes:
    return frame(CLOSE, struct.pack("!H", code) + close_reason(reason).encode())


PING = frame(PING_OPCODE, b"")  # the same empty ping for every connection
