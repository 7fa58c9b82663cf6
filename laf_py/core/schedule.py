"""The ``schedule`` setting of a function file: when its next run is due.

``schedule = "*/5 * * * *"`` is a 5-field cron expression (minute, hour, day of month, month,
day of week) read in UTC by cronsim, which follows Debian's cron; ``schedule = 30`` runs every
30 seconds. Interval ticks are whole multiples of the interval since the Unix epoch (``30``:
at :00 and :30 of every minute), so every node computes the same tick times on its own.

Times here are Unix timestamps (float seconds), the same on every node whose clock is synced.
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cronsim import CronSim, CronSimError

__all__ = ["MINIMUM_INTERVAL", "SETTING", "Schedule", "parse_schedule", "setting_line"]

SETTING = "schedule"
MINIMUM_INTERVAL = 1.0  # seconds

_USAGE = (
    "schedule must be a 5-field cron string like '*/5 * * * *' (UTC) or a number of seconds "
    f">= {MINIMUM_INTERVAL:g} like 30"
)


@dataclass(frozen=True, slots=True)
class Schedule:
    """Either ``every`` seconds or a ``cron`` expression; equal when the setting is equal."""

    every: float | None = None
    cron: str | None = None

    def next_after(self, now: float) -> float | None:
        """The first tick strictly after ``now``; None if the expression never matches again."""
        if self.every is not None:
            tick = (math.floor(now / self.every) + 1) * self.every
            return tick if tick > now else tick + self.every
        assert self.cron is not None
        try:
            return next(CronSim(self.cron, datetime.fromtimestamp(now, UTC))).timestamp()
        except StopIteration:  # cronsim gives up after 50 years without a match
            return None

    def __str__(self) -> str:
        if self.every is not None:
            return f"every {self.every:g}s"
        return f"at {self.cron!r} (UTC)"


def parse_schedule(value: Any, now: float) -> Schedule:
    """The schedule a module's ``schedule`` setting asks for; ValueError saying what is wrong."""
    if isinstance(value, bool):
        raise ValueError(f"{_USAGE}, got {value!r}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value < MINIMUM_INTERVAL:
            raise ValueError(f"{_USAGE}, got {value!r}")
        return Schedule(every=float(value))
    if not isinstance(value, str):
        raise ValueError(f"{_USAGE}, got {value!r}")
    expression = " ".join(value.split())
    fields = len(expression.split(" ")) if expression else 0
    if fields != 5:
        raise ValueError(
            f"schedule {value!r} has {fields} field(s), not the 5 of cron "
            "(minute hour day-of-month month day-of-week, UTC); for seconds use a number "
            "(schedule = 30)"
        )
    try:
        schedule = Schedule(cron=expression)
        first = schedule.next_after(now)
    except CronSimError as exc:
        raise ValueError(f"schedule {value!r} is not a valid cron expression: {exc}") from None
    if first is None:
        raise ValueError(f"schedule {value!r} never matches a date")
    return schedule


def setting_line(path: Path, name: str = SETTING) -> int | None:
    """The line of the last top-level assignment to ``name`` in a Python file, for error
    messages; None when there is none (set another way) or the file cannot be read."""
    try:
        tree = ast.parse(path.read_bytes())
    except (OSError, SyntaxError, ValueError):
        return None
    line = None
    for node in tree.body:
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            line = node.lineno
    return line
