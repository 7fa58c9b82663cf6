"""``--workers 2``: two processes serving one port, joined through the real Redis.

Which worker takes a new connection is the kernel's choice, so tests connect clients until
both workers hold some (a socket id starts with its worker's node id), in a bounded loop.
Each test gets its own ``--cluster`` name, so runs in parallel never share Redis channels.
The parent's output is read by a thread all along, so its pipe never fills.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from .conftest import (
    EXAMPLES,
    REDIS_URL,
    CliServer,
    decoded,
    frame_matching,
    wait_until,
    write_function,
)

SECRET = "workers-" + "s" * 40
ADMIN_TOKEN = "workers-admin-token"
MAX_CLIENTS = 60  # connections tried before concluding the kernel never picks a worker
NODE_ID = 8  # hex characters of a socket id that name its worker

# Sends the socket id on connect (``?user=`` binds a user) and runs JSON commands sent to it,
# answering ``{"result": ...}`` from the worker that holds the connection.
WEBSOCKET = """
import json
from laf_py import cloud

async def main(ctx):
    socket = ctx.socket
    if ctx.method == "WebSocket:connection":
        if ctx.query.get("user"):
            socket.user_id = ctx.query["user"]
        socket.send(socket.id)
    elif ctx.method == "WebSocket:message":
        command = json.loads(ctx.params["data"])
        op = command["op"]
        if op == "publish":
            result = await cloud.sockets.publish(command["message"], command["ids"])
        elif op == "send":
            target = cloud.sockets.get(command["id"])
            result = 0 if target is None else await target.send(command["message"])
        elif op == "to_user":
            result = await cloud.sockets.send_to_user(command["user"], command["message"])
        else:
            result = {
                "online": await cloud.sockets.is_online(command["user"]),
                "users": await cloud.sockets.online_users(),
            }
        socket.send({"result": result})
"""

BROADCAST = """
from laf_py import cloud

async def main(ctx):
    return {"delivered": await cloud.sockets.broadcast(ctx.body["message"])}
"""

WHOAMI = """
from laf_py import cloud

def main(ctx):
    return cloud.sockets.node_id
"""


# -- processes ----------------------------------------------------------------------------------


def children(pid: int) -> set[int]:
    """Live (not zombie) child processes of ``pid``, from /proc."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, parent = stat.rsplit(")", 1)[1].split()[:2]
        if int(parent) == pid and state != "Z":
            found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def log_of(server: CliServer) -> str:
    return server.log


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m laf_py serve ...`` with no ``LAF_*`` setting inherited, to completion."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LAF_")}
    return subprocess.run(
        [sys.executable, "-m", "laf_py", "serve", "--port", "0", *args],
        capture_output=True,
        text=True,
        env={**clean, **(env or {})},
        timeout=30,
    )


@pytest.fixture
def start_workers(cli_server, redis_url: str, cluster: str) -> Iterator[Callable[..., CliServer]]:
    """``start_workers(folder, database_url)``: ``serve --workers 2`` on one port.

    Afterwards the parent gets SIGTERM, and any worker still running gets SIGKILL.
    """
    started: list[CliServer] = []

    def start(folder: Path, database_url: str, *extra: str) -> CliServer:
        server: CliServer = cli_server(
            "--functions",
            str(folder),
            "--workers",
            "2",
            "--redis-url",
            redis_url,
            "--cluster",
            cluster,
            "--heartbeat",
            "0.3",
            "--shutdown-grace",
            "2",
            "--database-url",
            database_url,
            *extra,
            env={"LAF_SECRET": SECRET, "LAF_ADMIN_TOKEN": ADMIN_TOKEN},
        )
        started.append(server)
        return server

    yield start
    for server in started:
        workers = children(server.process.pid)
        if server.process.poll() is None:
            server.process.send_signal(signal.SIGTERM)
            try:
                server.process.wait(10)
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait()
        for pid in workers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def folder(functions_dir: Path) -> Path:
    write_function(functions_dir, "__websocket__", WEBSOCKET)
    write_function(functions_dir, "broadcast", BROADCAST)
    write_function(functions_dir, "whoami", WHOAMI)
    return functions_dir


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'db' / 'laf.db'}"


@pytest.fixture
def workers(start_workers, folder: Path, sqlite_url: str) -> CliServer:
    """The test functions on ``--workers 2``, with a SQLite file both workers share."""
    return start_workers(folder, sqlite_url)


# -- clients ------------------------------------------------------------------------------------


async def frames_until(ws: Any, last: Any, timeout: float = 5.0) -> list[Any]:
    """Every frame received before ``last`` (which must arrive)."""
    frames: list[Any] = []

    async def read() -> list[Any]:
        while True:
            value = decoded(await ws.recv())
            if value == last:
                return frames
            frames.append(value)

    return await asyncio.wait_for(read(), timeout)


class Client:
    """A WebSocket client of the test functions; ``id`` is its socket id."""

    def __init__(self, ws: Any, socket_id: str) -> None:
        self.ws = ws
        self.id = socket_id

    @property
    def node(self) -> str:
        return self.id[:NODE_ID]

    async def ask(self, op: str, **command: Any) -> Any:
        """Run a command on this client's worker and return its result."""
        await self.ws.send(json.dumps({"op": op, **command}))
        frame = await frame_matching(self.ws, lambda f: isinstance(f, dict) and "result" in f)
        return frame["result"]


class Clients:
    def __init__(self, server: CliServer, stack: AsyncExitStack) -> None:
        self.server = server
        self.stack = stack
        self.all: list[Client] = []

    async def connect(self, user: str | None = None) -> Client:
        url = self.server.ws_url + (f"?user={user}" if user else "")
        ws = await self.stack.enter_async_context(websockets.connect(url))
        socket_id = await asyncio.wait_for(ws.recv(), 5)
        assert re.fullmatch("[0-9a-f]{24}", socket_id), socket_id
        client = Client(ws, socket_id)
        self.all.append(client)
        return client

    async def on_both_workers(self, user: str | None = None) -> list[Client]:
        """Connect (as ``user``) until both workers hold at least one of these clients."""
        mine: list[Client] = []
        while len({client.node for client in mine}) < 2:
            assert len(mine) < MAX_CLIENTS, f"every connection went to worker {mine[0].node}"
            mine.append(await self.connect(user))
        return mine

    async def broadcast(self, message: Any) -> int:
        """Broadcast over HTTP (a new connection, so either worker may take it)."""
        async with httpx.AsyncClient(timeout=10) as http:
            response = await http.post(f"{self.server.url}/fn/broadcast", json={"message": message})
        assert response.status_code == 200, response.text
        delivered: int = response.json()["delivered"]
        return delivered


@pytest.fixture
async def clients(workers: CliServer) -> AsyncIterator[Clients]:
    async with AsyncExitStack() as stack:
        yield Clients(workers, stack)


def other_node(clients: list[Client], node: str) -> Client:
    return next(client for client in clients if client.node != node)


# -- one port, both workers -----------------------------------------------------------------


async def test_one_port_served_by_both_workers(workers: CliServer, clients: Clients) -> None:
    """The parent prints one "listening on ... with 2 workers"; both workers take clients."""
    listening = [line for line in workers.output if "listening on" in line]
    assert len(listening) == 1
    assert re.search(r"listening on http://127\.0\.0\.1:\d+ with 2 workers", listening[0])
    spread = await clients.on_both_workers()
    assert len({client.node for client in spread}) == 2
    joined = set(re.findall(r"as node ([0-9a-f]{8})", log_of(workers)))
    assert {client.node for client in spread} == joined


async def test_broadcast_reaches_every_client_once(clients: Clients) -> None:
    """A broadcast from HTTP reaches each client on both workers once; the count is the total."""
    await clients.on_both_workers()
    await clients.connect()  # an odd number, whatever the split
    hello = {"text": "hello " + uuid.uuid4().hex}
    assert await clients.broadcast(hello) == len(clients.all)
    marker = {"text": "marker"}
    assert await clients.broadcast(marker) == len(clients.all)
    for client in clients.all:
        assert await frames_until(client.ws, marker) == [hello]


@pytest.mark.parametrize("op", ["publish", "send"])
async def test_publish_to_socket_on_other_worker(clients: Clients, op: str) -> None:
    """publish(ids) and sockets.get(id).send reach a connection held by the other worker."""
    sender, *_ = spread = await clients.on_both_workers()
    target = other_node(spread, sender.node)
    message = {"text": f"{op} {uuid.uuid4().hex}"}
    if op == "publish":
        missing = target.node + "0" * 16  # on that worker, but no such connection
        result = await sender.ask("publish", ids=[target.id, missing], message=message)
    else:
        result = await sender.ask("send", id=target.id, message=message)
    assert result == 1
    assert await frame_matching(target.ws, lambda f: f == message) == message


async def test_send_to_user_on_both_workers(clients: Clients) -> None:
    """send_to_user reaches the user's devices on both workers, counts them, and no one else."""
    devices = await clients.on_both_workers(user="ann")
    others = await clients.on_both_workers()
    for asker in (others[0], other_node(others, others[0].node)):
        message = {"text": f"for ann {uuid.uuid4().hex}"}
        assert await asker.ask("to_user", user="ann", message=message) == len(devices)
        marker = {"text": f"marker {uuid.uuid4().hex}"}
        assert await clients.broadcast(marker) == len(clients.all)
        for device in devices:
            assert await frames_until(device.ws, marker) == [message]
        for other in others:
            assert await frames_until(other.ws, marker) == []


async def test_presence_agrees_from_either_worker(clients: Clients) -> None:
    """is_online and online_users give the same answer on both workers, on and off."""
    dora = await clients.connect(user="dora")
    askers = await clients.on_both_workers()

    async def everywhere(online: bool) -> bool:
        for asker in askers:
            answer = await asker.ask("presence", user="dora")
            if answer["online"] is not online or ("dora" in answer["users"]) is not online:
                return False
        return True

    await wait_until(lambda: everywhere(True))
    await dora.ws.close()
    await wait_until(lambda: everywhere(False))


# -- the repository's examples, unchanged -------------------------------------------------------

GREETING = "Connection established, your userID is: "


def is_greeting(frame: Any) -> bool:
    return isinstance(frame, str) and frame.startswith(GREETING)


def of_type(kind: str) -> Callable[[Any], bool]:
    return lambda frame: isinstance(frame, dict) and frame.get("type") == kind


class Examples:
    """The examples on ``--workers 2``: clients, and where each worker's users are."""

    def __init__(self, server: CliServer, stack: AsyncExitStack) -> None:
        self.server = server
        self.stack = stack

    def fn(self, name: str) -> str:
        return f"{self.server.url}/fn/{name}"

    async def request(self, method: str, name: str, **kwargs: Any) -> httpx.Response:
        """One request on a new connection, so either worker may take it."""
        async with httpx.AsyncClient(timeout=10) as http:
            return await http.request(method, self.fn(name), **kwargs)

    async def login(self, user: str) -> str:
        response = await self.request("POST", "login", json={"user": user})
        assert response.status_code == 200, response.text
        token: str = response.json()["token"]
        return token

    async def connect(self, token: str | None = None) -> tuple[Any, str]:
        """A client and the userID of its greeting."""
        url = self.server.ws_url + (f"?token={token}" if token else "")
        ws = await self.stack.enter_async_context(websockets.connect(url))
        greeting = await frame_matching(ws, is_greeting)
        return ws, greeting[len(GREETING) :]

    async def users_by_worker(self) -> list[list[str]]:
        """The wsMap users of each worker, from admin/stats (which answers per process)."""
        seen: dict[str, list[str]] = {}
        for _ in range(MAX_CLIENTS):
            response = await self.request(
                "GET", "admin/stats", headers={"x-admin-token": ADMIN_TOKEN}
            )
            assert response.status_code == 200, response.text
            stats = response.json()
            seen[stats["started_at"]] = stats["users"]
            if len(seen) == 2:
                return list(seen.values())
        raise AssertionError("admin/stats was always answered by the same worker")

    async def on_both_workers(self, token: str | None = None) -> list[tuple[Any, str]]:
        """Connect until both workers hold one of these clients (checked with admin/stats)."""
        mine: list[tuple[Any, str]] = []
        while len(mine) < MAX_CLIENTS:
            mine.append(await self.connect(token))
            if len(mine) < 2:
                continue
            users = {user for _, user in mine}
            if all(users & set(held) for held in await self.users_by_worker()):
                return mine
        raise AssertionError("every connection went to the same worker")


@pytest.fixture
async def examples(start_workers, database_url: str) -> AsyncIterator[Examples]:
    server = start_workers(EXAMPLES, database_url)
    async with AsyncExitStack() as stack:
        yield Examples(server, stack)


async def test_example_chat_on_two_workers(examples: Examples) -> None:
    """chat/send over HTTP and a chat frame over WebSocket reach clients on both workers."""
    spread = await examples.on_both_workers()
    response = await examples.request("POST", "chat/send", json={"text": "hi all"})
    assert response.status_code == 200
    assert response.json() == {"delivered": len(spread)}
    expected = {"type": "chat", "from": "http", "text": "hi all"}
    for ws, _ in spread:
        assert await frame_matching(ws, of_type("chat")) == expected

    (sender, sender_id), *others = spread
    await sender.send(json.dumps({"type": "chat", "text": "from ws"}))
    assert await frame_matching(sender, of_type("ack")) == {"type": "ack", "delivered": len(others)}
    relayed = {"type": "chat", "from": sender_id, "text": "from ws"}
    for ws, _ in others:
        assert await frame_matching(ws, of_type("chat")) == relayed


async def test_example_login_and_notify_on_two_workers(examples: Examples) -> None:
    """alice on both workers: bob's notify reaches every device; /fn/online lists her."""
    alice = await examples.login("alice")
    devices = await examples.on_both_workers(alice)
    assert {user for _, user in devices} == {"alice"}
    bob = await examples.login("bob")
    response = await examples.request(
        "POST",
        "notify",
        json={"user": "alice", "message": "lunch?"},
        headers={"Authorization": f"Bearer {bob}"},
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"delivered": len(devices), "online": True}
    expected = {"type": "notification", "from": "bob", "message": "lunch?"}
    for ws, _ in devices:
        assert await frame_matching(ws, of_type("notification")) == expected
    for _ in range(4):  # new connections: both workers answer
        response = await examples.request("GET", "online")
        assert response.json() == {"users": ["alice"]}


async def test_example_less_hello_on_two_workers(examples: Examples) -> None:
    """POST /fn/hello, on whichever worker, reaches the client through cloud.kv and Redis."""
    ws, _ = await examples.connect()
    for _ in range(4):  # new connections: both workers answer
        response = await examples.request("POST", "hello")
        assert response.status_code == 204, response.text
        assert await frame_matching(ws, lambda f: f == "Hello from POST /hello")


# -- stopping, dying, refusing ------------------------------------------------------------------


async def test_sigterm_stops_every_worker(workers: CliServer, clients: Clients) -> None:
    """SIGTERM to the parent: clients on both workers get 1001, every worker ends, exit 0."""
    spread = await clients.on_both_workers()
    pids = children(workers.process.pid)
    assert len(pids) == 2
    workers.process.send_signal(signal.SIGTERM)
    for client in spread:
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(client.ws.recv(), 10)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1001
    assert await asyncio.to_thread(workers.process.wait, 10) == 0
    assert not [pid for pid in pids if alive(pid)]
    await wait_until(lambda: "laf-py stopped (all workers)" in log_of(workers))
    assert "Traceback" not in log_of(workers)


async def test_killed_worker_is_restarted(workers: CliServer) -> None:
    """A worker killed with SIGKILL is replaced; the port keeps serving, the new one too."""
    first = set(re.findall(r"as node ([0-9a-f]{8})", log_of(workers)))
    assert len(first) == 2
    pids = children(workers.process.pid)
    victim = min(pids)
    os.kill(victim, signal.SIGKILL)
    await wait_until(lambda: "starting a new one" in log_of(workers))
    await wait_until(lambda: len(children(workers.process.pid) - {victim}) == 2)

    async def whoami() -> str:
        async with httpx.AsyncClient(timeout=10) as http:
            response = await http.get(f"{workers.url}/fn/whoami")
        assert response.status_code == 200
        return response.text

    for _ in range(6):  # new connections: whichever worker takes them answers
        await whoami()

    async def new_worker_answers() -> bool:
        return await whoami() not in first

    await wait_until(new_worker_answers)
    assert workers.process.poll() is None


@pytest.mark.parametrize(
    ("args", "env"),
    [
        pytest.param(["--workers", "2"], {}, id="flag"),
        pytest.param([], {"LAF_WORKERS": "2"}, id="env"),
    ],
)
def test_workers_without_redis_refused(functions_dir: Path, args: list[str], env: dict) -> None:
    """More than one worker without Redis: exit 2, one line naming --redis-url."""
    done = run_cli("--functions", str(functions_dir), *args, env=env)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("laf-py: error: ")
    assert "--redis-url" in lines[0]
    assert "LAF_REDIS_URL" in lines[0]


@pytest.mark.parametrize("value", ["0", "abc", "-1"])
def test_bad_worker_count_refused(functions_dir: Path, value: str) -> None:
    """LAF_WORKERS that is not a count of processes: exit 2, one line naming LAF_WORKERS."""
    env = {"LAF_WORKERS": value, "LAF_REDIS_URL": REDIS_URL}
    done = run_cli("--functions", str(functions_dir), env=env)
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("laf-py: error: LAF_WORKERS=")
    assert "Traceback" not in done.stderr
