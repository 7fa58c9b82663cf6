"""Keepalive: server pings for every WebSocket connection, from one timer.

Tornado's own pinging runs a sleeping task per connection, about 1.5 KiB of memory for each
idle one. Here one timer pings everyone, like a broadcast: the same two-byte frame is written
to each connection, and a second timer, ``timeout`` later, drops those that did not answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, Protocol

from ..core import frames

__all__ = ["Keepalive", "Pingable"]


class Pingable(Protocol):
    def write_frame(self, frame: bytes) -> Awaitable[Any] | None:
        """Queue a frame; None when the connection is closed or closing."""

    def ping_timed_out(self) -> None:
        """No pong came back in time: the connection should go."""

    @property
    def reading_paused(self) -> bool:
        """The server stopped reading from it (its messages pile up): a pong cannot be seen."""


class Keepalive:
    """Pings every ``interval`` seconds; a connection with no pong ``timeout`` after it is
    dropped. ``timeout`` is at most ``interval`` (the settings check it)."""

    def __init__(self, interval: float, timeout: float) -> None:
        self.interval = interval
        self.timeout = timeout
        self._connections: dict[Pingable, None] = {}  # an ordered set
        self._unanswered: set[Pingable] = set()  # pinged, no pong since
        self._timers: list[asyncio.TimerHandle] = []

    def add(self, connection: Pingable) -> None:
        self._connections[connection] = None
        if not self._timers:
            loop = asyncio.get_running_loop()
            self._timers = [loop.call_later(self.interval, self._ping_all)]

    def discard(self, connection: Pingable) -> None:
        self._connections.pop(connection, None)
        self._unanswered.discard(connection)
        if not self._connections:
            self.stop()  # an idle server keeps no timers

    def answered(self, connection: Pingable) -> None:
        """A pong came from ``connection``."""
        self._unanswered.discard(connection)

    def stop(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        self._unanswered.clear()

    def _ping_all(self) -> None:
        loop = asyncio.get_running_loop()
        unanswered = self._unanswered = set(self._connections)
        for connection in list(unanswered):
            connection.write_frame(frames.PING)  # a closing one gets none; its close is near
        self._timers = [
            loop.call_later(self.timeout, self._expire, unanswered),
            loop.call_later(self.interval, self._ping_all),
        ]

    def _expire(self, pinged: set[Pingable]) -> None:
        for connection in list(pinged):
            # A connection we stopped reading may have answered: judge it at the next ping.
            if connection in self._connections and not connection.reading_paused:
                connection.ping_timed_out()
