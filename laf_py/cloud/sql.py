"""cloud.sql: the SQLAlchemy async engine on the configured database, for users' own tables.

SQLite (aiosqlite) by default, in WAL mode so readers never wait for the writer; PostgreSQL
(asyncpg) when ``--database-url`` says so. laf-py's own tables live in the same database.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import aiosqlite
from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

__all__ = ["SQLITE_BEGIN", "SQLStore", "normalize_database_url", "redacted"]

SQLITE_BEGIN = "laf_sqlite_begin"  # execution option: "IMMEDIATE" for read-then-write

_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgres": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
}


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
    """``cloud.sql.engine`` and ``async with cloud.sql.session() as session``."""

    def __init__(self, url: str) -> None:
        self.url = url
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
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    def session(self, **options: Any) -> AsyncSession:
        """A new ORM session; use it as ``async with cloud.sql.session() as s:``."""
        return self._sessions(**options)

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
        # "BEGIN IMMEDIATE" when a transaction will read and then write (migrations): taking
        # the write lock up front lets the busy timeout work instead of failing at once.
        mode = connection.get_execution_options().get(SQLITE_BEGIN, "")
        connection.exec_driver_sql(f"BEGIN {mode}".strip())
