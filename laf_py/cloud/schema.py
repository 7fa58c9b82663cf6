"""laf-py's own tables, and the versioned migrations that create them.

``laf_schema`` holds one row with the schema version. Each release appends migrations and never
edits old ones; start-up applies the missing ones in one transaction, under a lock so that
several nodes starting together on one PostgreSQL do not race.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Column, Float, Integer, MetaData, Table, Text, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from .sql import SQLITE_BEGIN

__all__ = ["SCHEMA_VERSION", "kv_table", "migrate"]

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


def _v1_key_value(connection: Connection) -> None:
    kv_table.create(connection)


MIGRATIONS: list[Callable[[Connection], None]] = [_v1_key_value]
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
