"""Streamed responses: a function that returns a generator, and Server-Sent Events.

A function may return an async generator or a plain generator (directly, or as the body of a
:class:`~laf_py.Response`): each item it yields is written and flushed as it is produced.
Wrapped in :class:`EventStream`, the items become Server-Sent Events (``text/event-stream``).

The SSE encoding is the few rules of the WHATWG spec ("Parsing an event stream"), written out
here: no maintained Python package encodes events without a web framework around it. The tests
read the stream with ``httpx-sse`` and with Chromium's ``EventSource``.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from typing import Any

from . import jsoncodec

__all__ = [
    "PING_INTERVAL",
    "Event",
    "EventStream",
    "encode_event",
    "is_stream",
]

PING_INTERVAL = 15.0  # seconds without an event before an SSE comment line keeps proxies awake
SSE_TYPE = "text/event-stream"
PING = b": ping\n\n"
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class Event:
    """One Server-Sent Event. ``data`` is text, bytes (UTF-8) or anything JSON can hold (sent
    as JSON); ``event`` names its type (``addEventListener(event, ...)`` in the browser); ``id``
    is what a reconnecting browser sends back as ``Last-Event-ID``; ``retry`` (milliseconds)
    tells it how long to wait before reconnecting."""

    data: Any = ""
    event: str | None = None
    id: str | int | None = None
    retry: int | None = None


class EventStream:
    """``return EventStream(generator)``: the items as Server-Sent Events.

    Items are ``str``/``bytes`` (one event's data), dicts and lists (JSON data) or
    :class:`Event`. While the generator waits longer than ``ping`` seconds, a comment line goes
    out so proxies and browsers keep the connection. The response has ``Cache-Control:
    no-cache`` and ``X-Accel-Buffering: no`` (nginx would otherwise hold the events back)."""

    __slots__ = ("ping", "source")

    def __init__(self, source: Any, ping: float = PING_INTERVAL) -> None:
        if not is_generator(source):
            raise TypeError(
                f"EventStream takes a generator or an async generator, not {type(source).__name__}"
            )
        if not ping > 0:
            raise ValueError("ping must be a number of seconds > 0")
        self.source = source
        self.ping = ping


def is_generator(value: Any) -> bool:
    return inspect.isasyncgen(value) or inspect.isgenerator(value)


def is_stream(value: Any) -> bool:
    """Is this return value (or a Response's body) streamed rather than written at once?"""
    return isinstance(value, EventStream) or is_generator(value)


def encode_chunk(item: Any) -> bytes:
    """An item of a plain stream: ``str`` as UTF-8, ``bytes`` as they are."""
    if isinstance(item, str):
        return item.encode()
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    raise TypeError(
        f"a streamed response yields str or bytes, not {type(item).__name__} "
        "(wrap the generator in EventStream to send objects as JSON events)"
    )


def encode_event(item: Any) -> bytes:
    """One SSE item as the bytes of one event."""
    event = item if isinstance(item, Event) else Event(item)
    data = event.data
    if isinstance(data, (bytes, bytearray, memoryview)):
        text = bytes(data).decode()
    elif isinstance(data, str):
        text = data
    else:
        text = jsoncodec.dumps(data).decode()
    lines = []
    if event.event is not None:
        lines.append(f"event: {_one_line(event.event, 'event')}")
    if event.id is not None:
        ident = _one_line(str(event.id), "id")
        if "\0" in ident:
            raise ValueError("an event id cannot contain NUL (browsers ignore such ids)")
        lines.append(f"id: {ident}")
    if event.retry is not None:
        if isinstance(event.retry, bool) or not isinstance(event.retry, int) or event.retry < 0:
            raise ValueError(f"retry is whole milliseconds >= 0, not {event.retry!r}")
        lines.append(f"retry: {event.retry}")
    # Every line of the data is a data: line; the browser joins them with "\n" again. CR LF,
    # a lone CR and LF all end a line in the stream, so all three split the data here.
    lines += [f"data: {line}" for line in _LINE_BREAK.split(text)]
    return ("\n".join(lines) + "\n\n").encode()


def _one_line(value: str, field: str) -> str:
    if "\n" in value or "\r" in value:
        raise ValueError(f"an event's {field} cannot contain a line break: {value!r}")
    return value
