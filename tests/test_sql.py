"""``cloud.sql``: the SQLAlchemy engine and sessions for users' own tables, laf-py's own
versioned schema, and the database settings (URL forms, bad URLs, unreachable servers)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, inspect, text
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from laf_py import cloud
from laf_py.cloud.schema import SCHEMA_VERSION, migrate
from laf_py.cloud.sql import SQLStore
from laf_py.config import Settings
from laf_py.exceptions import ConfigError
from laf_py.runtime import StartupError

from .conftest import run_to_exit, start_cli, write_function

SECRET = "s" * 40  # a fixed secret keeps the token-secret warning out of the CLI output

CREATE_NOTES = """
from sqlalchemy import text

from laf_py import cloud

async def main(ctx):
    async with cloud.sql.engine.begin() as connection:
        await connection.execute(text(
            "CREATE TABLE IF NOT EXISTS notes ("
            " title TEXT PRIMARY KEY, body TEXT NOT NULL, stars INTEGER NOT NULL DEFAULT 0)"
        ))
"""

ADD_NOTE = """
from sqlalchemy import text

from laf_py import Response, cloud

async def main(ctx):
    async with cloud.sql.session() as session:
        await session.execute(
            text("INSERT INTO notes (title, body) VALUES (:title, :body)"), ctx.body
        )
        await session.commit()
    return Response({"added": ctx.body["title"]}, status=201)
"""

ADD_NOTES_ATOMICALLY = """
from sqlalchemy import text

from laf_py import cloud

async def main(ctx):
    async with cloud.sql.session() as session:
        for note in ctx.body:
            await session.execute(
                text("INSERT INTO notes (title, body) VALUES (:title, :body)"), note
            )
        await session.commit()
    return {"added": len(ctx.body)}
"""

LIST_NOTES = """
from sqlalchemy import text

from laf_py import cloud

async def main(ctx):
    async with cloud.sql.engine.connect() as connection:
        result = await connection.execute(
            text("SELECT title, body, stars FROM notes ORDER BY title")
        )
        return [dict(row) for row in result.mappings()]
"""


@pytest.fixture
def notes_dir(functions_dir: Path) -> Path:
    """Functions that create a ``notes`` table at start-up, add notes and list them."""
    write_function(functions_dir, "__init__", CREATE_NOTES)
    write_function(functions_dir, "notes/add", ADD_NOTE)
    write_function(functions_dir, "notes/add_many", ADD_NOTES_ATOMICALLY)
    write_function(functions_dir, "notes/list", LIST_NOTES)
    return functions_dir


@asynccontextmanager
async def cloud_engine_begin() -> AsyncIterator[AsyncConnection]:
    """A transaction on cloud.sql.engine (which exists only once the server has started)."""
    async with cloud.sql.engine.begin() as connection:
        yield connection


async def table_names() -> set[str]:
    async with cloud.sql.engine.connect() as connection:
        return set(await connection.run_sync(lambda sync: inspect(sync).get_table_names()))


async def schema_rows() -> list[tuple[int, int]]:
    async with cloud.sql.engine.connect() as connection:
        result = await connection.execute(text("SELECT id, version FROM laf_schema"))
        return [(row.id, row.version) for row in result]


# -- users' own tables ---------------------------------------------------------------------


async def test_user_table_written_by_one_function_read_by_another(
    serve, http, notes_dir: Path, database_url: str
) -> None:
    """__init__ creates a table; one function inserts through a session, another reads it
    through the engine."""
    async with serve(notes_dir, database_url=database_url) as server:
        first = await http.post(server.fn_url("notes/add"), json={"title": "b", "body": "two"})
        second = await http.post(server.fn_url("notes/add"), json={"title": "a", "body": "one"})
        listed = await http.get(server.fn_url("notes/list"))
    assert first.status_code == 201
    assert first.json() == {"added": "b"}
    assert second.status_code == 201
    assert listed.status_code == 200
    assert listed.json() == [
        {"title": "a", "body": "one", "stars": 0},
        {"title": "b", "body": "two", "stars": 0},
    ]


async def test_session_without_commit_leaves_nothing(
    serve, http, notes_dir: Path, database_url: str
) -> None:
    """A session that fails half-way (duplicate key) commits none of its rows; the error is
    a 500 for the caller."""
    notes = [{"title": "x", "body": "1"}, {"title": "y", "body": "2"}, {"title": "x", "body": "3"}]
    async with serve(notes_dir, database_url=database_url) as server:
        failed = await http.post(server.fn_url("notes/add_many"), json=notes)
        listed = await http.get(server.fn_url("notes/list"))
        added = await http.post(server.fn_url("notes/add_many"), json=notes[:2])
        relisted = await http.get(server.fn_url("notes/list"))
    assert failed.status_code == 500
    assert listed.json() == []
    assert added.json() == {"added": 2}
    assert [note["title"] for note in relisted.json()] == ["x", "y"]


async def test_user_rows_survive_a_restart(serve, http, notes_dir: Path, database_url: str) -> None:
    """Rows of the user's table are still there after a restart; __init__ runs again fine."""
    async with serve(notes_dir, database_url=database_url) as server:
        added = await http.post(server.fn_url("notes/add"), json={"title": "t", "body": "kept"})
        assert added.status_code == 201
    async with serve(notes_dir, database_url=database_url) as server:
        listed = await http.get(server.fn_url("notes/list"))
    assert listed.json() == [{"title": "t", "body": "kept", "stars": 0}]


async def test_engine_uses_the_async_driver(serve, functions_dir: Path, database_url: str) -> None:
    """cloud.sql.engine runs on aiosqlite for SQLite and asyncpg for PostgreSQL."""
    expected = {"sqlite": "aiosqlite", "postgresql": "asyncpg"}
    async with serve(functions_dir, database_url=database_url):
        dialect = cloud.sql.engine.dialect
        assert database_url.startswith(dialect.name)
        assert dialect.driver == expected[dialect.name]
        async with cloud.sql.session() as session:
            assert (await session.execute(text("SELECT 1 + 1"))).scalar() == 2


def test_sql_outside_a_server_is_runtime_error() -> None:
    """cloud.sql exists only while a server runs."""
    with pytest.raises(RuntimeError, match="running"):
        _ = cloud.sql.engine


# -- plain def functions: execute() and transaction() -------------------------------------


def sqlite_url(folder: Path) -> str:
    return f"sqlite+aiosqlite:///{folder / 'db' / 'laf.db'}"


NOTES_FROM_PLAIN_DEF = """
import threading

from sqlalchemy import text

from laf_py import cloud

def main(ctx):
    insert = text("INSERT INTO notes (title, body) VALUES (:title, :body)")
    cloud.sql.execute(insert, ctx.body).result()  # a list of dicts: one row each
    starred = cloud.sql.execute(
        "UPDATE notes SET stars = stars + 1 WHERE title = :title", {"title": ctx.body[0]["title"]}
    ).result()
    rows = cloud.sql.execute("SELECT title, body, stars FROM notes ORDER BY title").result()
    return {
        "starred": starred.rowcount,
        "notes": [dict(row) for row in rows.mappings()],
        "on_main_thread": threading.current_thread() is threading.main_thread(),
    }
"""

STAR_IN_TRANSACTION = """
from sqlalchemy import text

from laf_py import HTTPError, cloud

def main(ctx):
    title = ctx.query["title"]

    def star(session):
        found = text("SELECT stars FROM notes WHERE title = :title")
        stars = session.execute(found, {"title": title}).scalar()
        if stars is None:
            raise LookupError(title)
        change = text("UPDATE notes SET stars = :stars WHERE title = :title")
        session.execute(change, {"stars": stars + 1, "title": title})
        return stars + 1

    try:
        return {"stars": cloud.sql.transaction(star).result()}
    except LookupError:
        raise HTTPError(404, f"no note {title!r}") from None
"""

ADD_THEN_CHANGE_MIND = """
from sqlalchemy import text

from laf_py import cloud

class ChangedMyMind(Exception):
    pass

def main(ctx):
    def add(session):
        session.execute(text("INSERT INTO notes (title, body) VALUES ('kept?', 'no')"))
        raise ChangedMyMind("after the insert")

    try:
        cloud.sql.transaction(add).result()
    except ChangedMyMind as exc:
        return {"raised": repr(exc)}
    return {"raised": None}
"""

SESSION_IN_PLAIN_DEF = """
from laf_py import cloud

def main(ctx):
    try:
        cloud.sql.session()
    except RuntimeError as exc:
        return {"error": str(exc)}
    return {"error": None}
"""


async def test_plain_def_runs_statements_with_execute(
    serve, http, notes_dir: Path, database_url: str
) -> None:
    """cloud.sql.execute(...).result() in a plain def (a worker thread): many-row insert,
    UPDATE rowcount, buffered SELECT rows, each committed; `await` works in async code."""
    write_function(notes_dir, "notes/sync", NOTES_FROM_PLAIN_DEF)
    notes = [{"title": "b", "body": "two"}, {"title": "a", "body": "one"}]
    async with serve(notes_dir, database_url=database_url) as server:
        response = await http.post(server.fn_url("notes/sync"), json=notes)
        listed = await http.get(server.fn_url("notes/list"))
        counted = await cloud.sql.execute("SELECT count(*) FROM notes")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["on_main_thread"] is False  # a worker thread: the loop runs on the main one
    assert body["starred"] == 1
    expected = [
        {"title": "a", "body": "one", "stars": 0},
        {"title": "b", "body": "two", "stars": 1},
    ]
    assert body["notes"] == expected
    assert listed.json() == expected  # committed: another function sees it
    assert counted.scalar() == 2


async def test_plain_def_transaction_commits_what_work_did(
    serve, http, notes_dir: Path, database_url: str
) -> None:
    """cloud.sql.transaction(work).result(): work gets a synchronous Session, its return value
    comes back, its writes are committed; an exception from work reaches the caller."""
    write_function(notes_dir, "notes/star", STAR_IN_TRANSACTION)
    async with serve(notes_dir, database_url=database_url) as server:
        await http.post(server.fn_url("notes/add"), json={"title": "t", "body": "x"})
        first = await http.post(server.fn_url("notes/star"), params={"title": "t"})
        second = await http.post(server.fn_url("notes/star"), params={"title": "t"})
        missing = await http.post(server.fn_url("notes/star"), params={"title": "nope"})
        listed = await http.get(server.fn_url("notes/list"))
    assert (first.status_code, first.json()) == (200, {"stars": 1})
    assert second.json() == {"stars": 2}
    assert missing.status_code == 404
    assert listed.json() == [{"title": "t", "body": "x", "stars": 2}]


async def test_transaction_that_raises_is_rolled_back(
    serve, http, notes_dir: Path, database_url: str
) -> None:
    """work() raising after an insert: the caller gets the exception, the insert is undone."""
    write_function(notes_dir, "notes/undo", ADD_THEN_CHANGE_MIND)
    async with serve(notes_dir, database_url=database_url) as server:
        response = await http.post(server.fn_url("notes/undo"))
        listed = await http.get(server.fn_url("notes/list"))
    assert response.json() == {"raised": "ChangedMyMind('after the insert')"}
    assert listed.json() == []


async def test_transaction_refuses_an_async_function(
    serve, functions_dir: Path, tmp_path: Path
) -> None:
    """transaction() takes a plain function of a Session; an async one is a TypeError at once
    (it would never run its body), pointing to session()."""

    async def work(session: object) -> None:
        pass

    async with serve(functions_dir, database_url=sqlite_url(tmp_path)):
        with pytest.raises(TypeError, match=r"cloud\.sql\.session\(\)"):
            cloud.sql.transaction(work)  # type: ignore[arg-type]


async def test_session_in_plain_def_is_runtime_error_naming_the_helpers(
    serve, http, functions_dir: Path, tmp_path: Path
) -> None:
    """cloud.sql.session() from a worker thread would take the server loop's connections to
    another loop: it raises RuntimeError saying what to use instead."""
    write_function(functions_dir, "session", SESSION_IN_PLAIN_DEF)
    async with serve(functions_dir, database_url=sqlite_url(tmp_path)) as server:
        response = await http.get(server.fn_url("session"))
    message = response.json()["error"]
    assert message is not None
    assert "cloud.sql.execute(" in message
    assert "cloud.sql.transaction(" in message
    assert ".result()" in message


# -- concurrent read-modify-write ----------------------------------------------------------

CALLS = 20

CREATE_COUNTER = """
from laf_py import cloud

def main(ctx):
    cloud.sql.execute("CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)").result()
    cloud.sql.execute("INSERT INTO counter (id, n) VALUES (1, 0)").result()
"""

# Each increment answers its new value, or 500 with the database's error for the test to show.
INCREMENT_IN_ASYNC_SESSION = """
from sqlalchemy import column, select, table, update

from laf_py import Response, cloud

counter = table("counter", column("id"), column("n"))

async def main(ctx):
    try:
        async with cloud.sql.session() as session:
            read = select(counter.c.n).where(counter.c.id == 1).with_for_update()
            n = (await session.execute(read)).scalar_one() + 1
            await session.execute(update(counter).where(counter.c.id == 1).values(n=n))
            await session.commit()
    except Exception as exc:
        return Response({"error": repr(exc)}, status=500)
    return {"n": n}
"""

INCREMENT_IN_TRANSACTION = """
from sqlalchemy import select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from laf_py import Response, cloud

class Base(DeclarativeBase):
    pass

class Counter(Base):
    __tablename__ = "counter"
    id: Mapped[int] = mapped_column(primary_key=True)
    n: Mapped[int]

def increment(session):
    counter = session.scalars(select(Counter).where(Counter.id == 1).with_for_update()).one()
    counter.n += 1
    return counter.n

def main(ctx):
    try:
        return {"n": cloud.sql.transaction(increment).result()}
    except Exception as exc:
        return Response({"error": repr(exc)}, status=500)
"""

INCREMENT_IN_ONE_UPDATE = """
from laf_py import Response, cloud

def main(ctx):
    try:
        done = cloud.sql.execute("UPDATE counter SET n = n + 1 WHERE id = 1 RETURNING n")
        return {"n": done.result().scalar_one()}
    except Exception as exc:
        return Response({"error": repr(exc)}, status=500)
"""


@pytest.mark.parametrize(
    "increment",
    [INCREMENT_IN_ASYNC_SESSION, INCREMENT_IN_TRANSACTION, INCREMENT_IN_ONE_UPDATE],
    ids=["async-session", "plain-def-transaction", "plain-def-execute-update"],
)
async def test_concurrent_increments_are_never_lost(
    serve, http, functions_dir: Path, database_url: str, increment: str
) -> None:
    """20 concurrent read-then-write calls: none fails ("database is locked" on SQLite), none
    is lost (PostgreSQL's READ COMMITTED without FOR UPDATE): the counter ends at 20."""
    write_function(functions_dir, "__init__", CREATE_COUNTER)
    write_function(functions_dir, "increment", increment)
    async with serve(functions_dir, database_url=database_url) as server:
        responses = await asyncio.gather(
            *(http.post(server.fn_url("increment")) for _ in range(CALLS))
        )
        final = (await cloud.sql.execute("SELECT n FROM counter WHERE id = 1")).scalar_one()
    assert [r.text for r in responses if r.status_code != 200] == []
    assert sorted(r.json()["n"] for r in responses) == list(range(1, CALLS + 1))
    assert final == CALLS


async def test_sqlite_second_read_then_write_session_waits_for_the_first(
    serve, functions_dir: Path, tmp_path: Path
) -> None:
    """Session B starts while session A has read the counter and not yet written it. A
    deferred BEGIN lets B read the old value, and B's write then fails at once with "database
    is locked" (busy timeout or not); BEGIN IMMEDIATE makes B wait for A's commit instead."""
    write_function(functions_dir, "__init__", CREATE_COUNTER)
    read = text("SELECT n FROM counter WHERE id = 1")
    write = text("UPDATE counter SET n = :n WHERE id = 1")
    async with serve(functions_dir, database_url=sqlite_url(tmp_path)):
        engine = cloud.sql.engine.sync_engine
        b_is_in = asyncio.Event()  # B has read, or is waiting for the write lock
        a_committed = asyncio.Event()

        async def increment_b() -> int:
            async with cloud.sql.session() as b:
                n = (await b.execute(read)).scalar_one() + 1
                await a_committed.wait()
                await b.execute(write, {"n": n})
                await b.commit()
            return n

        async with cloud.sql.session() as a:
            n = (await a.execute(read)).scalar_one() + 1
            a_connection = (await a.connection()).sync_connection

            def before(connection: Any, _c: Any, statement: str, *_: Any) -> None:
                if connection is not a_connection and statement.startswith("BEGIN IMMEDIATE"):
                    b_is_in.set()

            def after(connection: Any, _c: Any, statement: str, *_: Any) -> None:
                if connection is not a_connection and statement.startswith("SELECT"):
                    b_is_in.set()

            event.listen(engine, "before_cursor_execute", before)
            event.listen(engine, "after_cursor_execute", after)
            try:
                b_task = asyncio.ensure_future(increment_b())
                await asyncio.wait_for(b_is_in.wait(), 10)
                await a.execute(write, {"n": n})
                await a.commit()
                a_committed.set()
            finally:
                event.remove(engine, "before_cursor_execute", before)
                event.remove(engine, "after_cursor_execute", after)
        b_result = await b_task  # "database is locked" here without BEGIN IMMEDIATE
        final = (await cloud.sql.execute(read)).scalar_one()
    assert (n, b_result, final) == (1, 2, 2)


async def test_sqlite_readers_do_not_wait_for_a_writing_session(
    serve, functions_dir: Path, tmp_path: Path
) -> None:
    """While a session holds SQLite's write lock, cloud.kv reads and engine.connect() reads
    (plain deferred transactions, in WAL mode) answer at once."""
    async with serve(functions_dir, database_url=sqlite_url(tmp_path)):
        await cloud.kv.set("k", "before")
        async with cloud.sql.session() as writer:
            await writer.execute(text("SELECT 1"))  # BEGIN IMMEDIATE: holds the write lock
            await writer.execute(text("UPDATE laf_kv SET value = '\"during\"' WHERE key = 'k'"))
            value = await asyncio.wait_for(cloud.kv.get("k"), 5)
            keys = await asyncio.wait_for(cloud.kv.keys(), 5)

            async def read_with_engine() -> Any:
                async with cloud.sql.engine.connect() as connection:
                    return (await connection.execute(text("SELECT count(*) FROM laf_kv"))).scalar()

            counted = await asyncio.wait_for(read_with_engine(), 5)
            await writer.commit()
        after = await cloud.kv.get("k")
    assert (value, keys, counted, after) == ("before", ["k"], 1, "during")


# -- laf-py's own schema -------------------------------------------------------------------


async def test_own_tables_are_created(serve, functions_dir: Path, database_url: str) -> None:
    """A fresh database gets laf_schema (one row, SCHEMA_VERSION) and laf_kv."""
    async with serve(functions_dir, database_url=database_url):
        assert {"laf_schema", "laf_kv"} <= await table_names()
        assert await schema_rows() == [(1, SCHEMA_VERSION)]


async def test_restart_does_not_migrate_again(
    serve, functions_dir: Path, database_url: str
) -> None:
    """A second start on an up-to-date database succeeds, keeps the data, finds nothing to do."""
    async with serve(functions_dir, database_url=database_url):
        await cloud.kv.set("k", "v")
    async with serve(functions_dir, database_url=database_url):
        assert await schema_rows() == [(1, SCHEMA_VERSION)]
        assert await cloud.kv.get("k") == "v"
        assert await migrate(cloud.sql.engine) == SCHEMA_VERSION  # the version found before


async def test_newer_schema_refuses_to_start(serve, functions_dir: Path, database_url: str) -> None:
    """A database of a newer laf-py → StartupError telling to upgrade; the database is
    left as it was."""
    async with serve(functions_dir, database_url=database_url):
        async with cloud.sql.engine.begin() as connection:
            await connection.execute(
                text("UPDATE laf_schema SET version = :v"), {"v": SCHEMA_VERSION + 1}
            )
        await cloud.kv.set("k", "v")
    with pytest.raises(StartupError, match="upgrade laf-py"):
        async with serve(functions_dir, database_url=database_url):
            pass
    # Still untouched: reading it with an engine of our own.
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            version = (await connection.execute(text("SELECT version FROM laf_schema"))).scalar()
            value = (
                await connection.execute(text("SELECT value FROM laf_kv WHERE key = 'k'"))
            ).scalar()
    finally:
        await engine.dispose()
    assert version == SCHEMA_VERSION + 1
    assert value == '"v"'


async def test_newer_schema_cli_fails_in_one_line(
    serve, functions_dir: Path, database_url: str, tmp_path: Path
) -> None:
    """From the CLI, a newer schema is exit 1 with one error line saying to upgrade."""
    async with (
        serve(functions_dir, database_url=database_url),
        cloud_engine_begin() as connection,
    ):
        await connection.execute(text("UPDATE laf_schema SET version = version + 1"))
    code, output = await asyncio.to_thread(
        run_cli, "--functions", str(functions_dir), "--database-url", database_url, cwd=tmp_path
    )
    assert code == 1, output
    assert "Traceback" not in output
    errors = error_lines(output)
    assert len(errors) == 1, output
    assert errors[0].startswith("laf-py: error: cannot use the database")
    assert "upgrade laf-py" in errors[0]


async def test_concurrent_migrations_of_a_fresh_database(database_url: str) -> None:
    """Two nodes (or workers) migrating one fresh database at the same moment both succeed:
    one creates the schema, the other finds it up to date."""
    stores = [SQLStore(database_url), SQLStore(database_url)]
    try:
        found = await asyncio.gather(*(migrate(store.engine) for store in stores))
        async with stores[0].engine.connect() as connection:
            rows = (await connection.execute(text("SELECT id, version FROM laf_schema"))).all()
    finally:
        for store in stores:
            await store.close()
    assert sorted(found) == [0, SCHEMA_VERSION]
    assert [tuple(row) for row in rows] == [(1, SCHEMA_VERSION)]


# -- database settings ---------------------------------------------------------------------


def run_cli(*args: str, cwd: Path) -> tuple[int, str]:
    """``python -m laf_py serve --port 0 ...`` until it exits: (exit code, all output)."""
    return run_to_exit("serve", "--port", "0", *args, env={"LAF_SECRET": SECRET}, cwd=cwd)


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("laf-py: error:")]


@pytest.mark.parametrize("url", ["mysql://x", "sqlite://", "sqlite:///", "not a url"])
def test_bad_database_url_is_exit_2(url: str, functions_dir: Path, tmp_path: Path) -> None:
    """An unsupported or in-memory URL → exit 2, one line naming both ways to set it."""
    code, output = run_cli("--functions", str(functions_dir), "--database-url", url, cwd=tmp_path)
    assert code == 2, output
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert lines[0].startswith("laf-py: error:")
    assert "--database-url" in lines[0]
    assert "LAF_DATABASE_URL" in lines[0]
    assert "Traceback" not in output


def test_bad_database_url_from_environment(functions_dir: Path, tmp_path: Path) -> None:
    """LAF_DATABASE_URL=mysql://x → exit 2, one line naming LAF_DATABASE_URL."""
    process = start_cli(
        "serve",
        "--port",
        "0",
        "--functions",
        str(functions_dir),
        env={"LAF_DATABASE_URL": "mysql://x", "LAF_SECRET": SECRET},
        cwd=tmp_path,
    )
    output, _ = process.communicate(timeout=20)
    assert process.returncode == 2, output
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert lines[0].startswith("laf-py: error: LAF_DATABASE_URL")


def test_rejected_url_does_not_show_its_password(functions_dir: Path, tmp_path: Path) -> None:
    """A URL refused as a setting is reported without the password it carries."""
    url = "mysql://admin:hunter2@db.example/app"
    code, output = run_cli("--functions", str(functions_dir), "--database-url", url, cwd=tmp_path)
    assert code == 2, output
    assert "hunter2" not in output
    assert "LAF_DATABASE_URL" in output


@pytest.mark.parametrize(
    "url", ["postgresql://postgres@127.0.0.1:1/test", "postgresql://u:hunter2@127.0.0.1:1/x"]
)
def test_unreachable_postgres_is_exit_1(url: str, functions_dir: Path, tmp_path: Path) -> None:
    """Nothing listening → exit 1, one line "cannot use the database", no password."""
    code, output = run_cli("--functions", str(functions_dir), "--database-url", url, cwd=tmp_path)
    assert code == 1, output
    assert "Traceback" not in output
    errors = error_lines(output)
    assert len(errors) == 1, output
    assert errors[0].startswith("laf-py: error: cannot use the database postgresql")
    assert "127.0.0.1:1" in errors[0]
    assert "hunter2" not in output


def test_unreachable_postgres_in_process_is_startup_error(functions_dir: Path) -> None:
    """In process, the same failure is a StartupError whose message hides the password."""
    from laf_py.testing import LafTestServer

    async def start() -> None:
        async with LafTestServer(
            functions_dir, database_url="postgresql+asyncpg://u:hunter2@127.0.0.1:1/x"
        ):
            pass

    with pytest.raises(StartupError) as caught:
        asyncio.run(start())
    message = str(caught.value)
    assert message.startswith("cannot use the database")
    assert "hunter2" not in message
    assert "\n" not in message


# -- URL forms -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u:p@db.example:5433/app", "postgresql+asyncpg://u:p@db.example:5433/app"),
        ("postgres://u:p@db.example/app", "postgresql+asyncpg://u:p@db.example/app"),
        ("postgresql+asyncpg://u@db.example/app", "postgresql+asyncpg://u@db.example/app"),
        ("sqlite:////var/lib/laf/data.db", "sqlite+aiosqlite:////var/lib/laf/data.db"),
        ("sqlite:///relative.db", "sqlite+aiosqlite:///relative.db"),
        ("sqlite+aiosqlite:////x/y.db", "sqlite+aiosqlite:////x/y.db"),
    ],
)
def test_url_gets_its_async_driver(functions_dir: Path, given: str, expected: str) -> None:
    """postgresql:// and postgres:// get asyncpg, sqlite:/// gets aiosqlite."""
    flags = {"functions_dir": str(functions_dir), "database_url": given}
    assert Settings.load(flags, {}).database_url == expected


def test_url_from_environment_gets_its_driver(functions_dir: Path) -> None:
    """LAF_DATABASE_URL is normalised the same way as the flag."""
    environ = {"LAF_FUNCTIONS": str(functions_dir), "LAF_DATABASE_URL": "postgres://u@h/db"}
    assert Settings.load({}, environ).database_url == "postgresql+asyncpg://u@h/db"


def test_password_with_special_characters_is_kept(functions_dir: Path) -> None:
    """Normalising keeps an escaped password intact (it is needed to connect)."""
    flags = {"functions_dir": str(functions_dir), "database_url": "postgresql://u:p%40ss@h/db"}
    assert Settings.load(flags, {}).database_url == "postgresql+asyncpg://u:p%40ss@h/db"


@pytest.mark.parametrize("url", ["mysql://x", "sqlite://", "oracle://u@h/db", ""])
def test_unsupported_url_is_config_error(functions_dir: Path, url: str) -> None:
    """Settings.load refuses other databases and in-memory SQLite with a ConfigError."""
    with pytest.raises(ConfigError, match="LAF_DATABASE_URL"):
        Settings.load({"functions_dir": str(functions_dir), "database_url": url}, {})


def test_default_database_is_in_the_app_folder(
    functions_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a URL: SQLite at .laf/laf.db in the app folder, which is the current directory
    unless --app-dir says otherwise, wherever --functions points."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    settings = Settings.load({"functions_dir": str(functions_dir)}, {})
    assert settings.database_url is None
    assert settings.database == f"sqlite+aiosqlite:///{elsewhere.resolve() / '.laf' / 'laf.db'}"
    app = Settings.load({"app_dir": str(tmp_path), "functions_dir": str(functions_dir)}, {})
    assert app.database == f"sqlite+aiosqlite:///{tmp_path.resolve() / '.laf' / 'laf.db'}"


async def test_two_stores_switch_a_fresh_sqlite_file_to_wal_together(tmp_path: Path) -> None:
    """Workers opening a brand-new SQLite file at once all get it into WAL mode."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
    stores = [SQLStore(url) for _ in range(4)]
    try:
        await asyncio.gather(*(store.use_wal_mode() for store in stores))
        await asyncio.gather(*(migrate(store.engine) for store in stores))
        async with stores[0].engine.connect() as connection:
            mode = (await connection.exec_driver_sql("PRAGMA journal_mode")).scalar()
    finally:
        for store in stores:
            await store.close()
    assert mode == "wal"
