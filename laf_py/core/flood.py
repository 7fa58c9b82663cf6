"""FloodGuard: a token bucket for one connection's inbound messages."""

from __future__ import annotations

import time

__all__ = ["FloodGuard"]


class FloodGuard:
    """Allows ``rate`` messages per second with bursts up to twice that.

    Messages over the limit are refused; when the client keeps going for about a second's
    worth of refused messages in a row, ``persists()`` says so and the connection should go.
    A rate of 0 turns the guard off.
    """

    __slots__ = ("_capacity", "_rate", "_refused", "_tokens", "_updated")

    def __init__(self, rate: float) -> None:
        self._rate = rate
        self._capacity = 2 * rate
        self._tokens = self._capacity
        self._updated = time.monotonic()
        self._refused = 0

    def allows(self) -> bool:
        if not self._rate:
            return True
        now = time.monotonic()
        self._tokens = min(self._capacity, self._tokens + (now - self._updated) * self._rate)
        self._updated = now
        if self._tokens >= 1:
            self._tokens -= 1
            self._refused = 0
            return True
        self._refused += 1
        return False

    def persists(self) -> bool:
        return self._refused > max(self._rate, 10)
