"""Client-to-server WebSocket frames (RFC 6455), parsed without I/O: bytes in, events out.

The server feeds whatever the socket gave it, in chunks of any size, and gets back the complete
events in order. Every rule a server MUST enforce is checked here, so a broken or hostile client
ends with the close code RFC 6455 prescribes, not with whatever the reading code happens to do:
unmasked frames, reserved bits, unknown opcodes, fragmented or oversized control frames, stray
continuations, invalid UTF-8, invalid close codes, and messages past the size limits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = [
    "BINARY",
    "CLOSE",
    "FAILED",
    "INVALID_DATA",
    "MESSAGE_TOO_BIG",
    "PING",
    "PONG",
    "PROTOCOL_ERROR",
    "TEXT",
    "FrameParser",
    "is_valid_close_code",
    "unmask",
]

# Opcodes, which are also the kinds of the events ``feed`` returns.
CONTINUATION = 0x0
TEXT = 0x1
BINARY = 0x2
CLOSE = 0x8
PING = 0x9
PONG = 0xA
FAILED = -1  # not an opcode: the connection must fail, with (code, reason)

# Close codes of the failures found here.
PROTOCOL_ERROR = 1002
INVALID_DATA = 1007
MESSAGE_TOO_BIG = 1009

MAX_FRAGMENTS = 1024  # frames one message may arrive in; browsers send one

Event = tuple[int, Any]


def unmask(mask: bytes, payload: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte ``mask``, in pure Python (one big-integer XOR). The
    server passes Tornado's C version instead; this one keeps the parser free of Tornado."""
    length = len(payload)
    if not length:
        return b""
    key = (mask * (length // 4 + 1))[:length]
    xored = int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")
    return xored.to_bytes(length, "little")


def is_valid_close_code(code: int) -> bool:
    """May a peer send this code in a close frame? (RFC 6455 7.4, and IANA's registry.)"""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


class _Failure(Exception):
    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason


class FrameParser:
    """Parses one connection's incoming frames.

    ``feed(data)`` returns a list of events: ``(TEXT, str)``, ``(BINARY, bytes)``,
    ``(PING, bytes)``, ``(PONG, bytes)``, ``(CLOSE, (code or None, reason))``, and at most one
    ``(FAILED, (code, reason))``, always last, after which the parser takes nothing more.
    """

    __slots__ = (
        "_failed",
        "_fragments",
        "_max_size",
        "_message_opcode",
        "_message_parts",
        "_message_size",
        "_needed",
        "_unmask",
        "_waiting",
    )

    def __init__(self, max_size: int, unmask: Callable[[bytes, bytes], bytes] = unmask) -> None:
        self._max_size = max_size
        self._unmask = unmask
        # Chunks of a frame that has not fully arrived, and how many bytes it needs in all:
        # joined once it is complete, so a large frame costs one copy, not one per chunk.
        self._waiting: list[bytes] = []
        self._needed = 0
        self._failed = False
        # A message arriving in fragments: its opcode, parts, size and count of frames.
        self._message_opcode = 0
        self._message_parts: list[bytes] = []
        self._message_size = 0
        self._fragments = 0

    def feed(self, data: bytes) -> list[Event]:
        if self._failed:
            return []
        if self._waiting:
            self._waiting.append(data)
            self._needed -= len(data)
            if self._needed > 0:
                return []
            buffer = b"".join(self._waiting)
            self._waiting = []
        else:
            buffer = data
        events: list[Event] = []
        position = 0
        try:
            while True:
                consumed = self._parse_frame(buffer, position, events)
                if consumed <= 0:
                    break
                position += consumed
        except _Failure as failure:
            self._failed = True
            self._waiting = self._message_parts = []
            events.append((FAILED, (failure.code, failure.reason)))
            return events
        if position < len(buffer):
            self._waiting = [buffer[position:]]
            self._needed = -consumed - (len(buffer) - position)
        return events

    def _parse_frame(self, buffer: bytes, start: int, events: list[Event]) -> int:
        """Parse the frame at ``start`` and return its length; if it has not fully arrived,
        return minus the number of bytes it needs from ``start`` (as far as known yet)."""
        available = len(buffer) - start
        if available < 2:
            return -2
        first, second = buffer[start], buffer[start + 1]
        final = first & 0x80
        opcode = first & 0x0F
        if first & 0x70:
            raise _Failure(PROTOCOL_ERROR, "reserved bits set")
        if not second & 0x80:
            raise _Failure(PROTOCOL_ERROR, "client frames must be masked")
        length = second & 0x7F
        header = 6  # two bytes, then the mask
        if length == 126:
            if available < 4:
                return -4
            length = int.from_bytes(buffer[start + 2 : start + 4], "big")
            header = 8
        elif length == 127:
            if available < 10:
                return -10
            length = int.from_bytes(buffer[start + 2 : start + 10], "big")
            header = 14
        self._check_frame(opcode, final, length)
        end = start + header + length
        if len(buffer) < end:
            return -(header + length)
        mask = buffer[start + header - 4 : start + header]
        payload = self._unmask(mask, buffer[start + header : end]) if length else b""
        self._frame(opcode, final, payload, events)
        return header + length

    def _check_frame(self, opcode: int, final: int, length: int) -> None:
        """What can be judged from the header alone, before waiting for the payload."""
        if opcode >= CLOSE:
            if opcode > PONG:
                raise _Failure(PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")
            if not final:
                raise _Failure(PROTOCOL_ERROR, "fragmented control frame")
            if length > 125:
                raise _Failure(PROTOCOL_ERROR, "control frame too long")
            return
        if opcode == CONTINUATION:
            if not self._fragments:
                raise _Failure(PROTOCOL_ERROR, "continuation frame without a message")
            if self._fragments >= MAX_FRAGMENTS:
                raise _Failure(MESSAGE_TOO_BIG, "message in too many fragments")
            size = self._message_size + length
        elif opcode in (TEXT, BINARY):
            if self._fragments:
                raise _Failure(PROTOCOL_ERROR, "new message before the last one ended")
            size = length
        else:
            raise _Failure(PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")
        if size > self._max_size:
            raise _Failure(MESSAGE_TOO_BIG, "message too big")

    def _frame(self, opcode: int, final: int, payload: bytes, events: list[Event]) -> None:
        if opcode >= CLOSE:
            events.append((opcode, _close(payload) if opcode == CLOSE else payload))
            return
        if opcode != CONTINUATION:
            if final:  # the usual case: a whole message in one frame
                events.append(_message(opcode, payload))
                return
            self._message_opcode = opcode
        self._message_parts.append(payload)
        self._message_size += len(payload)
        self._fragments += 1
        if final:
            whole = b"".join(self._message_parts)
            opcode = self._message_opcode
            self._message_parts = []
            self._message_size = self._fragments = 0
            events.append(_message(opcode, whole))


def _message(opcode: int, payload: bytes) -> Event:
    if opcode == BINARY:
        return BINARY, payload
    try:
        return TEXT, payload.decode()
    except UnicodeDecodeError:
        raise _Failure(INVALID_DATA, "invalid UTF-8 in a text message") from None


def _close(payload: bytes) -> tuple[int | None, str]:
    if not payload:
        return None, ""
    if len(payload) == 1:
        raise _Failure(PROTOCOL_ERROR, "close frame with a 1-byte payload")
    code = int.from_bytes(payload[:2], "big")
    if not is_valid_close_code(code):
        raise _Failure(PROTOCOL_ERROR, f"invalid close code {code}")
    try:
        return code, payload[2:].decode()
    except UnicodeDecodeError:
        raise _Failure(INVALID_DATA, "invalid UTF-8 in a close reason") from None
