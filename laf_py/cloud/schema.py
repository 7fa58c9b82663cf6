"""laf-py's own tables, and the versioned migrations that create them.

``laf_schema`` holds one row with the schema version. Each release appends migrations and never
edits old ones; start-up applies the missing ones in one transaction, under a lock so that
several nodes starting together on one PostgreSQL do not race.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    select,
    text,
)
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from .sql import SQLITE_BEGIN

__all__ = ["SCHEMA_VERSION", "jobs_table", "kv_table", "logs_table", "migrate"]

metadata = MetaData()

schema_table = Table(
    "laf_schema",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("version", Integer, nullable=False),
)

kv_table = Table(
    "laf_kv",
    metadata,
    Column("key", Text, primary_key=True),
    Column("value", Text, nullable=False),  # JSON
    Column("expires_at", Float, nullable=True, index=True),  # unix time; NULL = never
)


# Queued jobs (cloud.queue, laf_py.jobs). ``run_at`` is when a worker may claim the job next:
# when it is due (pending, retrying) or when the lease of the attempt running it ends
# (running); NULL once it is done or failed, so the due-jobs index holds only live jobs.
jobs_table = Table(
    "laf_jobs",
    metadata,
    Column("id", Text, primary_key=True),
    Column("function", Text, nullable=False),
    Column("payload", Text, nullable=False),  # JSON
    Column("pushed_by", Text, nullable=True),  # JSON: ctx.user of the call that pushed it
    Column("key", Text, nullable=True),
    Column("state", Text, nullable=False),  # pending, running, retrying, done, failed
    Column("attempts", Integer, nullable=False),
    Column("run_at", Float, nullable=True),  # unix time
    Column("lease", Text, nullable=True),  # the claim holding a running job
    Column("error", Text, nullable=True),
    Column("result", Text, nullable=True),  # JSON
    Column("created_at", Float, nullable=False),
    Column("finished_at", Float, nullable=True),
    Index("laf_jobs_due", "run_at"),
    Index("laf_jobs_finished", "finished_at"),
)
_PENDING_KEY = text("state = 'pending' AND key IS NOT NULL")
# One pending job per function and key: a second push with the key gets the first one's id.
jobs_key_index = Index(
    "laf_jobs_pending_key",
    jobs_table.c.function,
    jobs_table.c.key,
    unique=True,
    sqlite_where=_PENDING_KEY,
    postgresql_where=_PENDING_KEY,
)


# Function logs (laf_py.logs): what functions print and log, for `laf-py logs` and the console.
# Written in batches, swept after --log-retention. A 64-bit id on PostgreSQL (a busy cluster
# can write billions of lines over its life); SQLite's INTEGER PRIMARY KEY is 64-bit already.
logs_table = Table(
    "laf_logs",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("time", Float, nullable=False),  # unix time
    Column("level", Integer, nullable=False),  # logging's numbers: 20 INFO, 30 WARNING ...
    Column("function", Text, nullable=False),
    Column("request_id", Text, nullable=False),
    Column("node", Text, nullable=False),  # host/pid of the process that wrote it
    Column("message", Text, nullable=False),
    Index("laf_logs_time", "time"),
    Index("laf_logs_function_time", "function", "time"),
    Index("laf_logs_request", "request_id"),
)


def _v1_key_value(connection: Connection) -> None:
    kv_table.create(connection)


def _v2_jobs(connection: Connection) -> None:
    jobs_table.create(connection)  # with its indexes, the partial unique one included


def _v3_logs(connection: Connection) -> None:
    logs_table.create(connection)


MIGRATIONS: list[Callable[[Connection], None]] = [_v1_key_value, _v2_jobs, _v3_logs]
SCHEMA_VERSION = len(MIGRATIONS)

_PG_MIGRATION_LOCK = 0x1AF_5C4E  # any constant shared by every laf-py node


async def migrate(engine: AsyncEngine) -> int:
    """Bring laf-py's tables up to SCHEMA_VERSION; return the version found before."""
    async with engine.connect() as connection:
        await connection.execution_options(**{SQLITE_BEGIN: "IMMEDIATE"})
        async with connection.begin():
            return await connection.run_sync(_migrate)


def _migrate(connection: Connection) -> int:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
    schema_table.create(connection, checkfirst=True)
    found = connection.execute(select(schema_table.c.version)).scalar()
    version = found or 0
    if version > SCHEMA_VERSION:
        raise RuntimeError(
            f"the database has laf-py schema version {version}, newer than this release "
            f"understands ({SCHEMA_VERSION}); upgrade laf-py"
        )
    for migration in MIGRATIONS[version:]:
        migration(connection)
    if found is None:
        connection.execute(schema_table.insert().values(id=1, version=SCHEMA_VERSION))
    elif version != SCHEMA_VERSION:
        connection.execute(schema_table.update().values(version=SCHEMA_VERSION))
    return version
