"""Redis faults: unreachable at start, a bad URL, and a Redis that stops and comes back.

Outage tests run two nodes (separate processes, separate ports) on a PRIVATE ``redis-server``
started here on a free port, stopped with SIGTERM and started again on the same port; the
machine's shared Redis is never touched. Nodes' output is read by a thread all along; to know
that every line a node wrote up to now has been read, a test makes a request with a unique
query string and waits for its access-log line.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from .conftest import (
    CliServer,
    frame_matching,
    service_missing,
    wait_until,
    write_function,
)

SECRET = "faults-" + "s" * 40
PASSWORD = "hunter2-not-for-logs"
LOST = "lost Redis at "
RECONNECTED = "reconnected to Redis at "

WEBSOCKET = """
from laf_py import cloud

async def main(ctx):
    if ctx.method == "WebSocket:connection":
        if ctx.query.get("user"):
            ctx.socket.user_id = ctx.query["user"]
        ctx.socket.send(ctx.socket.id)
"""

BROADCAST = """
from laf_py import cloud

async def main(ctx):
    return {"delivered": await cloud.sockets.broadcast(ctx.body["message"])}
"""

PRESENCE = """
from laf_py import cloud

async def main(ctx):
    user = ctx.query["user"]
    return {
        "online": await cloud.sockets.is_online(user),
        "users": await cloud.sockets.online_users(),
    }
"""

HELLO = """
def main(ctx):
    return "hi"
"""


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m laf_py serve ...`` with no ``LAF_*`` setting inherited, to completion."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LAF_")}
    return subprocess.run(
        [sys.executable, "-m", "laf_py", "serve", "--port", "0", *args],
        capture_output=True,
        text=True,
        env={**clean, "LAF_SECRET": SECRET, **(env or {})},
        timeout=30,
    )


# -- refused at start -------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["flag", "env"])
def test_unreachable_redis_at_start_exits_1(functions_dir: Path, how: str) -> None:
    """No Redis at the URL: exit 1, one line "cannot reach Redis at ...", no password."""
    url = f"redis://laf:{PASSWORD}@127.0.0.1:1/0"
    args = ["--redis-url", url] if how == "flag" else []
    env = {"LAF_REDIS_URL": url} if how == "env" else {}
    done = run_cli("--functions", str(functions_dir), *args, env=env)
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("laf-py: error: cannot reach Redis at redis://127.0.0.1:1")
    assert "Traceback" not in done.stderr
    assert PASSWORD not in done.stdout + done.stderr


@pytest.mark.parametrize("url", ["http://x", f"http://laf:{PASSWORD}@x:6379/0"])
def test_bad_redis_scheme_exits_2(functions_dir: Path, url: str) -> None:
    """A URL that is not redis://: exit 2, one line naming --redis-url, no password."""
    done = run_cli("--functions", str(functions_dir), "--redis-url", url)
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("laf-py: error: --redis-url=")
    assert "LAF_REDIS_URL" in lines[0]
    assert PASSWORD not in done.stdout + done.stderr


NO_REDIS_SCRIPT = """
import asyncio
import sys
import urllib.request

import tornado.websocket

from laf_py import cloud
from laf_py.testing import LafTestServer


async def main(folder):
    async with LafTestServer(folder) as server:
        url = server.fn_url("hello")
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(url).read())
        assert body == b"hi", body
        ws = await tornado.websocket.websocket_connect(server.ws_url + "?user=ann")
        assert len(await ws.read_message()) == 24
        assert await cloud.sockets.broadcast("to all") == 1
        assert await cloud.sockets.send_to_user("ann", "to ann") == 1
        assert await cloud.sockets.is_online("ann")
        assert await cloud.sockets.online_users() == ["ann"]
        ws.close()
    print("redis" in sys.modules, "laf_py.bus.redis" in sys.modules)


asyncio.run(main(sys.argv[1]))
"""


def test_redis_never_imported_without_redis_url(functions_dir: Path) -> None:
    """An in-process server without a Redis URL serves HTTP and sockets without importing redis."""
    write_function(functions_dir, "__websocket__", WEBSOCKET)
    write_function(functions_dir, "hello", HELLO)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LAF_")}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(NO_REDIS_SCRIPT), str(functions_dir)],
        capture_output=True,
        text=True,
        env=clean,
        cwd=functions_dir.parent,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "False False", done.stdout


# -- a private Redis that stops and starts again ------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class PrivateRedis:
    """A ``redis-server`` of this test only, on a port of its own, in-memory."""

    def __init__(self, binary: str, folder: Path, persistent: bool = False) -> None:
        self.binary = binary
        self.folder = folder
        self.save = "3600 1" if persistent else ""  # a snapshot at shutdown, loaded at start
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def ping(self) -> bool:
        import redis

        try:
            with redis.Redis(port=self.port, socket_connect_timeout=1) as client:
                return bool(client.ping())
        except (redis.RedisError, OSError):
            return False

    async def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                self.save,
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        await wait_until(self.ping)

    async def stop(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(self.process.wait, 10)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
async def private_redis(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[PrivateRedis]:
    """A private Redis, checked reachable (skips, or fails under LAF_REQUIRE_SERVICES=1).

    In memory, unless parametrized indirectly with "persistent" (it keeps its data across
    a restart, as a Redis with snapshots does).
    """
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(binary).exists():
        service_missing("redis-server is not installed (needed for the Redis restart tests)")
    folder = tmp_path / "redis"
    folder.mkdir()
    server = PrivateRedis(binary, folder, getattr(request, "param", "") == "persistent")
    try:
        await server.start()
    except AssertionError:
        server.kill()
        service_missing(f"redis-server did not answer on port {server.port}")
    yield server
    server.kill()


class Node:
    """One node: a ``laf-py serve`` process, its output, its HTTP and WebSocket clients."""

    def __init__(self, server: CliServer, http: httpx.AsyncClient, stack: AsyncExitStack) -> None:
        self.server = server
        self.http = http
        self.stack = stack

    @property
    def log(self) -> str:
        return self.server.log

    def alive(self) -> bool:
        return self.server.process.poll() is None

    async def connect(self, user: str | None = None) -> tuple[Any, str]:
        """A client of this node and its socket id."""
        url = self.server.ws_url + (f"?user={user}" if user else "")
        ws = await self.stack.enter_async_context(websockets.connect(url))
        socket_id = await asyncio.wait_for(ws.recv(), 5)
        assert len(socket_id) == 24, socket_id
        return ws, socket_id

    async def broadcast(self, message: Any) -> int:
        response = await self.http.post(
            f"{self.server.url}/fn/broadcast", json={"message": message}
        )
        assert response.status_code == 200, response.text
        delivered: int = response.json()["delivered"]
        return delivered

    async def presence(self, user: str) -> dict[str, Any]:
        response = await self.http.get(f"{self.server.url}/fn/presence", params={"user": user})
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()
        return answer

    async def hello(self, query: str = "") -> httpx.Response:
        return await self.http.get(f"{self.server.url}/fn/hello{query}")

    async def read_log(self) -> str:
        """The whole log so far: waits until a request made now shows in it."""
        mark = uuid.uuid4().hex
        assert (await self.hello(f"?sync={mark}")).status_code == 200
        await wait_until(lambda: mark in self.log)
        return self.log


class Outage:
    """Two nodes joined by a private Redis that the test can stop and start again."""

    def __init__(self, redis: PrivateRedis, a: Node, b: Node) -> None:
        self.redis = redis
        self.a = a
        self.b = b

    async def stop_redis(self) -> None:
        """Stop Redis and wait until both nodes have noticed and logged it."""
        await self.redis.stop()
        await wait_until(lambda: LOST in self.a.log and LOST in self.b.log)

    async def start_redis(self) -> None:
        await self.redis.start()

    async def reconnected(self) -> None:
        """Wait until both nodes have logged that they are back."""
        await wait_until(
            lambda: RECONNECTED in self.a.log and RECONNECTED in self.b.log, timeout=15
        )


@pytest.fixture
async def outage(
    request: pytest.FixtureRequest,
    private_redis: PrivateRedis,
    cli_server,
    functions_dir: Path,
    tmp_path: Path,
) -> AsyncIterator[Outage]:
    """Nodes A and B on the private Redis (heartbeat 0.3 s unless parametrized indirectly)."""
    heartbeat = getattr(request, "param", {}).get("heartbeat", "0.3")
    write_function(functions_dir, "__websocket__", WEBSOCKET)
    write_function(functions_dir, "broadcast", BROADCAST)
    write_function(functions_dir, "presence", PRESENCE)
    write_function(functions_dir, "hello", HELLO)
    args = [
        "--functions",
        str(functions_dir),
        "--redis-url",
        private_redis.url,
        "--cluster",
        f"test-faults-{uuid.uuid4().hex[:12]}",
        "--heartbeat",
        heartbeat,
        "--shutdown-grace",
        "2",
        "--database-url",
        f"sqlite+aiosqlite:///{tmp_path / 'db' / 'laf.db'}",
    ]
    async with httpx.AsyncClient(timeout=10) as http, AsyncExitStack() as stack:
        a = Node(cli_server(*args, env={"LAF_SECRET": SECRET}), http, stack)
        b = Node(cli_server(*args, env={"LAF_SECRET": SECRET}), http, stack)
        yield Outage(private_redis, a, b)
    for node in (a, b):
        assert node.alive(), f"a node died:\n{node.log}"
        assert "Traceback" not in node.log, node.log


async def test_outage_is_logged_once_per_node(outage: Outage) -> None:
    """Redis stops: each node logs "lost Redis" once, however many deliveries fail."""
    for node in (outage.a, outage.b):
        await node.connect()
    await outage.stop_redis()
    for _ in range(3):
        for node in (outage.a, outage.b):
            assert await node.broadcast({"text": "during the outage"}) == 1
    for node in (outage.a, outage.b):
        log = await node.read_log()
        assert log.count(LOST) == 1, log
        assert f"{LOST}{outage.redis.url.rsplit('/', 1)[0]}" in log
        assert RECONNECTED not in log


async def test_local_delivery_during_outage(outage: Outage) -> None:
    """Redis down: a broadcast on node A reaches A's own clients and reports their count."""
    mine = [(await outage.a.connect())[0], (await outage.a.connect(user="ann"))[0]]
    await outage.b.connect()
    await outage.stop_redis()
    message = {"text": "local only"}
    assert await outage.a.broadcast(message) == len(mine)
    for ws in mine:
        assert await frame_matching(ws, lambda f: f == message) == message


async def test_http_and_websocket_work_during_outage(outage: Outage) -> None:
    """Redis down: both nodes still answer HTTP, accept connections and know local users."""
    await outage.stop_redis()
    for node in (outage.a, outage.b):
        response = await node.hello()
        assert response.status_code == 200
        assert response.text == "hi"
        ws, _ = await node.connect(user="bea")
        await ws.send("ping")  # the function ignores it; the connection stays open
        answer = await node.presence("bea")
        assert answer["online"] is True
        assert "bea" in answer["users"]
        assert node.alive()


async def test_reconnects_after_redis_restart(outage: Outage) -> None:
    """Redis comes back on the same port: each node logs "reconnected to Redis" once."""
    await outage.stop_redis()
    await outage.start_redis()
    await outage.reconnected()
    for node in (outage.a, outage.b):
        assert await node.broadcast({"text": "after the restart"}) == 0
    for node in (outage.a, outage.b):
        log = await node.read_log()
        assert log.count(RECONNECTED) == 1, log
        assert log.count(LOST) == 1, log
        assert log.index(LOST) < log.index(RECONNECTED)


async def test_cross_node_delivery_resumes_after_restart(outage: Outage) -> None:
    """After Redis restarts, a broadcast on node A reaches node B's client again."""
    ws, _ = await outage.b.connect()
    await outage.stop_redis()
    await outage.start_redis()
    sent: list[dict[str, str]] = []

    async def reached_b() -> bool:
        sent.append({"text": f"after the restart {len(sent)}"})
        return await outage.a.broadcast(sent[-1]) == 1

    await wait_until(reached_b, timeout=15, interval=0.1)
    assert await frame_matching(ws, lambda f: f == sent[-1]) == sent[-1]


async def test_presence_reestablished_after_restart(outage: Outage) -> None:
    """Redis restarts empty: node B claims its users again, node A sees carol online."""
    await outage.b.connect(user="carol")

    async def carol_online_on_a() -> bool:
        answer = await outage.a.presence("carol")
        return answer["online"] is True and "carol" in answer["users"]

    await wait_until(carol_online_on_a)
    await outage.stop_redis()
    await outage.start_redis()
    await wait_until(carol_online_on_a, timeout=15, interval=0.1)


# Redis keeps its data across the restart, and heartbeats are slow enough that nobody is
# reaped during the short outage: only node B itself can drop its stale claim on dan.
@pytest.mark.parametrize("private_redis", ["persistent"], indirect=True)
@pytest.mark.parametrize("outage", [pytest.param({"heartbeat": "2"}, id="slow")], indirect=True)
async def test_user_gone_during_outage_is_offline_after(outage: Outage) -> None:
    """dan leaves node B while Redis is down; Redis comes back with its data: dan is offline
    everywhere (B must not leave its old claim on dan behind)."""
    ws, _ = await outage.b.connect(user="dan")

    async def dan_online_on(node: Node) -> bool:
        answer = await node.presence("dan")
        return bool(answer["online"]) or "dan" in answer["users"]

    await wait_until(lambda: dan_online_on(outage.a))
    await outage.stop_redis()
    await ws.close()

    async def b_let_dan_go() -> bool:
        return not await dan_online_on(outage.b)

    await wait_until(b_let_dan_go)  # node B handled the close while Redis was down
    await outage.start_redis()
    await outage.reconnected()

    async def dan_offline_everywhere() -> bool:
        return not await dan_online_on(outage.a) and not await dan_online_on(outage.b)

    await wait_until(dan_offline_everywhere, timeout=5)
