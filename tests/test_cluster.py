"""Scale-out: two or three real ``laf-py serve`` nodes on their own ports, joined through the
machine's Redis.

Every test gets a cluster name of its own (Redis is shared with other test runs) and removes
that cluster's keys at the end. Nodes share a secret, so a token from one is valid on another,
and a database (a SQLite file, or PostgreSQL where the test reads one node's writes on another).

Clients wait for a ``pong`` after connecting: message events run only once the connection
event is over, so the socket is then findable on its node. Presence events run one at a time
per node, so a test proves that an event did *not* happen by bringing a fresh "marker" user
online on every node and waiting for those events: anything queued before them has run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
import websockets
from websockets.exceptions import ConnectionClosed

from .conftest import EXAMPLES, frame_matching, start_cli, wait_until, write_function

SECRET = "cluster-tests-" + "k" * 40
HEARTBEAT = 1.0  # for tests that do not wait for a node to be declared dead
FAST_HEARTBEAT = 0.5  # for tests that do: a node is dead after 3 silent beats
GREETING = "Connection established, your userID is: "
ONLINE = "Presence:online"
OFFLINE = "Presence:offline"

# On connect: ?user=<id> binds the socket, then the socket id is sent. "ping" -> "pong".
WEBSOCKET = """
from laf_py import cloud

async def main(ctx):
    socket = ctx.socket
    if ctx.method == "WebSocket:connection":
        if ctx.query.get("user"):
            cloud.sockets.bind_user(socket, ctx.query["user"])
        socket.send(socket.id)
    elif ctx.method == "WebSocket:message" and ctx.params["data"] == "ping":
        socket.send("pong")
"""

HTTP_FUNCTIONS = {
    "publish": """
        from laf_py import cloud

        async def main(ctx):
            ids = ctx.body["ids"]
            return {"delivered": await cloud.sockets.publish(ctx.body["message"], ids)}
    """,
    "broadcast": """
        from laf_py import cloud

        async def main(ctx):
            exclude = ctx.body.get("exclude", [])
            return {"delivered": await cloud.sockets.broadcast(ctx.body["message"], exclude)}
    """,
    "to_user": """
        from laf_py import cloud

        async def main(ctx):
            user, message = ctx.body["user"], ctx.body["message"]
            return {"delivered": await cloud.sockets.send_to_user(user, message)}
    """,
    "by_id": """
        from laf_py import cloud

        async def main(ctx):
            socket = cloud.sockets.get(ctx.body["id"])
            if socket is None:
                return {"found": False}
            if ctx.body.get("close"):
                socket.close(ctx.body["close"], ctx.body.get("reason", ""))
                return {"found": True}
            return {
                "found": True,
                "here": socket.id in cloud.sockets,
                "delivered": await socket.send(ctx.body["message"]),
            }
    """,
    "who": """
        from laf_py import cloud

        async def main(ctx):
            user = ctx.query.get("user")
            return {
                "online": bool(user) and await cloud.sockets.is_online(user),
                "users": await cloud.sockets.online_users(),
                "here": [socket.id for socket in cloud.sockets],
            }
    """,
    "kv": """
        from laf_py import cloud

        async def main(ctx):
            if ctx.method == "POST":
                await cloud.kv.set(ctx.body["key"], ctx.body["value"])
                return {"ok": True}
            if "prefix" in ctx.query:
                keys = await cloud.kv.keys(ctx.query["prefix"])
                return {"items": {key: await cloud.kv.get(key) for key in keys}}
            return {"value": await cloud.kv.get(ctx.query["key"])}
    """,
}

# Each event is one kv key (no read-modify-write races between nodes); the value is the node.
PRESENCE = """
import uuid

from laf_py import cloud

async def main(ctx):
    key = f"presence/{ctx.params['user_id']}/{ctx.method}/{uuid.uuid4().hex}"
    await cloud.kv.set(key, cloud.sockets.node_id)
"""


# -- nodes -------------------------------------------------------------------------------------


class Node:
    """One ``laf-py serve`` process; a thread keeps reading its log so it never blocks."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: list[str] = []
        self.url = ""
        self.node_id = ""
        self._done = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    @property
    def ws_url(self) -> str:
        return self.url.replace("http", "ws", 1) + "/__websocket__"

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            if match := re.search(r"as node ([0-9a-f]+)", line):
                self.node_id = match.group(1)
            if match := re.search(r"listening on (http://\S+)", line):
                self.url = match.group(1)
                self._done.set()
        self._done.set()  # the process exited

    def wait_ready(self, timeout: float = 20) -> None:
        self._done.wait(timeout)
        if not self.url or not self.node_id:
            raise AssertionError(f"node did not start or join a cluster:\n{self.log}")

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGCONT)  # in case a test paused it
                self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


StartNodes = Callable[..., Awaitable[list[Node]]]


@pytest.fixture
def folder(functions_dir: Path) -> Path:
    write_function(functions_dir, "__websocket__", WEBSOCKET)
    for name, source in HTTP_FUNCTIONS.items():
        write_function(functions_dir, name, source)
    return functions_dir


@pytest.fixture
async def start_nodes(redis_url: str, cluster: str, tmp_path: Path) -> AsyncIterator[StartNodes]:
    """``await start_nodes(count, functions, database_url=..., heartbeat=...)``: nodes of one
    cluster, started together; every one is stopped at the end."""
    started: list[Node] = []

    async def start(
        count: int,
        functions: Path,
        *,
        database_url: str | None = None,
        heartbeat: float = HEARTBEAT,
    ) -> list[Node]:
        database_url = database_url or f"sqlite+aiosqlite:///{tmp_path / 'shared' / 'laf.db'}"
        args = [
            *("serve", "--port", "0", "--functions", str(functions)),
            *("--redis-url", redis_url, "--cluster", cluster, "--heartbeat", str(heartbeat)),
            *("--database-url", database_url, "--shutdown-grace", "2", "--reload", "false"),
        ]
        nodes = [Node(start_cli(*args, env={"LAF_SECRET": SECRET})) for _ in range(count)]
        started.extend(nodes)
        await asyncio.gather(*(asyncio.to_thread(node.wait_ready) for node in nodes))
        assert len({node.node_id for node in nodes}) == count
        return nodes

    yield start
    await asyncio.gather(*(asyncio.to_thread(node.stop) for node in started))


# -- clients -----------------------------------------------------------------------------------


async def recv(ws: Any, timeout: float = 5.0) -> Any:
    return await asyncio.wait_for(ws.recv(), timeout)


class Client:
    def __init__(self, ws: Any, socket_id: str, node: Node) -> None:
        self.ws = ws
        self.id = socket_id
        self.node = node

    async def next(self) -> Any:
        return await recv(self.ws)


class Clients:
    """Opens WebSocket clients and closes whatever is left at the end."""

    def __init__(self, stack: AsyncExitStack) -> None:
        self.stack = stack

    async def connect(self, node: Node, user: str | None = None) -> Client:
        """A client of ``node`` (bound to ``user``), once its socket is findable there."""
        url = node.ws_url + (f"?user={user}" if user else "")
        ws = await self.stack.enter_async_context(websockets.connect(url))
        socket_id = await recv(ws)
        assert isinstance(socket_id, str) and socket_id.startswith(node.node_id), socket_id
        await ws.send("ping")
        assert await recv(ws) == "pong"
        return Client(ws, socket_id, node)


@pytest.fixture
async def clients(start_nodes: StartNodes) -> AsyncIterator[Clients]:
    async with AsyncExitStack() as stack:
        yield Clients(stack)


async def call(
    http: httpx.AsyncClient, node: Node, name: str, body: Any = None, **query: str
) -> Any:
    """GET (with ``query``) or POST (with JSON ``body``) ``/fn/<name>`` on ``node``: the JSON."""
    url = f"{node.url}/fn/{name}"
    if body is None:
        response = await http.get(url, params=query)
    else:
        response = await http.post(url, json=body)
    assert response.status_code == 200, response.text
    return response.json()


async def poll(condition: Callable[[], Awaitable[Any]], timeout: float = 10.0) -> Any:
    return await wait_until(condition, timeout=timeout, interval=0.05)


async def is_online(http: httpx.AsyncClient, node: Node, user: str) -> bool:
    return bool((await call(http, node, "who", user=user))["online"])


async def online_users(http: httpx.AsyncClient, node: Node) -> list[str]:
    return list((await call(http, node, "who"))["users"])


async def gone_from(http: httpx.AsyncClient, node: Node, client: Client) -> None:
    """Wait until ``node`` has forgotten the client's socket (its close is being handled)."""
    await client.ws.close()

    async def forgotten() -> bool:
        return client.id not in (await call(http, node, "who"))["here"]

    await poll(forgotten)


# -- presence events, recorded in the shared kv --------------------------------------------------


async def events(http: httpx.AsyncClient, node: Node, user: str, method: str) -> list[str]:
    """The nodes on which ``__presence__`` ran ``method`` for ``user``, one entry per run."""
    items = (await call(http, node, "kv", prefix=f"presence/{user}/{method}/"))["items"]
    return list(items.values())


async def fence_presence(
    http: httpx.AsyncClient, clients: Clients, nodes: list[Node], tag: str
) -> None:
    """Bring a marker user online on each node and wait for those events: every presence
    event queued on those nodes before has run."""
    for index, node in enumerate(nodes):
        marker = f"marker-{tag}-{index}"
        await clients.connect(node, marker)

        async def recorded(node: Node = node, marker: str = marker) -> bool:
            return bool(await events(http, node, marker, ONLINE))

        await poll(recorded)


pg_only = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


# -- delivery ----------------------------------------------------------------------------------


async def test_send_to_user_reaches_devices_on_both_nodes(
    start_nodes: StartNodes, folder: Path, clients: Clients, http: httpx.AsyncClient
) -> None:
    """send_to_user from either node reaches the user's devices on both: count 2."""
    a, b = await start_nodes(2, folder)
    on_a = await clients.connect(a, "alice")
    on_b = await clients.connect(b, "alice")
    for sender in (a, b):
        message = f"hello from {sender.node_id}"
        body = {"user": "alice", "message": message}
        assert await call(http, sender, "to_user", body) == {"delivered": 2}
        assert await on_a.next() == message
        assert await on_b.next() == message


async def test_publish_to_socket_on_another_node(
    start_nodes: StartNodes, folder: Path, clients: Clients, http: httpx.AsyncClient
) -> None:
    """publish to a connection id that lives on another node: count 1, frame received."""
    a, b = await start_nodes(2, folder)
    remote = await clients.connect(b)
    body = {"message": {"to": "remote"}, "ids": [remote.id]}
    assert await call(http, a, "publish", body) == {"delivered": 1}
    assert json.loads(await remote.next()) == {"to": "remote"}


async def test_remote_socket_from_get_sends_through_redis(
    start_nodes: StartNodes, folder: Path, clients: Clients, http: httpx.AsyncClient
) -> None:
    """cloud.sockets.get(id of another node's socket).send(...) from an HTTP function."""
    a, b = await start_nodes(2, folder)
    remote = await clients.connect(b)
    body = {"id": remote.id, "message": "via get"}
    assert await call(http, a, "by_id", body) == {"found": True, "here": False, "delivered": 1}
    assert await remote.next() == "via get"


async def test_remote_socket_close_closes_the_client(
    start_nodes: StartNodes, folder: Path, clients: Clients, http: httpx.AsyncClient
) -> None:
    """cloud.sockets.get(remote id).close(code, reason) closes that connection on its node."""
    a, b = await start_nodes(2, folder)
    remote = await clients.connect(b)
    body = {"id": remote.id, "close": 4001, "reason": "bye"}
    assert await call(http, a, "by_id", body) == {"found": True}
    with pytest.raises(ConnectionClosed):
        await remote.next()
    assert (remote.ws.close_code, remote.ws.close_reason) == (4001, "bye")


async def test_publish_to_unknown_remote_id_reaches_nobody(
    start_nodes: StartNodes, folder: Path, clients: Clients, http: httpx.AsyncClient
) -> None:
    """An id of no node, or an unknown id on a live node: count 0, nothing received."""
    a, b = await start_nodes(2, folder)
    client = await clients.connect(b)
    ghost_node = next(n for n in ("ffffffff", "eeeeeeee") if n not in (a.node_id, b.node_id))
    for unknown in (ghost_node + "0" * 16, b.node_id + "0" * 16):
        body = {"message": "lost", "ids": [unknown]}
        assert await call(http, a, "publish", body) == {"delivered": 0}
    assert await call(http, a, "publish", {"message": "fence", "ids": [client.id]}) == {
        "delivered": 1
    }
    assert await client.next() == "fence"


async def three_nodes_four_clients(
    start_nodes: StartNodes, folder: Path, clients: Clients
) -> tuple[list[Node], list[Client]]:
    a, b, c = await start_nodes(3, folder)
    connected = [
        await clients.connect(a),
        await clients.connect(b),
        await clients.connect(b),
        await clients.connect(c),
    ]
    return [a, b, c], connected


async def test_broadcast_reaches_every_socket_of_three_nodes_once(
    start_nodes: StartNodes, folder: Path, clients: Clients, http: httpx.AsyncClient
) -> None:
    """broadcast counts every socket of the cluster; each receives it exactly once."""
    (_, b, c), everyone = await three_nodes_four_clients(start_nodes, folder, clients)
    assert await call(http, b, "broadcast", {"message": "to all"}) == {"delivered": 4}
    # The next broadcast is a fence: a duplicate of the first would arrive before it.
    assert await call(http, c, "broadcast", {"message": "fence"}) == {"delivered": 4}
    for client in everyone:
        assert [await client.next(), await client.next()] == ["to all", "fence"]


async def test_broadcast_exclude_applies_on_every_node(
    start_nodes: StartNodes, folder: Path, clients: Clients, http: httpx.AsyncClient
) -> None:
    """Sockets excluded by id are skipped on whichever node holds them."""
    (a, _, _), (on_a, on_b, skipped_b, skipped_c) = await three_nodes_four_clients(
        start_nodes, folder, clients
    )
    body = {"message": "secret", "exclude": [skipped_b.id, skipped_c.id]}
    assert await call(http, a, "broadcast", body) == {"delivered": 2}
    assert await call(http, a, "broadcast", {"message": "fence"}) == {"delivered": 4}
    for client in (on_a, on_b):
        assert [await client.next(), await client.next()] == ["secret", "fence"]
    for client in (skipped_b, skipped_c):
        assert await client.next() == "fence"


# -- presence ----------------------------------------------------------------------------------


async def test_presence_answered_by_a_node_holding_none_of_the_users_sockets(
    start_nodes: StartNodes, folder: Path, clients: Clients, http: httpx.AsyncClient
) -> None:
    """is_online/online_users on node A see a user connected only to node B, and its leaving."""
    a, b = await start_nodes(2, folder)
    client = await clients.connect(b, "alice")

    async def seen_online() -> bool:
        who = await call(http, a, "who", user="alice")
        return bool(who["online"]) and "alice" in who["users"]

    await poll(seen_online)
    await client.ws.close()

    async def seen_offline() -> bool:
        who = await call(http, a, "who", user="alice")
        return not who["online"] and "alice" not in who["users"]

    await poll(seen_offline)


async def redis_knows(redis_url: str, cluster: str, user: str, nodes: list[Node]) -> bool:
    """Whether every one of ``nodes`` has told Redis that it holds ``user``."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        holders = {n.decode() for n in await client.smembers(f"{cluster}:unodes:{user}")}
    finally:
        await client.aclose()
    return holders == {node.node_id for node in nodes}


async def test_user_on_two_nodes_goes_offline_only_after_both_close(
    start_nodes: StartNodes,
    folder: Path,
    clients: Clients,
    http: httpx.AsyncClient,
    redis_url: str,
    cluster: str,
) -> None:
    """Closing the user's socket on one node keeps them online; closing the other does not."""
    a, b = await start_nodes(2, folder)
    on_a = await clients.connect(a, "alice")
    on_b = await clients.connect(b, "alice")
    await poll(lambda: redis_knows(redis_url, cluster, "alice", [a, b]))

    await gone_from(http, a, on_a)
    # A's presence work runs in order: once a later user is online, alice's leave has run.
    await clients.connect(a, "marker")
    await poll(lambda: is_online(http, b, "marker"))
    for node in (a, b):
        assert await is_online(http, node, "alice")
        assert "alice" in await online_users(http, node)

    await on_b.ws.close()

    async def offline_everywhere() -> bool:
        for node in (a, b):
            if await is_online(http, node, "alice") or "alice" in await online_users(http, node):
                return False
        return True

    await poll(offline_everywhere)


@pg_only
async def test_presence_events_fire_once_for_the_whole_cluster(
    start_nodes: StartNodes,
    folder: Path,
    clients: Clients,
    http: httpx.AsyncClient,
    database_url: str,
) -> None:
    """A user on two nodes: __presence__ hears one online and one offline event in all."""
    write_function(folder, "__presence__", PRESENCE)
    a, b = await start_nodes(2, folder, database_url=database_url)
    on_a = await clients.connect(a, "alice")
    on_b = await clients.connect(b, "alice")
    # A node tells Redis about a user just after accepting the socket; wait until both have,
    # or leaving on A could race B's arrival (events on two nodes are not ordered).
    await fence_presence(http, clients, [a, b], "joined")
    await gone_from(http, a, on_a)
    await gone_from(http, b, on_b)
    await poll(lambda: events(http, a, "alice", OFFLINE))

    await fence_presence(http, clients, [a, b], "end")
    assert len(await events(http, a, "alice", ONLINE)) == 1
    assert len(await events(http, a, "alice", OFFLINE)) == 1


# -- a node dies -------------------------------------------------------------------------------


@pg_only
async def test_killed_node_users_go_offline_on_survivors(
    start_nodes: StartNodes,
    folder: Path,
    clients: Clients,
    http: httpx.AsyncClient,
    database_url: str,
) -> None:
    """SIGKILL a node: its users go offline within 3 heartbeats (+ margin), one __presence__
    offline event fires on a survivor; a user also connected to a survivor stays online."""
    write_function(folder, "__presence__", PRESENCE)
    a, b, c = await start_nodes(3, folder, database_url=database_url, heartbeat=FAST_HEARTBEAT)
    await clients.connect(c, "carol")
    await clients.connect(c, "dave")
    await clients.connect(b, "dave")
    await poll(lambda: events(http, a, "carol", ONLINE))

    killed_at = time.monotonic()
    c.process.kill()
    limit = 4 * FAST_HEARTBEAT + 1.0  # dead after 3 silent beats, reaped at the next beat

    async def carol_offline() -> bool:
        for node in (a, b):
            if await is_online(http, node, "carol") or "carol" in await online_users(http, node):
                return False
        return True

    await poll(carol_offline, timeout=limit)
    reported = await poll(
        lambda: events(http, a, "carol", OFFLINE),
        timeout=max(0.1, killed_at + limit + 1.0 - time.monotonic()),
    )
    assert reported[0] in (a.node_id, b.node_id)

    assert await is_online(http, a, "dave")
    assert "dave" in await online_users(http, a)
    await fence_presence(http, clients, [a, b], "end")
    assert len(await events(http, a, "carol", OFFLINE)) == 1
    assert await events(http, a, "dave", OFFLINE) == []


async def test_survivors_keep_delivering_after_a_node_is_killed(
    start_nodes: StartNodes, folder: Path, clients: Clients, http: httpx.AsyncClient
) -> None:
    """After SIGKILL of one node, the other two still broadcast and publish to each other."""
    a, b, c = await start_nodes(3, folder, heartbeat=FAST_HEARTBEAT)
    on_a = await clients.connect(a, "amy")
    on_b = await clients.connect(b, "ben")
    on_c = await clients.connect(c)
    c.process.kill()
    await asyncio.to_thread(c.process.wait, 10)

    assert await call(http, a, "broadcast", {"message": "still here"}) == {"delivered": 2}
    assert await on_a.next() == "still here"
    assert await on_b.next() == "still here"
    assert await call(http, b, "publish", {"message": "b to a", "ids": [on_a.id]}) == {
        "delivered": 1
    }
    assert await on_a.next() == "b to a"
    assert await call(http, a, "to_user", {"user": "ben", "message": "a to ben"}) == {
        "delivered": 1
    }
    assert await on_b.next() == "a to ben"
    assert await call(http, a, "publish", {"message": "x", "ids": [on_c.id]}) == {"delivered": 0}


@pg_only
async def test_paused_node_claims_its_users_again_when_it_resumes(
    start_nodes: StartNodes,
    folder: Path,
    clients: Clients,
    http: httpx.AsyncClient,
    database_url: str,
) -> None:
    """A node silent for 3 beats (SIGSTOP) is reaped; when it resumes, its still-connected
    users are online again for the whole cluster."""
    write_function(folder, "__presence__", PRESENCE)
    a, b = await start_nodes(2, folder, database_url=database_url, heartbeat=FAST_HEARTBEAT)
    erin = await clients.connect(b, "erin")
    await poll(lambda: is_online(http, a, "erin"))

    b.process.send_signal(signal.SIGSTOP)
    await poll(lambda: events(http, a, "erin", OFFLINE), timeout=4 * FAST_HEARTBEAT + 2.0)
    b.process.send_signal(signal.SIGCONT)

    # erin's connection to b never dropped: b serves it, and it is reachable from a ...
    await erin.ws.send("ping")
    assert await erin.next() == "pong"
    assert await call(http, a, "to_user", {"user": "erin", "message": "hi"}) == {"delivered": 1}
    assert await erin.next() == "hi"
    # ... so the cluster must count erin as online again within a few beats.
    await poll(lambda: is_online(http, a, "erin"), timeout=4 * FAST_HEARTBEAT + 2.0)
    assert "erin" in await online_users(http, a)


# -- storage -----------------------------------------------------------------------------------


async def test_kv_written_on_one_node_is_read_on_another(
    start_nodes: StartNodes, folder: Path, http: httpx.AsyncClient, database_url: str
) -> None:
    """Nodes pointed at one database share cloud.kv."""
    a, b = await start_nodes(2, folder, database_url=database_url)
    value = {"written_by": a.node_id, "n": [1, 2, 3]}
    assert await call(http, a, "kv", {"key": "shared/key", "value": value}) == {"ok": True}
    assert await call(http, b, "kv", key="shared/key") == {"value": value}


# -- the repository's examples, unchanged, on two nodes --------------------------------------------


def of_type(kind: str) -> Callable[[Any], bool]:
    return lambda frame: isinstance(frame, dict) and frame.get("type") == kind


async def connect_example(
    clients: Clients, node: Node, token: str | None = None
) -> tuple[Any, str]:
    """A client of the example __websocket__ once the node handles its messages, and its
    userID."""
    url = node.ws_url + (f"?token={token}" if token else "")
    ws = await clients.stack.enter_async_context(websockets.connect(url))
    greeting = await frame_matching(ws, lambda f: isinstance(f, str) and f.startswith(GREETING))
    await ws.send("ready?")
    await frame_matching(ws, lambda frame: frame == {"echo": "ready?"})
    return ws, greeting.removeprefix(GREETING)


async def test_examples_notify_reaches_devices_on_both_nodes(
    start_nodes: StartNodes, clients: Clients, http: httpx.AsyncClient
) -> None:
    """Log in on A, connect alice on A and B, POST /fn/notify on B: delivered 2, online."""
    a, b = await start_nodes(2, EXAMPLES)
    response = await http.post(f"{a.url}/fn/login", json={"user": "alice"})
    assert response.status_code == 200, response.text
    token = response.json()["token"]
    devices = [await connect_example(clients, node, token) for node in (a, b)]
    assert [user for _, user in devices] == ["alice", "alice"]

    response = await http.post(
        f"{b.url}/fn/notify",
        json={"user": "alice", "message": "lunch?"},
        headers={"authorization": f"Bearer {token}"},
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"delivered": 2, "online": True}
    expected = {"type": "notification", "from": "alice", "message": "lunch?"}
    for ws, _ in devices:
        assert await frame_matching(ws, of_type("notification")) == expected


async def test_examples_chat_send_reaches_clients_of_both_nodes(
    start_nodes: StartNodes, clients: Clients, http: httpx.AsyncClient
) -> None:
    """POST /fn/chat/send on one node reaches the clients of both: delivered 2."""
    a, b = await start_nodes(2, EXAMPLES)
    everyone = [await connect_example(clients, node) for node in (a, b)]
    response = await http.post(f"{a.url}/fn/chat/send", json={"text": "hello all"})
    assert response.status_code == 200, response.text
    assert response.json() == {"delivered": 2}
    for ws, _ in everyone:
        assert json.loads(await recv(ws)) == {"type": "chat", "from": "http", "text": "hello all"}


async def test_examples_chat_between_clients_of_two_nodes(
    start_nodes: StartNodes, clients: Clients
) -> None:
    """A chat message from a client on A reaches the client on B; the sender's ack counts 1."""
    a, b = await start_nodes(2, EXAMPLES)
    sender, sender_id = await connect_example(clients, a)
    receiver, _ = await connect_example(clients, b)
    await sender.send(json.dumps({"type": "chat", "text": "hi B"}))
    assert json.loads(await recv(sender)) == {"type": "ack", "delivered": 1}
    chat = {"type": "chat", "from": sender_id, "text": "hi B"}
    assert json.loads(await recv(receiver)) == chat


# -- what goes through Redis -------------------------------------------------------------------


class ClusterTraffic:
    """Every message published on the cluster's channels, seen by a subscriber of our own."""

    def __init__(self, url: str, cluster: str) -> None:
        self._redis = aioredis.Redis.from_url(url)
        self._pubsub = self._redis.pubsub()
        self._pattern = f"{cluster}:*"

    async def __aenter__(self) -> ClusterTraffic:
        await self._pubsub.psubscribe(self._pattern)
        confirmation = await self._pubsub.get_message(timeout=5)
        assert confirmation is not None and confirmation["type"] == "psubscribe"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._pubsub.aclose()
        await self._redis.aclose()

    async def until(self, marker: bytes, timeout: float = 5.0) -> list[tuple[str, bytes]]:
        """(channel, data) of each message up to and including the first containing marker."""
        seen: list[tuple[str, bytes]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = await self._pubsub.get_message(
                ignore_subscribe_messages=True, timeout=max(0.01, deadline - time.monotonic())
            )
            if message is None:
                continue
            seen.append((message["channel"].decode(), message["data"]))
            if marker in message["data"]:
                return seen
        raise AssertionError(f"no message with {marker!r} within {timeout}s; saw {seen}")


async def test_delivery_to_a_local_socket_does_not_touch_redis(
    start_nodes: StartNodes,
    folder: Path,
    clients: Clients,
    http: httpx.AsyncClient,
    redis_url: str,
    cluster: str,
) -> None:
    """publish and socket.send to a socket of the same node publish nothing on Redis."""
    a, _ = await start_nodes(2, folder)
    local = await clients.connect(a)
    async with ClusterTraffic(redis_url, cluster) as traffic:
        body = {"message": "local-publish-9c1", "ids": [local.id]}
        assert await call(http, a, "publish", body) == {"delivered": 1}
        body = {"id": local.id, "message": "local-send-9c1"}
        assert await call(http, a, "by_id", body) == {"found": True, "here": True, "delivered": 1}
        assert await local.next() == "local-publish-9c1"
        assert await local.next() == "local-send-9c1"
        # A broadcast must go through Redis: its arrival fences everything published before.
        assert await call(http, a, "broadcast", {"message": "fence-9c1"}) == {"delivered": 1}
        seen = await traffic.until(b"fence-9c1")
    assert len(seen) == 1, seen
    assert seen[0][0] == f"{cluster}:all"


async def test_broadcast_is_one_publish(
    start_nodes: StartNodes,
    folder: Path,
    clients: Clients,
    http: httpx.AsyncClient,
    redis_url: str,
    cluster: str,
) -> None:
    """A broadcast to sockets on three nodes is a single message on the cluster channel."""
    (a, _, _), everyone = await three_nodes_four_clients(start_nodes, folder, clients)
    async with ClusterTraffic(redis_url, cluster) as traffic:
        assert await call(http, a, "broadcast", {"message": "once-5e7"}) == {"delivered": 4}
        assert await call(http, a, "broadcast", {"message": "fence-5e7"}) == {"delivered": 4}
        seen = await traffic.until(b"fence-5e7")
    carrying = [channel for channel, data in seen if b"once-5e7" in data]
    assert carrying == [f"{cluster}:all"], seen
    for client in everyone:
        assert [await client.next(), await client.next()] == ["once-5e7", "fence-5e7"]
