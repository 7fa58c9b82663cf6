"""Fixtures shared by the whole suite: real servers on ephemeral ports, real clients.

Nothing here sleeps to wait for something: `wait_until` polls a condition with a deadline,
and everything else awaits a future or a response.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import inspect
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from laf_py.testing import LafTestServer

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "functions"


def write_function(folder: Path, name: str, source: str) -> Path:
    """Write ``folder/<name>.py`` (``name`` may contain slashes) from dedented source."""
    path = folder / f"{name}.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source).lstrip())
    return path


async def wait_until(
    condition: Callable[[], Any | Awaitable[Any]], timeout: float = 10.0, interval: float = 0.02
) -> Any:
    """Poll ``condition`` (sync or async) until it returns something truthy, or fail."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {condition}")
        await asyncio.sleep(interval)


def decoded(frame: str | bytes) -> Any:
    """A WebSocket frame as JSON when it is JSON, else as it came."""
    try:
        return json.loads(frame)
    except ValueError:
        return frame


async def frame_matching(ws: Any, predicate: Callable[[Any], bool], timeout: float = 5.0) -> Any:
    """Read frames until one (JSON-decoded when it is JSON) satisfies ``predicate``; frames
    that come in between (presence broadcasts, say) are skipped."""

    async def read() -> Any:
        while True:
            value = decoded(await ws.recv())
            if predicate(value):
                return value

    return await asyncio.wait_for(read(), timeout)


@pytest.fixture
def functions_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "functions"
    folder.mkdir()
    return folder


# The servers laf-py runs on: its own (Tornado), and its ASGI app under uvicorn. A test module
# marked ``pytestmark = pytest.mark.both_servers`` runs each test on both; a test of it that
# is about one server's own behaviour (HTTP parsing, frames) says so with
# ``@pytest.mark.tornado_only("why")``.
SERVERS = ("tornado", "uvicorn")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "server_kind" not in metafunc.fixturenames:
        return
    if metafunc.definition.get_closest_marker("both_servers") is None:
        return
    if metafunc.definition.get_closest_marker("tornado_only") is not None:
        return
    metafunc.parametrize("server_kind", SERVERS)


@pytest.fixture
def server_kind() -> str:
    """The server ``serve`` starts: tornado, unless the test runs on both."""
    return "tornado"


@pytest.fixture
def serve(server_kind: str) -> Callable[..., Any]:
    """``async with serve(folder, **settings) as server:`` a real in-process server."""

    @asynccontextmanager
    async def start(folder: Path, **settings: Any) -> AsyncIterator[LafTestServer]:
        settings.setdefault("server", server_kind)
        # The test's tmp_path is the app folder: its data lands beside the functions.
        settings.setdefault("data_dir", folder.parent / ".laf")
        async with LafTestServer(folder, **settings) as server:
            yield server

    return start


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


class CliServer:
    """``laf-py serve`` in a child process, for start-up, signal and shutdown tests.

    A thread keeps reading its output into ``output``: a full pipe would freeze the server.
    """

    def __init__(self, process: subprocess.Popen[str], url: str, output: list[str]) -> None:
        self.process = process
        self.url = url
        self.ws_url = url.replace("http", "ws", 1) + "/__websocket__"
        self.output = output
        assert process.stdout is not None
        stream = process.stdout
        self._reader = threading.Thread(target=lambda: output.extend(stream), daemon=True)
        self._reader.start()

    @property
    def log(self) -> str:
        """Everything it has printed so far."""
        return "".join(self.output)

    def read_rest(self, timeout: float = 15) -> str:
        """Wait for the process to exit and return everything it logged."""
        self.process.wait(timeout)
        self._reader.join(timeout)
        return self.log


def start_cli(
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    nofile: tuple[int, int] | None = None,
) -> subprocess.Popen[str]:
    """``python -m laf_py ...``. Without ``cwd`` it runs in a new empty folder: the app
    folder (and so ``.laf/``) is the current directory by default, and a test must never
    write into the checkout's. ``nofile``: the child's RLIMIT_NOFILE (soft, hard)."""

    def limit_files() -> None:
        import resource

        assert nofile is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, nofile)

    if cwd is None:
        cwd = Path(tempfile.mkdtemp(prefix="app-", dir=_scratch()))
    return subprocess.Popen(
        [sys.executable, "-m", "laf_py", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        start_new_session=True,  # its own process group: cleanup reaches forked workers too
        preexec_fn=None if nofile is None else limit_files,
    )


@functools.cache
def _scratch() -> str:
    """One folder per test process for the apps of start_cli, removed when it exits."""
    folder = tempfile.mkdtemp(prefix="laf-py-tests-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def run_to_exit(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 20
) -> tuple[int, str]:
    """Run ``python -m laf_py ...`` until it exits; return (exit code, all output)."""
    process = start_cli(*args, env=env, cwd=cwd)
    try:
        output, _ = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, output


@pytest.fixture
def cli_server(server_kind: str) -> Iterator[Callable[..., CliServer]]:
    """Start ``python -m laf_py serve --port 0 ...`` and wait for its "listening on" line.
    Without ``cwd`` it runs in a new empty folder (:func:`start_cli`)."""
    started: list[CliServer] = []

    def start(
        *args: str,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        nofile: tuple[int, int] | None = None,
    ) -> CliServer:
        serve = ("serve", "--port", "0", "--server", server_kind)
        process = start_cli(*serve, *args, env=env, cwd=cwd, nofile=nofile)
        lines: list[str] = []
        assert process.stdout is not None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            match = re.search(r"listening on (http://\S+)", line)
            if match:
                server = CliServer(process, match.group(1), lines)
                started.append(server)
                return server
        process.kill()
        raise AssertionError("server did not start:\n" + "".join(lines))

    yield start
    for server in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait()


# -- databases ---------------------------------------------------------------------------------
# The kv/sql/token suite runs against a SQLite file and against the real PostgreSQL server.
# Without PostgreSQL those cases skip, unless LAF_REQUIRE_SERVICES=1 (as in CI): then they fail.

REQUIRE_SERVICES = os.environ.get("LAF_REQUIRE_SERVICES") == "1"
POSTGRES_ADMIN_DSN = os.environ.get(
    "LAF_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)
_postgres_state: dict[str, Any] = {}


def service_missing(reason: str) -> None:
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} (LAF_REQUIRE_SERVICES=1 forbids skipping)", pytrace=False)
    pytest.skip(reason)


def _postgres_database() -> str:
    """A database of our own on the PostgreSQL server, made once per test session."""
    if "dsn" in _postgres_state or "error" in _postgres_state:
        if "error" in _postgres_state:
            service_missing(_postgres_state["error"])
        return str(_postgres_state["dsn"])
    import asyncpg

    name = f"laf_py_test_{os.getpid()}"

    async def create() -> None:
        admin = await asyncpg.connect(POSTGRES_ADMIN_DSN, timeout=5)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()

    try:
        asyncio.run(create())
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        _postgres_state["error"] = f"PostgreSQL at {POSTGRES_ADMIN_DSN} is not usable: {exc}"
        service_missing(_postgres_state["error"])
    base = POSTGRES_ADMIN_DSN.rsplit("/", 1)[0]
    _postgres_state["dsn"] = f"{base}/{name}"
    _postgres_state["name"] = name
    return str(_postgres_state["dsn"])


def _reset_postgres(dsn: str) -> None:
    import asyncpg

    async def reset() -> None:
        connection = await asyncpg.connect(dsn, timeout=5)
        try:
            await connection.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
        finally:
            await connection.close()

    asyncio.run(reset())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    name = _postgres_state.get("name")
    if not name:
        return
    import asyncpg

    async def drop() -> None:
        admin = await asyncpg.connect(POSTGRES_ADMIN_DSN, timeout=5)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    asyncio.run(drop())


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database: a SQLite file, or a clean schema on the PostgreSQL server.

    Pass it on: ``serve(folder, database_url=database_url)``.
    """
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'db' / 'laf.db'}"
    dsn = _postgres_database()
    _reset_postgres(dsn)
    return dsn.replace("postgresql://", "postgresql+asyncpg://", 1)


# -- Redis -------------------------------------------------------------------------------------

REDIS_URL = os.environ.get("LAF_TEST_REDIS", "redis://127.0.0.1:6379/0")


@pytest.fixture
def redis_url() -> str:
    """The machine's Redis, checked reachable (skips, or fails under LAF_REQUIRE_SERVICES=1)."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        service_missing(f"Redis at {REDIS_URL} is not reachable: {exc}")
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def cluster(redis_url: str) -> Iterator[str]:
    """A cluster name no other test uses (parallel runs share Redis); its keys go afterwards."""
    import uuid

    import redis

    name = f"laf-test-{uuid.uuid4().hex[:12]}"
    yield name
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{name}:*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
