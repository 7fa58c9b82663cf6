"""Function logs over HTTP, for the console and the test client (admin endpoints).

``GET /_/api/logs`` answers the matching lines as JSON (after writing what is waiting, so a
call's lines are there as soon as it has answered). ``GET /_/api/logs/stream`` follows new lines
from every node as Server-Sent Events (``id:`` is the line's id; a reconnecting client's
``Last-Event-ID`` resumes after it).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from tornado.iostream import StreamClosedError

from ..core.stream import PING, PING_INTERVAL, SSE_TYPE, Event, encode_event
from ..logs.lines import DEFAULT_LIMIT, LogLine, follow_lines, parse_level, parse_since
from ..logs.store import LogStore
from .admin import AdminHandler

__all__ = ["LogStreamHandler", "LogsHandler"]

# A new reader also gets the lines of the last moment: made before it connected, but still on
# their way to the table then (the writer batches every second).
CATCH_UP = 3.0
LOGS_OFF = "function logs are not kept (--log-retention 0 / LAF_LOG_RETENTION=0)"


class _LogsBase(AdminHandler):
    def store(self) -> LogStore | None:
        store = self.runtime.logs
        if store is None:
            self.send_error_json(404, LOGS_OFF)
        return store

    def filters(self) -> dict[str, Any] | None:
        """The query's filters, or None after answering 400 for a bad one."""
        arg = self.get_query_argument
        filters: dict[str, Any] = {
            "function": arg("function", None) or None,
            "request_id": arg("request", None) or None,
        }
        try:
            if level := arg("level", None):
                filters["level"] = parse_level(level)
            if since := arg("since", None):
                filters["since"] = _since(since)
        except ValueError as exc:
            self.send_error_json(400, str(exc))
            return None
        return filters


def _since(raw: str) -> float:
    try:
        return float(raw)  # unix time, as the console sends it
    except ValueError:
        return parse_since(raw)  # 10m, 2h, an ISO time


class LogsHandler(_LogsBase):
    async def get(self) -> None:
        store = self.store()
        filters = self.filters()
        if store is None or filters is None:
            return
        try:
            limit = int(self.get_query_argument("limit", str(DEFAULT_LIMIT)))
            after = self.get_query_argument("after", None)
            after_id = int(after) if after else None
        except ValueError:
            self.send_error_json(400, "limit and after are whole numbers")
            return
        lines = await store.query(**filters, after_id=after_id, limit=limit)
        self.finish({"lines": [line.to_json() for line in lines]})


class LogStreamHandler(_LogsBase):
    _gone: asyncio.Event | None = None

    async def get(self) -> None:
        store = self.store()
        filters = self.filters()
        if store is None or filters is None:
            return
        self._gone = asyncio.Event()
        self.set_header("Content-Type", f"{SSE_TYPE}; charset=utf-8")
        self.set_header("X-Accel-Buffering", "no")
        try:
            await self.flush()
            # Lines are written a moment after they are made (in batches, from every node),
            # so following starts a little back in time; the follower shows each line once.
            asked_since = filters.pop("since", None)
            since = time.time() - CATCH_UP if asked_since is None else asked_since
            after_id = None
            last = self.request.headers.get("Last-Event-ID", "")
            if last.isdigit():  # a reconnect: every line after that one (up to MAX_LIMIT) first
                await store.flush()
                since, after_id = asked_since or 0.0, int(last)
            await self._follow(store, filters, since, after_id)
        except StreamClosedError:
            pass

    async def _follow(
        self, store: LogStore, filters: dict[str, Any], since: float, after_id: int | None
    ) -> None:
        assert self._gone is not None
        follower = follow_lines(store.engine, **filters, since=since, after_id=after_id)
        gone = asyncio.ensure_future(self._gone.wait())
        batch = asyncio.ensure_future(anext(follower))
        try:
            while True:
                done, _ = await asyncio.wait(
                    {batch, gone}, timeout=PING_INTERVAL, return_when=asyncio.FIRST_COMPLETED
                )
                if gone in done:
                    return
                if batch in done:
                    await self._send(batch.result())
                    batch = asyncio.ensure_future(anext(follower))
                else:
                    self.write(PING)
                    await self.flush()
        finally:
            for task in (batch, gone):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await batch
            await follower.aclose()

    async def _send(self, lines: list[LogLine]) -> None:
        if lines:
            for line in lines:
                self.write(encode_event(Event(line.to_json(), id=line.id)))
            await self.flush()

    def on_connection_close(self) -> None:
        if self._gone is not None:
            self._gone.set()
