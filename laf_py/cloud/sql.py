"""cloud.sql: the SQLAlchemy async engine on the configured database, for users' own tables.

SQLite (aiosqlite) by default, in WAL mode so readers never wait for the writer; PostgreSQL
(asyncpg) when ``--database-url`` says so. laf-py's own tables live in the same database.

Sessions, ``execute`` and ``transaction`` may read and then write, so on SQLite they begin with
``BEGIN IMMEDIATE``: the write lock is taken up front, and a second writer waits for it (up to
the busy timeout) instead of failing at once with "database is locked" when its read turns into
a write. ``cloud.sql.engine`` keeps plain deferred transactions, so read-only work (``cloud.kv``
reads, ``engine.connect()``) never queues behind a writer.

The engine's connections belong to the server's event loop. ``execute`` and ``transaction`` run
there from any thread and return a :class:`~laf_py.cloud.pending.Pending`; ``session()`` is for
code already on that loop (async functions).
"""

from __future__ import annotations

import asyncio
import inspect
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
from sqlalchemy import event, text
from sqlalchemy.engine import URL, CursorResult, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session
from sqlalchemy.sql.base import Executable

from .delivery import LoopBridge
from .pending import Pending, start

__all__ = ["SQLITE_BEGIN", "SQLStore", "normalize_database_url", "redacted"]

SQLITE_BEGIN = "laf_sqlite_begin"  # execution option: "IMMEDIATE" for read-then-write

_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgres": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
}

T = TypeVar("T")

OFF_THE_LOOP = (
    "cloud.sql.session() works only on the server's event loop (in an 'async def' function); "
    "in a plain 'def' use cloud.sql.execute(statement, params).result(), or "
    "cloud.sql.transaction(fn).result() where fn(session) receives a synchronous Session"
)


def normalize_database_url(raw: str) -> str:
    """Accept ``sqlite:///…`` and ``postgresql://…`` and give them their async drivers."""
    try:
        url = make_url(raw)
    except ArgumentError:
        raise ValueError(raw) from None
    driver = _DRIVERS.get(url.drivername)
    if driver is None:
        raise ValueError(raw)
    if driver.startswith("sqlite") and not url.database:
        raise ValueError(raw)  # an in-memory database would not be persistent
    return url.set(drivername=driver).render_as_string(hide_password=False)


def redacted(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


class SQLStore:
    """``cloud.sql.engine``, ``async with cloud.sql.session() as session``, and for plain ``def``
    functions ``cloud.sql.execute(...)`` and ``cloud.sql.transaction(fn)``."""

    def __init__(self, url: str, bridge: LoopBridge | None = None) -> None:
        self.url = url
        self._bridge = bridge
        parsed: URL = make_url(url)
        self.dialect = parsed.get_backend_name()
        if self.dialect == "sqlite":
            assert parsed.database
            self._sqlite_path = parsed.database
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            self.engine: AsyncEngine = create_async_engine(url, connect_args={"timeout": 30})
            _tune_sqlite(self.engine)
        else:
            self.engine = create_async_engine(url, pool_pre_ping=True)
        # The same pool; on SQLite its transactions take the write lock when they begin.
        self._writer = (
            self.engine.execution_options(**{SQLITE_BEGIN: "IMMEDIATE"})
            if self.dialect == "sqlite"
            else self.engine
        )
        self._sessions = async_sessionmaker(self._writer, expire_on_commit=False)

    def attach(self, bridge: LoopBridge) -> None:
        """The server's event loop: where ``execute`` and ``transaction`` run."""
        self._bridge = bridge

    def session(self, **options: Any) -> AsyncSession:
        """A new ORM session; use it as ``async with cloud.sql.session() as s:``.

        Only on the server's event loop: its connections belong to that loop. From a worker
        thread (a plain ``def``) this raises RuntimeError; use :meth:`execute` or
        :meth:`transaction` there.
        """
        if self._bridge is not None and not self._bridge.on_loop_thread():
            raise RuntimeError(OFF_THE_LOOP)
        return self._sessions(**options)

    def execute(
        self,
        statement: Executable | str,
        params: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    ) -> Pending[CursorResult[Any]]:
        """Run one statement in a transaction of its own, committed; from any thread.

        A string is taken as ``text(statement)`` with ``:name`` parameters. The result is
        buffered: read its rows (``.all()``, ``.mappings()``, ``.scalar()``) or ``rowcount``
        anywhere. ``await`` it in async code, ``.result()`` in a plain ``def``.
        """
        if isinstance(statement, str):
            statement = text(statement)
        return start(self._need_bridge("execute"), self._execute(statement, params))

    def transaction(self, work: Callable[[Session], T]) -> Pending[T]:
        """Run ``work(session)`` with a synchronous ORM ``Session`` in one transaction.

        Committed when ``work`` returns (its return value is the result), rolled back when it
        raises (the exception reaches the caller). ``work`` runs on the server's event loop,
        so it should only talk to the database: no sleeping, no waiting for other calls.
        """
        if not callable(work):
            raise TypeError(f"transaction() takes a function of a Session, got {work!r}")
        if inspect.iscoroutinefunction(work):
            raise TypeError(
                "transaction() takes a plain function of a synchronous Session; in async code "
                "use 'async with cloud.sql.session() as session'"
            )
        return start(self._need_bridge("transaction"), self._transaction(work))

    async def use_wal_mode(self, patience: float = 10.0) -> None:
        """Switch a SQLite file to WAL, once: readers then never wait for the writer.

        The switch needs a moment alone with the file, which SQLite does not wait for, so
        several workers opening a new file together retry for a while.
        """
        if self.dialect != "sqlite":
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + patience
        delay = 0.01
        while True:
            try:
                # Straight to the driver: SQLAlchemy would wrap the pragma in a transaction.
                async with aiosqlite.connect(self._sqlite_path) as connection:
                    await connection.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or loop.time() > deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)

    async def close(self) -> None:
        await self.engine.dispose()

    async def _execute(
        self,
        statement: Executable,
        params: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None,
    ) -> CursorResult[Any]:
        async with self._writer.begin() as connection:
            return await connection.execute(statement, params)

    async def _transaction(self, work: Callable[[Session], T]) -> T:
        async with self._sessions() as session:  # closing it rolls back what is not committed
            outcome = await session.run_sync(work)
            await session.commit()
        return outcome

    def _need_bridge(self, name: str) -> LoopBridge:
        if self._bridge is None:
            raise RuntimeError(f"cloud.sql.{name}() needs a running laf-py server")
        return self._bridge

    def __repr__(self) -> str:
        return f"<SQLStore {redacted(self.url)}>"


def _tune_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transactions out of the driver's hands (it would not BEGIN before DDL) and let
        # SQLAlchemy's "begin" below emit them, as SQLAlchemy's SQLite notes recommend.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout=30000")
        # NORMAL in WAL mode (switched on once per file by use_wal_mode): a commit survives
        # the process being killed; only a power loss or OS crash can lose the last commits.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def on_begin(connection: Any) -> None:
        # "BEGIN IMMEDIATE" when a transaction may read and then write (sessions, execute,
        # transaction, migrations): taking the write lock up front lets the busy timeout work,
        # where a deferred transaction whose read turns into a write fails at once.
        mode = connection.get_execution_options().get(SQLITE_BEGIN, "")
        connection.exec_driver_sql(f"BEGIN {mode}".strip())
