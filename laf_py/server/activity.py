"""Counts what is in flight (HTTP calls, WebSocket connections) so shutdown can wait for it."""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

__all__ = ["Activity", "Connection"]

log = logging.getLogger("laf_py")


class Connection(Protocol):
    def abort(self, code: int, reason: str) -> None:
        """End the connection at shutdown."""


class Activity:
    def __init__(self) -> None:
        self.draining = False
        self.requests = 0
        self.connections = 0
        self._connections: dict[Connection, None] = {}  # an ordered set
        self._changed = asyncio.Event()

    def begin_request(self) -> None:
        self.requests += 1

    def end_request(self) -> None:
        self.requests -= 1
        self._changed.set()

    def begin_connection(self, connection: Connection) -> None:
        """A WebSocket connection opened."""
        self._connections[connection] = None
        self.connections += 1

    def end_connection(self, connection: Connection) -> None:
        """A connection closed and its ``close`` event has finished."""
        self._connections.pop(connection, None)
        self.connections -= 1
        self._changed.set()

    def close_connections(self, code: int, reason: str) -> None:
        """Close every connection, accepted or still in its ``connection`` event."""
        for connection in list(self._connections):
            connection.abort(code, reason)

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is in flight; False if ``timeout`` ran out first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.requests or self.connections:
            self._changed.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                return False
        return True

    async def drain(self, grace: float, reason: str) -> None:
        """Shutdown, once new work is refused: close every connection (code 1001, so each
        close event runs) and wait up to ``grace`` for calls and connections to finish; past
        it, drop the connections still open and give their close events a moment more, not
        the calls that hang."""
        self.close_connections(1001, reason)
        if not await self.wait_idle(grace):
            log.warning(
                "shutdown grace of %gs ran out with %d call(s) and %d connection(s) in flight",
                grace,
                self.requests,
                self.connections,
            )
            self.close_connections(1001, reason)
            await self.wait_idle(min(grace, 1.0))
