"""FloodGuard: a token bucket for one connection's inbound messages."""

from __future__ import annotations

import time

__all__ = ["FloodGuard"]


class FloodGuard:
    """Allows ``rate`` messages per second with bursts up to twice that.

    Messages over the limit are refused. When more than a second's worth of messages (at
    least 10) is refused within one second, ``persists()`` says so and the connection should
    go. A rate of 0 turns the guard off.
    """

    __slots__ = ("_capacity", "_rate", "_refused", "_tokens", "_updated", "_window")

    def __init__(self, rate: float) -> None:
        self._rate = rate
        self._capacity = 2 * rate
        self._tokens = self._capacity
        self._updated = self._window = time.monotonic()
        self._refused = 0  # in the current one-second window

    def allows(self) -> bool:
        if not self._rate:
            return True
        now = time.monotonic()
        self._tokens = min(self._capacity, self._tokens + (now - self._updated) * self._rate)
        self._updated = now
        if now - self._window >= 1.0:
            self._window, self._refused = now, 0
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        self._refused += 1
        return False

    def persists(self) -> bool:
        return self._refused > max(self._rate, 10)
