"""cloud.kv: a persistent key-value store of JSON values, in laf-py's SQL database.

Every call starts at once and returns a Pending: ``await`` it, or ``.result()`` it in a plain
``def``. A ``set`` that has returned is committed. Expired keys are never returned and are
swept from the table in the background.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from sqlalchemy import delete, func, or_, select
from sqlalchemy.dialects import postgresql, sqlite

from ..core import jsoncodec
from .delivery import LoopBridge
from .pending import Pending, start
from .schema import kv_table
from .sql import SQLStore

__all__ = ["KeyValueStore"]

log = logging.getLogger("laf_py")

SWEEP_INTERVAL = 60.0


class KeyValueStore:
    def __init__(self, store: SQLStore, bridge: LoopBridge) -> None:
        self._engine = store.engine
        self._bridge = bridge
        self._dialect = store.dialect
        self._insert = postgresql.insert if store.dialect == "postgresql" else sqlite.insert
        self._sweeper: asyncio.Task[None] | None = None

    # -- the public API ---------------------------------------------------------------------

    def get(self, key: str, default: Any = None) -> Pending[Any]:
        """The value stored at ``key``, or ``default`` if there is none or it expired."""
        return start(self._bridge, self._get(_check_key(key), default))

    def set(self, key: str, value: Any, ttl: float | None = None) -> Pending[None]:
        """Store a JSON-serialisable ``value``; with ``ttl``, it expires after that many seconds."""
        encoded = _encode(value)  # fail here, in the caller, if it is not JSON
        if ttl is not None and (isinstance(ttl, bool) or not ttl > 0):
            raise ValueError(f"ttl must be a number of seconds > 0, got {ttl!r}")
        expires_at = None if ttl is None else time.time() + ttl
        return start(self._bridge, self._set(_check_key(key), encoded, expires_at))

    def delete(self, key: str) -> Pending[bool]:
        """Remove ``key``; True if a live value was there."""
        return start(self._bridge, self._delete(_check_key(key)))

    def keys(self, prefix: str = "") -> Pending[list[str]]:
        """Every live key starting with ``prefix``, sorted."""
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be str, got {type(prefix).__name__}")
        return start(self._bridge, self._keys(prefix))

    # -- lifecycle, for the runtime ---------------------------------------------------------

    def start_sweeping(self, interval: float = SWEEP_INTERVAL) -> None:
        self._sweeper = asyncio.create_task(self._sweep_forever(interval), name="laf-py kv sweep")

    async def stop_sweeping(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)

    async def sweep(self) -> int:
        """Delete expired rows now; returns how many."""
        async with self._engine.begin() as connection:
            result = await connection.execute(
                delete(kv_table).where(kv_table.c.expires_at <= time.time())
            )
        return int(result.rowcount or 0)

    # -- internals --------------------------------------------------------------------------

    async def _get(self, key: str, default: Any) -> Any:
        query = select(kv_table.c.value).where(kv_table.c.key == key, _live())
        async with self._engine.connect() as connection:
            value = (await connection.execute(query)).scalar()
        return default if value is None else json.loads(value)

    async def _set(self, key: str, value: str, expires_at: float | None) -> None:
        upsert = self._insert(kv_table).values(key=key, value=value, expires_at=expires_at)
        upsert = upsert.on_conflict_do_update(
            index_elements=[kv_table.c.key],
            set_={"value": upsert.excluded.value, "expires_at": upsert.excluded.expires_at},
        )
        async with self._engine.begin() as connection:
            await connection.execute(upsert)

    async def _delete(self, key: str) -> bool:
        async with self._engine.begin() as connection:
            result = await connection.execute(
                delete(kv_table).where(kv_table.c.key == key, _live())
            )
        return bool(result.rowcount)

    async def _keys(self, prefix: str) -> list[str]:
        order = kv_table.c.key.collate("C") if self._dialect == "postgresql" else kv_table.c.key
        query = select(kv_table.c.key).where(_live()).order_by(order)  # by code point
        if prefix:
            # Not LIKE: SQLite's is case-insensitive. A plain comparison of the first characters.
            query = query.where(func.substr(kv_table.c.key, 1, len(prefix)) == prefix)
        async with self._engine.connect() as connection:
            return list((await connection.execute(query)).scalars())

    async def _sweep_forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sweep()
            except Exception:
                log.exception("sweeping expired kv keys failed; will try again")


def _encode(value: Any) -> str:
    """Strict JSON: what comes back is what went in, or its JSON form (a ``datetime`` comes
    back as its ISO string, a set as a list). The standard library, not orjson, which would
    turn NaN into null and read integers past 64 bits back as floats; same types as HTTP."""
    return jsoncodec.dumps_strict(value)


def _live() -> Any:
    return or_(kv_table.c.expires_at.is_(None), kv_table.c.expires_at > time.time())


def _check_key(key: str) -> str:
    if not isinstance(key, str) or not key:
        raise TypeError(f"kv keys are non-empty strings, got {key!r}")
    return key
