"""``cloud.kv``: the persistent key-value store, on a SQLite file and on PostgreSQL.

Called directly from the test body (the in-process server shares the test's event loop) and
through HTTP functions, async and plain ``def``; persistence across restarts and ``kill -9``.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url

from laf_py import cloud

from .conftest import wait_until, write_function

pytestmark = pytest.mark.both_servers

MISSING = "<missing>"

SET_ASYNC = """
from laf_py import cloud

async def main(ctx):
    await cloud.kv.set(ctx.body["key"], ctx.body["value"])
    return {"value": await cloud.kv.get(ctx.body["key"])}
"""

SET_SYNC = """
import threading

from laf_py import cloud

def main(ctx):
    cloud.kv.set(ctx.body["key"], ctx.body["value"]).result()
    value = cloud.kv.get(ctx.body["key"]).result()
    return {"value": value, "thread": threading.current_thread().name}
"""

GET = """
from laf_py import cloud

async def main(ctx):
    return {"value": await cloud.kv.get(ctx.query["key"], "<missing>")}
"""

FORGET_ASYNC = """
from laf_py import cloud

async def main(ctx):
    cloud.kv.set(ctx.body["key"], ctx.body["value"])  # no await
    return "started"
"""

FORGET_SYNC = """
from laf_py import cloud

def main(ctx):
    cloud.kv.set(ctx.body["key"], ctx.body["value"])  # no .result()
    return "started"
"""

RESULT_ON_LOOP = """
from laf_py import cloud

async def main(ctx):
    pending = cloud.kv.get("anything")
    try:
        pending.result()
    except RuntimeError as exc:
        await pending
        return str(exc)
    return "no error"
"""

NON_JSON_IN_CALLER = """
from laf_py import cloud

{keyword}def main(ctx):
    try:
        cloud.kv.set("k", {{"tags": [object()]}})
    except TypeError:
        return "TypeError"
    return "stored"
"""


async def kv_rows() -> dict[str, float | None]:
    """Every row of laf_kv, expired or not: key → expires_at."""
    async with cloud.sql.engine.connect() as connection:
        result = await connection.execute(text("SELECT key, expires_at FROM laf_kv"))
        return {key: expires_at for key, expires_at in result}


async def read_kv_row(database_url: str, key: str) -> str | None:
    """The raw JSON stored for ``key``, read with a fresh connection of our own."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        with sqlite3.connect(str(url.database)) as connection:
            row = connection.execute("SELECT value FROM laf_kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])
    connection = await asyncpg.connect(_asyncpg_dsn(url))
    try:
        value = await connection.fetchval("SELECT value FROM laf_kv WHERE key = $1", key)
    finally:
        await connection.close()
    return None if value is None else str(value)


def _asyncpg_dsn(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


class KVWriteLock:
    """A lock of our own that makes every write to laf_kv wait until ``release()``."""

    def __init__(self, database_url: str) -> None:
        self.url = make_url(database_url)
        self._sqlite: sqlite3.Connection | None = None
        self._pg: asyncpg.Connection | None = None

    async def acquire(self) -> None:
        if self.url.get_backend_name() == "sqlite":
            # In a thread: waiting for the write lock here must not stop the server's loop,
            # which may be in the middle of a write of its own (function logs, the sweepers).
            self._sqlite = await asyncio.to_thread(self._lock_sqlite)
            return
        self._pg = await asyncpg.connect(_asyncpg_dsn(self.url))
        await self._pg.execute("BEGIN; LOCK TABLE laf_kv IN EXCLUSIVE MODE")

    def _lock_sqlite(self) -> sqlite3.Connection:
        connection = sqlite3.connect(
            str(self.url.database), isolation_level=None, check_same_thread=False
        )
        connection.execute("BEGIN IMMEDIATE")
        return connection

    async def release(self) -> None:
        if self._sqlite is not None:
            self._sqlite.execute("ROLLBACK")
            self._sqlite.close()
        if self._pg is not None:
            await self._pg.close()  # ends the transaction and its lock


# -- values --------------------------------------------------------------------------------

VALUES: dict[str, Any] = {
    "dict": {"a": 1, "nested": {"b": [1, 2, {"c": None}]}, "text": "ü"},
    "list": [1, "two", 3.5, True, None, {"x": []}],
    "str": "hello, wörld 🌍",
    "empty-str": "",
    "int": 42,
    "negative-int": -7,
    "big-int": 2**62,
    "float": 3.25,
    "true": True,
    "false": False,
    "zero": 0,
    "empty-list": [],
    "empty-dict": {},
}


async def test_every_json_type_round_trips(serve, functions_dir: Path, database_url: str) -> None:
    """dict, list, str, int, float and bool values come back equal and of the same type."""
    async with serve(functions_dir, database_url=database_url):
        for key, value in VALUES.items():
            await cloud.kv.set(key, value)
        for key, value in VALUES.items():
            got = await cloud.kv.get(key)
            assert got == value, key
            assert type(got) is type(value), key


@pytest.mark.parametrize("value", [2**70, float("inf"), float("nan")], ids=["2**70", "inf", "nan"])
async def test_value_is_never_silently_altered(
    serve, functions_dir: Path, database_url: str, value: Any
) -> None:
    """Numbers JSON has trouble with (past 64 bits, inf, NaN) are either refused when set
    is called, or come back as they were; never changed into something else."""
    async with serve(functions_dir, database_url=database_url):
        try:
            pending = cloud.kv.set("k", value)
        except (TypeError, ValueError):
            assert await cloud.kv.get("k", MISSING) == MISSING
            return
        await pending
        got = await cloud.kv.get("k")
        assert type(got) is type(value)
        assert got == value or (math.isnan(value) and math.isnan(got))


async def test_none_is_a_value_not_missing(serve, functions_dir: Path, database_url: str) -> None:
    """A stored None comes back as None, not as the default."""
    async with serve(functions_dir, database_url=database_url):
        await cloud.kv.set("nothing", None)
        assert await cloud.kv.get("nothing", "default") is None
        assert await cloud.kv.keys() == ["nothing"]


async def test_missing_key_gives_default(serve, functions_dir: Path, database_url: str) -> None:
    """get of an unknown key → None, or the default given."""
    async with serve(functions_dir, database_url=database_url):
        assert await cloud.kv.get("absent") is None
        assert await cloud.kv.get("absent", "fallback") == "fallback"
        assert await cloud.kv.get("absent", default={"d": 1}) == {"d": 1}


async def test_set_overwrites(serve, functions_dir: Path, database_url: str) -> None:
    """A second set replaces the value, even with another type."""
    async with serve(functions_dir, database_url=database_url):
        await cloud.kv.set("k", {"version": 1})
        await cloud.kv.set("k", [2])
        assert await cloud.kv.get("k") == [2]
        assert await cloud.kv.keys() == ["k"]


async def test_delete_reports_whether_there_was_a_value(
    serve, functions_dir: Path, database_url: str
) -> None:
    """delete → True and the key is gone; again → False."""
    async with serve(functions_dir, database_url=database_url):
        await cloud.kv.set("k", 1)
        await cloud.kv.set("other", 2)
        assert await cloud.kv.delete("k") is True
        assert await cloud.kv.get("k", MISSING) == MISSING
        assert await cloud.kv.delete("k") is False
        assert await cloud.kv.delete("never-set") is False
        assert await cloud.kv.get("other") == 2


# -- keys ----------------------------------------------------------------------------------


async def test_keys_are_sorted(serve, functions_dir: Path, database_url: str) -> None:
    """keys() lists every key, in sorted (code point) order."""
    names = ["b", "a", "B", "a-b", "ab", "_x", "Z", "a b", "10", "9"]
    async with serve(functions_dir, database_url=database_url):
        for name in names:
            await cloud.kv.set(name, 1)
        assert await cloud.kv.keys() == sorted(names)


async def test_keys_with_prefix(serve, functions_dir: Path, database_url: str) -> None:
    """keys(prefix) lists only the keys starting with it, sorted; no match → []."""
    async with serve(functions_dir, database_url=database_url):
        for name in ["user/2", "user/1", "users", "use", "room/1", "user/10"]:
            await cloud.kv.set(name, 1)
        assert await cloud.kv.keys("user/") == ["user/1", "user/10", "user/2"]
        assert await cloud.kv.keys("user") == ["user/1", "user/10", "user/2", "users"]
        assert await cloud.kv.keys(prefix="room") == ["room/1"]
        assert await cloud.kv.keys("nothing") == []
        assert await cloud.kv.keys("") == await cloud.kv.keys()


async def test_prefix_wildcards_match_literally(
    serve, functions_dir: Path, database_url: str
) -> None:
    """``%``, ``_``, ``/`` and ``\\`` in a prefix are plain characters, not LIKE patterns."""
    names = ["50%off", "50xoff", "50", "a_b", "axb", "a_", "c/d", "c\\d", "cxd", "%", "_"]
    async with serve(functions_dir, database_url=database_url):
        for name in names:
            await cloud.kv.set(name, 1)
        assert await cloud.kv.keys("50%") == ["50%off"]
        assert await cloud.kv.keys("a_") == ["a_", "a_b"]
        assert await cloud.kv.keys("%") == ["%"]
        assert await cloud.kv.keys("_") == ["_"]
        assert await cloud.kv.keys("c/") == ["c/d"]
        assert await cloud.kv.keys("c\\") == ["c\\d"]


async def test_unicode_keys(serve, functions_dir: Path, database_url: str) -> None:
    """Keys in any script, with emoji and accents, are stored, listed and found by prefix."""
    names = ["ключ", "ключи/1", "日本語", "🌍/earth", "é", "e\u0301"]
    async with serve(functions_dir, database_url=database_url):
        for index, name in enumerate(names):
            await cloud.kv.set(name, index)
        for index, name in enumerate(names):
            assert await cloud.kv.get(name) == index
        assert await cloud.kv.keys() == sorted(names)
        assert await cloud.kv.keys("ключ") == ["ключ", "ключи/1"]
        assert await cloud.kv.keys("🌍") == ["🌍/earth"]


# -- time to live --------------------------------------------------------------------------


async def test_ttl_key_expires_from_get(serve, functions_dir: Path, database_url: str) -> None:
    """set(ttl=0.3): readable at once, then get gives the default."""
    async with serve(functions_dir, database_url=database_url):
        await cloud.kv.set("session", {"user": 1}, ttl=0.3)
        assert await cloud.kv.get("session") == {"user": 1}
        await wait_until(lambda: _is_missing("session"), timeout=5)


async def test_ttl_key_expires_from_keys(serve, functions_dir: Path, database_url: str) -> None:
    """An expired key is never listed by keys(), with or without a prefix."""
    async with serve(functions_dir, database_url=database_url):
        await cloud.kv.set("temp/1", 1, ttl=0.3)
        await cloud.kv.set("temp/2", 2)
        assert await cloud.kv.keys("temp/") == ["temp/1", "temp/2"]
        await wait_until(lambda: _is_missing("temp/1"), timeout=5)
        assert "temp/1" in await kv_rows()  # not swept yet: filtered on reading
        assert await cloud.kv.keys("temp/") == ["temp/2"]
        assert await cloud.kv.keys() == ["temp/2"]


async def test_delete_of_expired_key_is_false(
    serve, functions_dir: Path, database_url: str
) -> None:
    """An expired value is not "there": delete reports False."""
    async with serve(functions_dir, database_url=database_url):
        await cloud.kv.set("temp", 1, ttl=0.3)
        await wait_until(lambda: _is_missing("temp"), timeout=5)
        assert await cloud.kv.delete("temp") is False


async def test_set_without_ttl_clears_expiry(serve, functions_dir: Path, database_url: str) -> None:
    """Overwriting a key that had a ttl without one makes it permanent."""
    async with serve(functions_dir, database_url=database_url):
        await cloud.kv.set("k", "short-lived", ttl=0.3)
        await cloud.kv.set("k", "permanent")
        await cloud.kv.set("witness", 1, ttl=0.3)  # expires after k's old deadline
        assert (await kv_rows())["k"] is None
        await wait_until(lambda: _is_missing("witness"), timeout=5)
        assert await cloud.kv.get("k") == "permanent"
        assert await cloud.kv.keys() == ["k"]


async def test_set_with_ttl_replaces_expiry(serve, functions_dir: Path, database_url: str) -> None:
    """Overwriting a permanent key with a ttl makes it expire."""
    async with serve(functions_dir, database_url=database_url):
        await cloud.kv.set("k", "permanent")
        await cloud.kv.set("k", "short-lived", ttl=0.3)
        assert await cloud.kv.get("k") == "short-lived"
        await wait_until(lambda: _is_missing("k"), timeout=5)


@pytest.mark.parametrize("ttl", [0, -1, True, False, float("nan")])
async def test_bad_ttl_is_value_error_at_call(
    serve, functions_dir: Path, database_url: str, ttl: Any
) -> None:
    """ttl 0, negative, a bool or NaN → ValueError raised by set itself; nothing stored."""
    async with serve(functions_dir, database_url=database_url):
        with pytest.raises(ValueError, match="ttl"):
            cloud.kv.set("k", 1, ttl=ttl)  # no await: the call itself raises
        assert await cloud.kv.get("k", MISSING) == MISSING


@pytest.mark.parametrize("value", [1j, object(), b"bytes", {"nested": {1j}}])
async def test_non_json_value_is_type_error_at_call(
    serve, functions_dir: Path, database_url: str, value: Any
) -> None:
    """A value JSON cannot represent → TypeError raised by set itself; nothing stored."""
    async with serve(functions_dir, database_url=database_url):
        with pytest.raises(TypeError):
            cloud.kv.set("k", value)
        assert await cloud.kv.keys() == []


@pytest.mark.parametrize("keyword", ["async ", ""], ids=["async", "sync"])
async def test_non_json_value_raises_in_the_function(
    serve, http, functions_dir: Path, database_url: str, keyword: str
) -> None:
    """The TypeError reaches the function that called set (async or plain def)."""
    write_function(functions_dir, "bad", NON_JSON_IN_CALLER.format(keyword=keyword))
    async with serve(functions_dir, database_url=database_url) as server:
        response = await http.get(server.fn_url("bad"))
    assert response.status_code == 200
    assert response.text == "TypeError"


@pytest.mark.parametrize("key", ["", None, 1, b"key", ("a",)])
async def test_bad_key_is_type_error_at_call(
    serve, functions_dir: Path, database_url: str, key: Any
) -> None:
    """get, set and delete refuse a key that is not a non-empty str, when called."""
    async with serve(functions_dir, database_url=database_url):
        with pytest.raises(TypeError):
            cloud.kv.get(key)
        with pytest.raises(TypeError):
            cloud.kv.set(key, 1)
        with pytest.raises(TypeError):
            cloud.kv.delete(key)
        assert await cloud.kv.keys() == []


async def test_bad_prefix_is_type_error(serve, functions_dir: Path, database_url: str) -> None:
    """keys() refuses a prefix that is not a str."""
    async with serve(functions_dir, database_url=database_url):
        with pytest.raises(TypeError):
            cloud.kv.keys(1)  # type: ignore[arg-type]


async def test_sweep_removes_expired_rows(serve, functions_dir: Path, database_url: str) -> None:
    """sweep() deletes the expired rows from laf_kv, keeps the rest, and returns the count."""
    async with serve(functions_dir, database_url=database_url):
        await cloud.kv.set("gone/1", 1, ttl=0.3)
        await cloud.kv.set("gone/2", 2, ttl=0.3)
        await cloud.kv.set("kept", 3)
        await cloud.kv.set("kept-ttl", 4, ttl=3600)
        await wait_until(lambda: _are_missing("gone/1", "gone/2"), timeout=5)
        assert set(await kv_rows()) == {"gone/1", "gone/2", "kept", "kept-ttl"}
        assert await cloud.kv.sweep() == 2
        assert set(await kv_rows()) == {"kept", "kept-ttl"}
        assert await cloud.kv.sweep() == 0


async def _is_missing(key: str) -> bool:
    return await cloud.kv.get(key, MISSING) == MISSING


async def _are_missing(*keys: str) -> bool:
    return all([await _is_missing(key) for key in keys])


# -- concurrency ---------------------------------------------------------------------------


async def test_concurrent_sets_to_distinct_keys(
    serve, functions_dir: Path, database_url: str
) -> None:
    """300 concurrent sets of distinct keys all succeed and are all stored."""
    async with serve(functions_dir, database_url=database_url):
        await asyncio.gather(*(cloud.kv.set(f"k/{i:03}", {"i": i}) for i in range(300)))
        assert await cloud.kv.keys("k/") == [f"k/{i:03}" for i in range(300)]
        values = await asyncio.gather(*(cloud.kv.get(f"k/{i:03}") for i in range(300)))
        assert values == [{"i": i} for i in range(300)]


async def test_concurrent_sets_to_one_key(serve, functions_dir: Path, database_url: str) -> None:
    """300 concurrent sets of one key all succeed; one of the values is left, whole."""
    async with serve(functions_dir, database_url=database_url):
        await asyncio.gather(*(cloud.kv.set("counter", {"i": i}) for i in range(300)))
        value = await cloud.kv.get("counter")
        assert value in [{"i": i} for i in range(300)]
        assert await cloud.kv.keys() == ["counter"]


async def test_concurrent_mixed_operations(serve, functions_dir: Path, database_url: str) -> None:
    """Concurrent sets, gets, keys and deletes on overlapping keys raise nothing."""
    async with serve(functions_dir, database_url=database_url):
        await asyncio.gather(*(cloud.kv.set(f"k/{i % 10}", i) for i in range(100)))
        operations: list[Any] = []
        for i in range(300):
            key = f"k/{i % 10}"
            kind = i % 4
            if kind == 0:
                operations.append(cloud.kv.set(key, i))
            elif kind == 1:
                operations.append(cloud.kv.get(key))
            elif kind == 2:
                operations.append(cloud.kv.keys("k/"))
            else:
                operations.append(cloud.kv.delete(key))
        await asyncio.gather(*operations)
        await asyncio.gather(*(cloud.kv.set(f"k/{i}", i) for i in range(10)))
        assert await cloud.kv.keys("k/") == [f"k/{i}" for i in range(10)]


async def test_concurrent_sets_from_plain_def_functions(
    serve, http, functions_dir: Path, database_url: str
) -> None:
    """50 concurrent calls of a plain def function that sets and reads back all succeed."""
    write_function(functions_dir, "put", SET_SYNC)
    async with serve(functions_dir, database_url=database_url) as server:
        responses = await asyncio.gather(
            *(
                http.post(server.fn_url("put"), json={"key": f"t/{i:02}", "value": i})
                for i in range(50)
            )
        )
        assert [r.status_code for r in responses] == [200] * 50
        assert [r.json()["value"] for r in responses] == list(range(50))
        assert await cloud.kv.keys("t/") == [f"t/{i:02}" for i in range(50)]


# -- from functions ------------------------------------------------------------------------


async def test_async_function_sets_and_gets(
    serve, http, functions_dir: Path, database_url: str
) -> None:
    """An async function awaits cloud.kv.set/get; another function reads the value."""
    write_function(functions_dir, "put", SET_ASYNC)
    write_function(functions_dir, "get", GET)
    async with serve(functions_dir, database_url=database_url) as server:
        put = await http.post(server.fn_url("put"), json={"key": "k", "value": {"a": [1]}})
        got = await http.get(server.fn_url("get"), params={"key": "k"})
    assert put.status_code == 200
    assert put.json() == {"value": {"a": [1]}}
    assert got.json() == {"value": {"a": [1]}}


async def test_plain_def_function_uses_result(
    serve, http, functions_dir: Path, database_url: str
) -> None:
    """A plain def function (in a worker thread) calls set(...).result() and get(...).result()."""
    write_function(functions_dir, "put", SET_SYNC)
    write_function(functions_dir, "get", GET)
    async with serve(functions_dir, database_url=database_url) as server:
        put = await http.post(server.fn_url("put"), json={"key": "k", "value": [1, "x"]})
        got = await http.get(server.fn_url("get"), params={"key": "k"})
    assert put.status_code == 200
    assert put.json()["value"] == [1, "x"]
    assert put.json()["thread"] != "MainThread"
    assert got.json() == {"value": [1, "x"]}


@pytest.mark.parametrize("source", [FORGET_ASYNC, FORGET_SYNC], ids=["async", "sync"])
async def test_set_without_await_is_not_lost(
    serve, http, functions_dir: Path, database_url: str, source: str
) -> None:
    """A function that calls set without await (or .result()) and returns: the value lands."""
    write_function(functions_dir, "forget", source)
    write_function(functions_dir, "get", GET)
    async with serve(functions_dir, database_url=database_url) as server:
        response = await http.post(server.fn_url("forget"), json={"key": "k", "value": 7})
        assert response.text == "started"

        async def stored() -> bool:
            got = await http.get(server.fn_url("get"), params={"key": "k"})
            return bool(got.json() == {"value": 7})

        await wait_until(stored)


@pytest.mark.parametrize("source", [FORGET_ASYNC, FORGET_SYNC], ids=["async", "sync"])
async def test_set_without_await_finishes_before_stop(
    serve, http, functions_dir: Path, database_url: str, source: str
) -> None:
    """A set started without await, still waiting for the database when the server begins
    to stop, is committed by the time stop() returns: shutdown lets started writes finish."""
    write_function(functions_dir, "forget", source)
    lock = KVWriteLock(database_url)
    async with serve(functions_dir, database_url=database_url) as server:
        await lock.acquire()
        try:
            response = await http.post(server.fn_url("forget"), json={"key": "k", "value": 7})
            assert response.text == "started"
            assert await read_kv_row(database_url, "k") is None  # the set is waiting
        except BaseException:
            await lock.release()
            raise

        async def release_once_stopping() -> None:
            await wait_until(lambda: server.server.activity.draining, interval=0.001)
            await lock.release()

        releaser = asyncio.create_task(release_once_stopping())
    await releaser
    assert await read_kv_row(database_url, "k") == "7"


@pytest.mark.parametrize("source", [FORGET_ASYNC, FORGET_SYNC], ids=["async", "sync"])
async def test_shutdown_drain_waits_for_set_without_await(
    serve, http, functions_dir: Path, database_url: str, source: str
) -> None:
    """The runtime's drain (what stop() waits on) covers a set started without await,
    from an async function and from a plain def in a worker thread alike."""
    write_function(functions_dir, "forget", source)
    lock = KVWriteLock(database_url)
    async with serve(functions_dir, database_url=database_url) as server:
        await lock.acquire()
        try:
            response = await http.post(server.fn_url("forget"), json={"key": "k", "value": 7})
            assert response.text == "started"
            drain = asyncio.ensure_future(server.server.runtime.bridge.drain())
            for _ in range(3):  # let drain take its first steps; with nothing to wait for
                await asyncio.sleep(0)  # it would be done after the first
            assert not drain.done(), "drain did not wait for the set in progress"
        finally:
            await lock.release()
        await drain
        assert await read_kv_row(database_url, "k") == "7"


async def test_result_on_the_loop_says_await(
    serve, http, functions_dir: Path, database_url: str
) -> None:
    """In an async function, .result() of an unfinished Pending raises RuntimeError: await."""
    write_function(functions_dir, "wrong", RESULT_ON_LOOP)
    async with serve(functions_dir, database_url=database_url) as server:
        response = await http.get(server.fn_url("wrong"))
    assert response.status_code == 200
    assert "RuntimeError" not in response.text
    assert "await" in response.text


async def test_result_on_the_loop_from_test_body(
    serve, functions_dir: Path, database_url: str
) -> None:
    """On the loop thread .result() refuses to block; once awaited, .result() gives the value."""
    async with serve(functions_dir, database_url=database_url):
        await cloud.kv.set("k", 1)
        pending = cloud.kv.get("k")
        assert not pending.done()
        with pytest.raises(RuntimeError, match="await"):
            pending.result()
        assert await pending == 1
        assert pending.result() == 1


def test_kv_outside_a_server_is_runtime_error() -> None:
    """cloud.kv exists only while a server runs."""
    with pytest.raises(RuntimeError, match="running"):
        cloud.kv.get("k")


# -- persistence ---------------------------------------------------------------------------


async def test_values_survive_a_restart(serve, functions_dir: Path, database_url: str) -> None:
    """Values set by one server are read by the next one on the same database."""
    async with serve(functions_dir, database_url=database_url):
        await cloud.kv.set("k", {"kept": True})
        await cloud.kv.set("temp", 1, ttl=3600)
    async with serve(functions_dir, database_url=database_url):
        assert await cloud.kv.get("k") == {"kept": True}
        assert await cloud.kv.get("temp") == 1
        assert await cloud.kv.keys() == ["k", "temp"]


async def test_default_database_is_laf_db_beside_functions(
    serve, functions_dir: Path, tmp_path: Path
) -> None:
    """Without database_url the store is SQLite at .laf/laf.db beside the functions folder."""
    async with serve(functions_dir):
        await cloud.kv.set("k", "v")
        assert cloud.sql.engine.dialect.name == "sqlite"
    database = tmp_path / ".laf" / "laf.db"
    assert database.is_file()
    assert await read_kv_row(f"sqlite:///{database}", "k") == '"v"'


async def test_committed_set_survives_kill_9(
    cli_server, http, functions_dir: Path, database_url: str, tmp_path: Path
) -> None:
    """Once a function that awaited set has answered, SIGKILL does not lose the value."""
    write_function(functions_dir, "put", SET_ASYNC)
    write_function(functions_dir, "get", GET)
    if database_url.startswith("sqlite"):
        database_args: list[str] = []  # the default: .laf/laf.db in the app folder (cwd)
    else:
        database_args = ["--database-url", database_url]
    args = ["--functions", str(functions_dir), *database_args]

    first = cli_server(*args, cwd=tmp_path)
    put = await http.post(f"{first.url}/fn/put", json={"key": "k", "value": {"n": 1}})
    assert put.status_code == 200
    first.process.kill()  # SIGKILL: no shutdown, no flushing
    first.process.wait()
    if not database_args:
        assert (tmp_path / ".laf" / "laf.db").is_file()

    second = cli_server(*args, cwd=tmp_path)
    got = await http.get(f"{second.url}/fn/get", params={"key": "k"})
    assert got.status_code == 200
    assert got.json() == {"value": {"n": 1}}


async def test_keys_prefix_is_case_sensitive(serve, functions_dir: Path, database_url: str) -> None:
    """SQLite's LIKE ignores case; prefixes must not."""
    async with serve(functions_dir, database_url=database_url):
        for key in ("Session/1", "session/2", "SESSION/3"):
            await cloud.kv.set(key, 1)
        assert await cloud.kv.keys("session/") == ["session/2"]
