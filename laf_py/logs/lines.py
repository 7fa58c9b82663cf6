"""Reading function logs back: one line as a value, the filters ``laf-py logs`` and the
console share, and following new lines as every node writes them."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from ..cloud.schema import logs_table

__all__ = ["LogLine", "follow_lines", "parse_level", "parse_since", "read_lines"]

DEFAULT_LIMIT = 200
MAX_LIMIT = 10_000
# Nodes write in batches, each in its own transaction, so a line can become visible after lines
# with higher ids. A follower looks this far back in time each poll and skips lines it showed.
FOLLOW_WINDOW = 10.0
FOLLOW_POLL = 0.5


@dataclass(frozen=True, slots=True)
class LogLine:
    id: int
    time: float  # unix time
    level: int
    function: str
    request_id: str
    node: str
    message: str

    @property
    def level_name(self) -> str:
        return logging.getLevelName(self.level)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "time": self.time,
            "level": self.level_name,
            "function": self.function,
            "request_id": self.request_id,
            "node": self.node,
            "message": self.message,
        }


def parse_level(raw: str) -> int:
    """``debug``, ``info``, ``warning`` or ``error`` (any case) as logging's number."""
    number = logging.getLevelName(raw.strip().upper())
    if not isinstance(number, int):
        raise ValueError(f"unknown level {raw!r}: use debug, info, warning or error")
    return number


_AGO = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(raw: str, now: float | None = None) -> float:
    """``10m``, ``2h``, ``3d``, ``30s`` ago, or an ISO time (UTC unless it says), as unix time."""
    text = raw.strip()
    match = _AGO.fullmatch(text.lower())
    if match:
        return (time.time() if now is None else now) - float(match[1]) * _UNITS[match[2]]
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"cannot read {raw!r} as a time: use 10m, 2h, 3d or an ISO time like 2026-12-02T17:00"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _filtered(
    function: str | None,
    request_id: str | None,
    level: int | None,
    since: float | None,
) -> Select[Any]:
    table = logs_table
    query = select(table)
    if function:
        # A folder name matches its functions too: "chat" is chat.py and chat/*.
        name = function.strip("/")
        query = query.where(or_(table.c.function == name, table.c.function.startswith(f"{name}/")))
    if request_id:
        query = query.where(table.c.request_id == request_id)
    if level is not None:
        query = query.where(table.c.level >= level)
    if since is not None:
        query = query.where(table.c.time >= since)
    return query


async def read_lines(
    engine: AsyncEngine,
    *,
    function: str | None = None,
    request_id: str | None = None,
    level: int | None = None,
    since: float | None = None,
    after_id: int | None = None,
    limit: int = DEFAULT_LIMIT,
) -> list[LogLine]:
    """The matching lines, oldest first: the newest ``limit`` of them, or with ``after_id``
    the first ``limit`` after that line."""
    limit = max(1, min(limit, MAX_LIMIT))
    table = logs_table
    query = _filtered(function, request_id, level, since)
    if after_id is not None:
        query = query.where(table.c.id > after_id).order_by(table.c.id).limit(limit)
    else:
        query = query.order_by(table.c.id.desc()).limit(limit)
    async with engine.connect() as connection:
        rows = (await connection.execute(query)).all()
    lines = [LogLine(*row) for row in rows]
    if after_id is None:
        lines.reverse()
    return lines


async def follow_lines(
    engine: AsyncEngine,
    *,
    function: str | None = None,
    request_id: str | None = None,
    level: int | None = None,
    since: float | None = None,
    after_id: int | None = None,
    poll: float = FOLLOW_POLL,
) -> AsyncGenerator[list[LogLine], None]:
    """Batches of new lines as they are written, from every node, forever: from ``since``
    (default now), and only lines after ``after_id`` when given.

    Each poll reads the lines after the highest id shown (in id order, the index's), and then
    the ids of the last FOLLOW_WINDOW seconds up to it: a line another node (or a thread) handed
    over late has a lower id than lines already shown, and is still shown once."""
    table = logs_table
    origin = time.time() if since is None else since
    newest = after_id if after_id is not None else -1  # the highest id shown
    shown: dict[int, float] = {}  # id -> time, of lines at or below `newest` shown
    first = True
    while True:
        low = origin if first else max(origin, time.time() - FOLLOW_WINDOW)
        first = False
        query = _filtered(function, request_id, level, low)
        async with engine.connect() as connection:
            fresh_rows = (
                await connection.execute(
                    query.where(table.c.id > newest).order_by(table.c.id).limit(MAX_LIMIT)
                )
            ).all()
            late_ids = [
                row.id
                for row in (
                    await connection.execute(
                        _ids(function, request_id, level, low).where(table.c.id <= newest)
                    )
                ).all()
                if row.id not in shown and (after_id is None or row.id > after_id)
            ]
            late_rows = (
                (await connection.execute(query.where(table.c.id.in_(late_ids)))).all()
                if late_ids
                else []
            )
        fresh = [LogLine(*row) for row in [*late_rows, *fresh_rows]]
        for line in fresh:
            shown[line.id] = line.time
            newest = max(newest, line.id)
        if fresh:
            yield fresh
        for seen in [i for i, t in shown.items() if t < low]:
            del shown[seen]
        await asyncio.sleep(poll)


def _ids(
    function: str | None, request_id: str | None, level: int | None, since: float
) -> Select[Any]:
    """The ids of the matching lines since ``since``."""
    return _filtered(function, request_id, level, since).with_only_columns(logs_table.c.id)
