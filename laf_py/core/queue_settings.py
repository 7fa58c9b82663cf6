"""The module settings of a function that runs queued jobs (``cloud.queue.push``).

``queue_concurrency = N``: at most N jobs of this function run at once in each process.
``queue_attempts = N``: runs in all before a failing job is kept as failed.
``queue_backoff = S``: seconds before the first retry; each further retry waits twice as long
(capped at :data:`MAX_BACKOFF`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_QUEUE_SETTINGS",
    "MAX_BACKOFF",
    "QueueSettings",
    "parse_queue_settings",
]

MAX_BACKOFF = 3600.0  # no retry waits longer than an hour


@dataclass(frozen=True, slots=True)
class QueueSettings:
    concurrency: int = 10
    attempts: int = 5
    backoff: float = 5.0

    def retry_delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1, 2, ...)."""
        return float(min(self.backoff * 2 ** min(attempt - 1, 40), MAX_BACKOFF))


DEFAULT_QUEUE_SETTINGS = QueueSettings()


def parse_queue_settings(module: Any) -> QueueSettings:
    """The queue settings a module declares; ValueError naming a bad one."""
    concurrency = getattr(module, "queue_concurrency", DEFAULT_QUEUE_SETTINGS.concurrency)
    attempts = getattr(module, "queue_attempts", DEFAULT_QUEUE_SETTINGS.attempts)
    backoff = getattr(module, "queue_backoff", DEFAULT_QUEUE_SETTINGS.backoff)
    for name, value in (("queue_concurrency", concurrency), ("queue_attempts", attempts)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    if isinstance(backoff, bool) or not isinstance(backoff, (int, float)) or not backoff >= 0:
        raise ValueError(f"queue_backoff must be a number of seconds >= 0, got {backoff!r}")
    return QueueSettings(concurrency, attempts, float(backoff))
