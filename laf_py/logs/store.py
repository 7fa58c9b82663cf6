"""Function logs kept in the SQL store (``laf_logs``), for ``laf-py logs`` and the console.

Lines are taken from the logging handler in any thread (a list append) and written in batches
by one task on the server's loop, off the request path. Limits keep a chatty function from
filling the disk or the memory: at most ``LINES_PER_SECOND`` kept per function per second,
``MAX_PENDING`` lines (``MAX_PENDING_BYTES`` characters) waiting in all,
``MAX_LINES_PER_FUNCTION`` kept per function, and each line cut at ``MAX_MESSAGE``
characters. Lines over a limit still reach the server log; how many were not kept is said
there. Everything older than ``--log-retention`` is swept.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import threading
import time
import weakref
from collections import Counter
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from ..cloud.schema import logs_table
from ..cloud.sql import SQLITE_BEGIN, SQLStore
from .lines import LogLine, read_lines

__all__ = ["LogStore", "install_store_handler"]

log = logging.getLogger("laf_py")

FLUSH_INTERVAL = 1.0  # seconds a line may wait to be written with others (fewer, larger batches)
BATCH = 500  # pending lines that start a write at once
MAX_PENDING = 20_000  # lines waiting for the database, all functions together
MAX_PENDING_BYTES = 32 * 1024 * 1024  # ... and their characters: long lines fill memory sooner
LINES_PER_SECOND = 1_000  # lines kept per function per second; more are counted, not kept
MAX_LINES_PER_FUNCTION = 100_000  # newest lines kept per function; older ones are swept
MAX_MESSAGE = 16 * 1024  # characters of one line (its traceback included)
SWEEP_INTERVAL = 60.0
REPORT_INTERVAL = 10.0  # at most one "not kept" line per this many seconds


class LogStore:
    """The ``laf_logs`` writer of one server: ``accept`` from any thread, ``start``/``stop``
    on its loop, ``flush`` and ``query`` for readers."""

    def __init__(self, sql: SQLStore, retention: float) -> None:
        self.retention = retention
        # What calls and records carry instead of the store itself: a record must stay
        # picklable (QueueHandler, SocketHandler), and a lock is not.
        self.key = next(_keys)
        _stores[self.key] = self
        self.node = f"{socket.gethostname()}/{os.getpid()}"
        self._engine: AsyncEngine = sql.engine
        # SQLite: take the write lock when the transaction begins (the busy timeout works).
        self._writer = (
            sql.engine.execution_options(**{SQLITE_BEGIN: "IMMEDIATE"})
            if sql.dialect == "sqlite"
            else sql.engine
        )
        self._lock = threading.Lock()
        self._pending: list[dict[str, Any]] = []
        self._pending_bytes = 0
        self._this_second = 0
        self._kept_this_second: Counter[str] = Counter()
        self._not_kept: Counter[str] = Counter()
        self._last_report = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._writing = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []

    # -- taking lines (any thread) ------------------------------------------------------------

    def accept(self, record: logging.LogRecord, function: str, request_id: str) -> None:
        message = _message_of(record)
        now = record.created
        with self._lock:
            second = int(now)
            if second != self._this_second:
                self._this_second = second
                self._kept_this_second.clear()
            if (
                len(self._pending) >= MAX_PENDING
                or self._pending_bytes + len(message) > MAX_PENDING_BYTES
                or self._kept_this_second[function] >= LINES_PER_SECOND
            ):
                self._not_kept[function] += 1
                return
            self._kept_this_second[function] += 1
            self._pending_bytes += len(message)
            self._pending.append(
                {
                    "time": now,
                    "level": record.levelno,
                    "function": function,
                    "request_id": request_id,
                    "node": self.node,
                    "message": message,
                }
            )
            waiting = len(self._pending)
        loop = self._loop  # read once: stop() may clear it from the loop's thread meanwhile
        if (waiting == 1 or waiting == BATCH) and loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: stop() flushed
                loop.call_soon_threadsafe(self._wake_writer)

    # -- writing (the server's loop) ----------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._tasks = [
            asyncio.create_task(self._write_forever(), name="laf-logs-writer"),
            asyncio.create_task(self._sweep_forever(), name="laf-logs-sweeper"),
        ]
        if self._pending:
            self._wake.set()

    async def stop(self) -> None:
        """Write what is waiting and stop."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.flush()
        self._loop = None

    def _wake_writer(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _write_forever(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            with self._lock:
                full = len(self._pending) >= BATCH
            if not full:
                await asyncio.sleep(FLUSH_INTERVAL)  # let a few more lines join this batch
            await self.flush()

    async def flush(self) -> None:
        """Write every line taken so far (readers call it first, so a call's lines are there
        when it has answered)."""
        async with self._writing:  # batches go in in order
            with self._lock:
                rows, self._pending = self._pending, []
                self._pending_bytes = 0
            if rows:
                install_store_handler()  # a logging.config call in __init__ may have removed it
                try:
                    async with self._writer.begin() as connection:
                        await connection.execute(logs_table.insert(), rows)
                except asyncio.CancelledError:
                    with self._lock:  # stopping: stop() writes them, in their order
                        self._pending[:0] = rows
                        self._pending_bytes += sum(len(row["message"]) for row in rows)
                    raise
                except Exception as exc:
                    for row in rows:
                        self._not_kept[row["function"]] += 1
                    log.warning("function logs: could not write %d line(s): %s", len(rows), exc)
        self._report_not_kept()

    def _report_not_kept(self) -> None:
        now = time.monotonic()
        if not self._not_kept or now - self._last_report < REPORT_INTERVAL:
            return
        self._last_report = now
        with self._lock:
            counts, self._not_kept = self._not_kept, Counter()
        listed = ", ".join(f"{name!r}: {n}" for name, n in counts.most_common(5))
        log.warning(
            "function logs: %d line(s) not kept in the database (%s; more than %d a second "
            "per function, or the writer fell behind); the server log above has them",
            sum(counts.values()),
            listed,
            LINES_PER_SECOND,
        )

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception as exc:  # the database is away: try again next time
                log.warning("function logs: sweeping old lines failed: %s", exc)
            await asyncio.sleep(SWEEP_INTERVAL)

    async def sweep(self, now: float | None = None) -> int:
        """Delete lines past the retention and past each function's cap; return how many."""
        cutoff = (time.time() if now is None else now) - self.retention
        table = logs_table
        deleted = 0
        async with self._writer.begin() as connection:
            result = await connection.execute(delete(table).where(table.c.time < cutoff))
            deleted += result.rowcount or 0
        # Counted outside a write transaction: the scan must not hold the write lock.
        async with self._engine.connect() as connection:
            crowded = (
                await connection.execute(
                    select(table.c.function)
                    .group_by(table.c.function)
                    .having(func.count() > MAX_LINES_PER_FUNCTION)
                )
            ).all()
        async with self._writer.begin() as connection:
            for (function,) in crowded:
                oldest_kept = (
                    select(table.c.id)
                    .where(table.c.function == function)
                    .order_by(table.c.id.desc())
                    .offset(MAX_LINES_PER_FUNCTION - 1)
                    .limit(1)
                    .scalar_subquery()
                )
                result = await connection.execute(
                    delete(table).where(table.c.function == function, table.c.id < oldest_kept)
                )
                deleted += result.rowcount or 0
        return deleted

    # -- reading ------------------------------------------------------------------------------

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    async def query(self, **filters: Any) -> list[LogLine]:
        """Lines matching ``filters`` (see :func:`~laf_py.logs.lines.read_lines`), after
        writing what is waiting."""
        await self.flush()
        return await read_lines(self._engine, **filters)


def _message_of(record: logging.LogRecord) -> str:
    try:
        message = record.getMessage()
    except Exception as exc:  # a bad format string: keep what there is
        message = f"{record.msg!r} (unformattable: {exc})"
    if record.exc_info and not record.exc_text:
        record.exc_text = _FORMATTER.formatException(record.exc_info)
    if record.exc_text:
        message = f"{message}\n{record.exc_text}"
    # What every database takes: no lone surrogates (a file name os.fsdecode made), no NUL
    # (PostgreSQL text): one such line must not fail the batch it is written in.
    message = message.encode("utf-8", "backslashreplace").decode().replace("\x00", "\\x00")
    if len(message) > MAX_MESSAGE:
        cut = len(message) - MAX_MESSAGE
        message = f"{message[:MAX_MESSAGE]}... ({cut} more characters not kept)"
    return message


_FORMATTER = logging.Formatter()


_keys = itertools.count(1)
_stores: weakref.WeakValueDictionary[int, LogStore] = weakref.WeakValueDictionary()


class _StoreHandler(logging.Handler):
    """Hands each record written by a call to the store of that call's server."""

    def emit(self, record: logging.LogRecord) -> None:
        key = getattr(record, "laf_sink", None)
        sink = _stores.get(key) if key is not None else None
        if sink is None:
            return
        try:
            sink.accept(record, record.__dict__["laf_function"], record.__dict__["laf_request_id"])
        except Exception:
            self.handleError(record)


_handler: _StoreHandler | None = None


def install_store_handler() -> None:
    """Put the store handler on the root logger (once, and again if a logging configuration
    the functions made removed it)."""
    global _handler
    if _handler is None:
        _handler = _StoreHandler()
    root = logging.getLogger()
    if _handler not in root.handlers:
        root.addHandler(_handler)
