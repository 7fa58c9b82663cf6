"""Rooms: ``cloud.sockets.join/leave/send_to_room/room_members``, ``socket.rooms``, and
``send_to_users``; on one server, then across nodes joined through the machine's Redis.

One-server tests use a real in-process server and real clients; the test runs in the server's
process and loop, so it reads ``cloud.sockets`` directly. Cluster details use in-process nodes
(a SocketRegistry and a RedisBus each, as in test_bus.py); the killed node is a real
``laf-py serve`` process (test_cluster.py's nodes). A client that must *not* receive something
is proven so by the next frame it gets: a marker sent afterwards.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
import websockets

from laf_py import cloud
from laf_py.cloud.delivery import LoopBridge
from laf_py.cloud.sockets import SocketRegistry
from laf_py.core.frames import encode_frame

from . import test_cluster
from .conftest import wait_until, write_function
from .test_bus import FakeTransport
from .test_bus import Node as BusNode
from .test_cluster import FAST_HEARTBEAT, Clients, ClusterTraffic, StartNodes, call, poll

pytestmark = pytest.mark.both_servers

# test_cluster.py's fixtures for real nodes, used here too
start_nodes = test_cluster.start_nodes
clients = test_cluster.clients

# On connect: ?user= binds the socket, ?room= joins it (in the connection event), then it is
# sent {"id", "rooms"}. Messages "join:<room>" / "leave:<room>" (by socket, and by id) answer
# {"n", "rooms"}.
WEBSOCKET = """
from laf_py import cloud

async def main(ctx):
    socket = ctx.socket
    if ctx.method == "WebSocket:connection":
        cloud.shared.setdefault("sockets", {})[socket.id] = socket
        if ctx.query.get("user"):
            socket.user_id = ctx.query["user"]
        if ctx.query.get("room"):
            cloud.sockets.join(socket, ctx.query["room"])
        socket.send({"id": socket.id, "rooms": sorted(socket.rooms)})
    elif ctx.method == "WebSocket:message":
        verb, _, room = ctx.params["data"].partition(":")
        if verb == "join":
            n = await cloud.sockets.join(socket, room)
        elif verb == "leave":
            n = await cloud.sockets.leave(socket.id, room)
        else:
            socket.send("pong")
            return
        socket.send({"n": n, "rooms": sorted(socket.rooms)})
"""

FUNCTIONS = {
    "to_room": """
        from laf_py import cloud

        async def main(ctx):
            exclude = list(ctx.body.get("exclude_ids", []))
            exclude += [cloud.sockets.get(i) for i in ctx.body.get("exclude_sockets", [])]
            delivery = cloud.sockets.send_to_room(ctx.body["room"], ctx.body["message"], exclude)
            return {"delivered": await delivery}
        """,
    "members": """
        from laf_py import cloud

        async def main(ctx):
            return {"members": await cloud.sockets.room_members(ctx.query["room"])}
        """,
    "to_users": """
        from laf_py import cloud

        async def main(ctx):
            delivery = cloud.sockets.send_to_users(ctx.body["users"], ctx.body["message"])
            return {"delivered": await delivery}
        """,
    "broadcast": """
        from laf_py import cloud

        async def main(ctx):
            return {"delivered": await cloud.sockets.broadcast(ctx.body["message"])}
        """,
    "join_by_id": """
        from laf_py import cloud

        async def main(ctx):
            verb = cloud.sockets.leave if ctx.body.get("leave") else cloud.sockets.join
            return {"n": await verb(ctx.body["id"], ctx.body["room"])}
        """,
    # A plain def: every call acts when made; .result() where there is something to wait for.
    "sync_rooms": """
        from laf_py import cloud

        def main(ctx):
            socket_id, room = ctx.body["id"], ctx.body["room"]
            joined = cloud.sockets.join(socket_id, room).result(5)
            members = cloud.sockets.room_members(room).result(5)
            rooms = sorted(cloud.sockets.get(socket_id).rooms)
            sent = cloud.sockets.send_to_room(room, "from a thread").result(5)
            to_users = cloud.sockets.send_to_users(["sync-user"], "users from a thread").result(5)
            left = cloud.sockets.leave(socket_id, room).result(5)
            return {
                "joined": joined, "members": members, "rooms": rooms, "sent": sent,
                "to_users": to_users, "left": left,
                "after": cloud.sockets.room_members(room).result(5),
            }
        """,
}


@pytest.fixture
def folder(functions_dir: Path) -> Path:
    write_function(functions_dir, "__websocket__", WEBSOCKET)
    for name, source in FUNCTIONS.items():
        write_function(functions_dir, name, source)
    return functions_dir


async def recv(ws: Any, timeout: float = 5.0) -> Any:
    frame = await asyncio.wait_for(ws.recv(), timeout)
    try:
        return json.loads(frame)
    except ValueError:
        return frame


async def connect(server: Any, **query: str) -> tuple[Any, str]:
    """A client (with ``query``) whose socket is accepted: the client and its socket id."""
    url = server.ws_url + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")
    ws = await websockets.connect(url)
    hello = await recv(ws)
    return ws, hello["id"]


async def post(http: httpx.AsyncClient, server: Any, name: str, **body: Any) -> Any:
    response = await http.post(server.fn_url(name), json=body)
    assert response.status_code == 200, response.text
    return response.json()


async def members(http: httpx.AsyncClient, server: Any, room: str) -> list[str]:
    response = await http.get(server.fn_url("members"), params={"room": room})
    assert response.status_code == 200, response.text
    return list(response.json()["members"])


async def assert_next_is_marker(http: httpx.AsyncClient, server: Any, *sockets: Any) -> None:
    """Broadcast a marker; each client's next frame must be it (nothing came before)."""
    await post(http, server, "broadcast", message="marker")
    for ws in sockets:
        assert await recv(ws) == "marker"


# -- one server ------------------------------------------------------------------------------


async def test_send_to_room_reaches_its_members_only(serve, folder: Path, http: httpx.AsyncClient):
    """Members joined in the connection event and by message get the frame; the count is
    theirs; a socket in another room, or in none, gets nothing; room_members lists them."""
    async with serve(folder) as server:
        a, a_id = await connect(server, room="red")
        b, b_id = await connect(server)
        c, _ = await connect(server, room="blue")
        await b.send("join:red")
        assert await recv(b) == {"n": 1, "rooms": ["red"]}
        assert cloud.sockets.get(a_id).rooms == frozenset({"red"})

        body = {"room": "red", "message": {"text": "hi red"}}
        assert await post(http, server, "to_room", **body) == {"delivered": 2}
        assert await recv(a) == {"text": "hi red"}
        assert await recv(b) == {"text": "hi red"}
        assert sorted([a_id, b_id]) == await members(http, server, "red")
        assert await members(http, server, "green") == []
        assert await post(http, server, "to_room", room="green", message="x") == {"delivered": 0}
        await assert_next_is_marker(http, server, a, b, c)
        for ws in (a, b, c):
            await ws.close()


async def test_send_to_room_excludes_ids_and_sockets(serve, folder: Path, http: httpx.AsyncClient):
    async with serve(folder) as server:
        a, a_id = await connect(server, room="r")
        b, b_id = await connect(server, room="r")
        c, _ = await connect(server, room="r")
        body = {"room": "r", "message": "not a", "exclude_ids": [a_id]}
        assert await post(http, server, "to_room", **body) == {"delivered": 2}
        body = {"room": "r", "message": "not b", "exclude_sockets": [b_id]}
        assert await post(http, server, "to_room", **body) == {"delivered": 2}
        assert [await recv(a)] == ["not b"]
        assert [await recv(b)] == ["not a"]
        assert [await recv(c), await recv(c)] == ["not a", "not b"]
        await assert_next_is_marker(http, server, a, b, c)
        for ws in (a, b, c):
            await ws.close()


async def test_a_closed_socket_leaves_its_rooms(serve, folder: Path, http: httpx.AsyncClient):
    """Once a client has gone, room_members no longer lists it, its Socket (kept in
    cloud.shared) has no rooms, and sends to the room do not count it."""
    async with serve(folder) as server:
        a, a_id = await connect(server, room="r")
        b, b_id = await connect(server, room="r")
        await b.send("join:s")
        assert await recv(b) == {"n": 1, "rooms": ["r", "s"]}
        kept = cloud.shared["sockets"][b_id]
        await b.close()

        async def left() -> bool:
            return await members(http, server, "r") == [a_id]

        await wait_until(left)
        assert kept.rooms == frozenset()
        assert await members(http, server, "s") == []
        assert await post(http, server, "to_room", room="r", message="m") == {"delivered": 1}
        assert await recv(a) == "m"
        # A closed socket cannot join again, by object or by id.
        assert await cloud.sockets.join(kept, "r") == 0
        assert await cloud.sockets.join(b_id, "r") == 0
        assert kept.rooms == frozenset() and await members(http, server, "r") == [a_id]
        await a.close()


async def test_join_and_leave_are_idempotent(serve, folder: Path, http: httpx.AsyncClient):
    async with serve(folder) as server:
        a, a_id = await connect(server)
        for _ in range(2):
            await a.send("join:r")
            assert await recv(a) == {"n": 1, "rooms": ["r"]}
        assert await members(http, server, "r") == [a_id]
        assert await post(http, server, "to_room", room="r", message="once") == {"delivered": 1}
        assert await recv(a) == "once"
        for _ in range(2):
            await a.send("leave:r")
            assert await recv(a) == {"n": 1, "rooms": []}
        await a.send("leave:never-joined")
        assert await recv(a) == {"n": 1, "rooms": []}
        assert await members(http, server, "r") == []
        assert await post(http, server, "to_room", room="r", message="x") == {"delivered": 0}
        await assert_next_is_marker(http, server, a)
        # An id that no open socket has: nothing happens, and it says so.
        body = {"id": "0" * 24, "room": "r"}
        assert await post(http, server, "join_by_id", **body) == {"n": 0}
        await a.close()


async def test_send_to_users_reaches_each_socket_once(serve, folder: Path, http: httpx.AsyncClient):
    """A user listed twice, a user with two sockets, a user with none: every socket of the
    listed users gets the frame exactly once."""
    async with serve(folder) as server:
        a1, _ = await connect(server, user="alice")
        a2, _ = await connect(server, user="alice")
        b, _ = await connect(server, user="bob")
        c, _ = await connect(server, user="carol")
        body = {"users": ["alice", "bob", "alice", "nobody", "bob"], "message": {"n": 1}}
        assert await post(http, server, "to_users", **body) == {"delivered": 3}
        for ws in (a1, a2, b):
            assert await recv(ws) == {"n": 1}
        assert await post(http, server, "to_users", users=[], message="x") == {"delivered": 0}
        await assert_next_is_marker(http, server, a1, a2, b, c)
        for ws in (a1, a2, b, c):
            await ws.close()


async def test_a_plain_def_function_uses_rooms(serve, folder: Path, http: httpx.AsyncClient):
    """From a worker thread: join by id, room_members, socket.rooms, send_to_room,
    send_to_users and leave, each acting when called and giving its result with .result()."""
    async with serve(folder) as server:
        a, a_id = await connect(server, user="sync-user")
        reply = await post(http, server, "sync_rooms", id=a_id, room="t")
        assert reply == {
            "joined": 1,
            "members": [a_id],
            "rooms": ["t"],
            "sent": 1,
            "to_users": 1,
            "left": 1,
            "after": [],
        }
        assert await recv(a) == "from a thread"
        assert await recv(a) == "users from a thread"
        assert cloud.sockets.get(a_id).rooms == frozenset()
        await a.close()


@pytest.fixture
async def registry() -> SocketRegistry:
    return SocketRegistry(LoopBridge(asyncio.get_running_loop()), max_message=100)


@pytest.mark.parametrize(
    ("room", "error"), [("", ValueError), (None, TypeError), (7, TypeError), (b"r", TypeError)]
)
async def test_room_names_are_non_empty_strings(
    registry: SocketRegistry, room: Any, error: type[Exception]
) -> None:
    socket = registry.open(FakeTransport())
    registry.accept(socket)
    with pytest.raises(error, match="room name"):
        registry.join(socket, room)
    with pytest.raises(error, match="room name"):
        registry.leave(socket.id, room)
    with pytest.raises(error, match="room name"):
        registry.send_to_room(room, "x")
    with pytest.raises(error, match="room name"):
        registry.room_members(room)
    assert socket.rooms == frozenset()
    # Any other string is a room: spaces, colons, unicode.
    assert await registry.join(socket, "a room: ünïcode") == 1
    assert await registry.room_members("a room: ünïcode") == [socket.id]


async def test_bad_targets_and_user_lists_are_refused(registry: SocketRegistry) -> None:
    with pytest.raises(TypeError, match="socket id"):
        registry.join(42, "r")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not one string"):
        registry.send_to_users("alice", "x")
    with pytest.raises(TypeError, match="user id"):
        registry.send_to_users(["alice", 1], "x")  # type: ignore[list-item]


async def test_over_limit_message_raises_and_sends_nothing(registry: SocketRegistry) -> None:
    transport = FakeTransport()
    socket = registry.open(transport, "alice")
    registry.accept(socket)
    registry.join(socket, "r")
    big = "x" * 101
    with pytest.raises(ValueError, match="101 bytes is over the 100-byte limit"):
        registry.send_to_room("r", big)
    with pytest.raises(ValueError, match="101 bytes is over the 100-byte limit"):
        registry.send_to_users(["alice"], big)
    assert transport.frames == []
    assert await registry.send_to_room("r", "x" * 100) == 1
    assert await registry.send_to_users(["alice"], "x" * 100) == 1
    assert transport.frames == [encode_frame("x" * 100)] * 2


# -- across nodes, through Redis ---------------------------------------------------------------


@pytest.fixture
async def bus_nodes(redis_url: str, cluster: str) -> AsyncIterator[list[BusNode]]:
    started = [await BusNode(redis_url, cluster).start() for _ in range(2)]
    yield started
    for node in started:
        await node.bus.stop()


async def test_join_a_socket_on_another_node_by_id(bus_nodes: list[BusNode]) -> None:
    """Node A joins node B's socket by id (and by RemoteSocket); send_to_room from either
    node reaches the members on both; room_members is the same on both; leave by id works."""
    a, b = bus_nodes
    here, here_transport = a.connect()
    there, there_transport = b.connect()
    assert await a.sockets.join(here, "r") == 1
    assert await a.sockets.join(there.id, "r") == 1
    assert there.rooms == frozenset({"r"})
    assert await a.sockets.join(a.sockets.get(there.id), "s") == 1  # a RemoteSocket
    assert there.rooms == frozenset({"r", "s"})
    expected = sorted([here.id, there.id])
    assert await a.sockets.room_members("r") == expected
    assert await b.sockets.room_members("r") == expected

    for sender in (a, b):
        assert await sender.sockets.send_to_room("r", {"from": sender.node_id}) == 2
        frame = encode_frame({"from": sender.node_id})
        assert here_transport.frames[-1] == frame and there_transport.frames[-1] == frame
    assert await a.sockets.send_to_room("r", "skip", exclude=[there.id]) == 1
    assert await b.sockets.send_to_room("r", "skip", exclude=[a.sockets.get(there.id)]) == 1
    assert there_transport.frames[-1] != encode_frame("skip")

    assert await a.sockets.leave(there.id, "r") == 1
    assert there.rooms == frozenset({"s"})
    assert await a.sockets.room_members("r") == [here.id]
    assert await a.sockets.send_to_room("r", "only here") == 1
    # An id of B's that is not open: B answers 0.
    assert await a.sockets.join(b.node_id + "0" * 16, "r") == 0


async def test_a_remote_socket_that_closes_leaves_its_rooms_everywhere(
    bus_nodes: list[BusNode],
) -> None:
    a, b = bus_nodes
    there, _ = b.connect()
    assert await a.sockets.join(there.id, "r") == 1
    assert await a.sockets.room_members("r") == [there.id]
    b.disconnect(there)
    assert there.rooms == frozenset()
    await wait_until(lambda: _empty(a.sockets.room_members("r")))
    assert await a.sockets.send_to_room("r", "x") == 0


async def _empty(pending: Any) -> bool:
    return not await pending


async def test_send_to_room_and_send_to_users_are_one_publish_each(
    bus_nodes: list[BusNode], redis_url: str, cluster: str
) -> None:
    """Members on both nodes: one message on the cluster channel, none to a node's own."""
    a, b = bus_nodes
    here, _ = a.connect("alice")
    there, _ = b.connect("bob")
    await a.sockets.join(here, "r")
    await a.sockets.join(there.id, "r")
    async with ClusterTraffic(redis_url, cluster) as traffic:
        # Not awaited here: our watcher counts as a listener that never answers.
        room = a.sockets.send_to_room("r", "room-7a1")
        users = a.sockets.send_to_users(["alice", "bob"], "users-7a1")
        a.sockets.broadcast("fence-7a1")
        seen = await traffic.until(b"fence-7a1")
    assert (await room, await users) == (2, 2)
    for marker in (b"room-7a1", b"users-7a1"):
        assert [c for c, data in seen if marker in data] == [f"{cluster}:all"], seen


async def test_memberships_come_back_after_the_node_was_taken_for_dead(
    redis_url: str, cluster: str
) -> None:
    """Redis lost this node (reaped while paused, or its data gone): at its next beat it
    writes its rooms again, so other nodes see its members."""
    a = await BusNode(redis_url, cluster, heartbeat=0.2).start()
    b = await BusNode(redis_url, cluster).start()
    try:
        socket, _ = a.connect()
        assert await a.sockets.join(socket, "r") == 1
        assert await b.sockets.room_members("r") == [socket.id]
        client = aioredis.Redis.from_url(redis_url)
        await client.zrem(f"{cluster}:nodes", a.node_id)
        await client.delete(f"{cluster}:room:r", f"{cluster}:nrooms:{a.node_id}")
        await client.aclose()
        await wait_until(lambda: b.sockets.room_members("r"))
        assert await b.sockets.room_members("r") == [socket.id]
    finally:
        await a.bus.stop()
        await b.bus.stop()


async def test_a_stopped_node_takes_its_members_out_of_redis(redis_url: str, cluster: str) -> None:
    a = await BusNode(redis_url, cluster).start()
    b = await BusNode(redis_url, cluster).start()
    client = aioredis.Redis.from_url(redis_url)
    try:
        socket, _ = b.connect()
        assert await a.sockets.join(socket.id, "r") == 1
        assert await client.smembers(f"{cluster}:room:r") == {socket.id.encode()}
        await b.bus.stop()
        assert await client.smembers(f"{cluster}:room:r") == set()
        assert not await client.exists(f"{cluster}:nrooms:{b.node_id}")
        assert await a.sockets.room_members("r") == []
    finally:
        await client.aclose()
        await a.bus.stop()


# -- real nodes: a killed node's members are reaped ------------------------------------------

CLUSTER_WEBSOCKET = """
from laf_py import cloud

async def main(ctx):
    socket = ctx.socket
    if ctx.method == "WebSocket:connection":
        cloud.sockets.join(socket, "lobby")
        socket.send(socket.id)
    elif ctx.method == "WebSocket:message" and ctx.params["data"] == "ping":
        socket.send("pong")
"""

CLUSTER_FUNCTIONS = {
    "to_room": """
        from laf_py import cloud

        async def main(ctx):
            room, message = ctx.body["room"], ctx.body["message"]
            return {"delivered": await cloud.sockets.send_to_room(room, message)}
        """,
    "join_by_id": FUNCTIONS["join_by_id"],
    "members": FUNCTIONS["members"],
}


async def test_rooms_across_two_nodes_and_a_killed_nodes_members_are_reaped(
    start_nodes: StartNodes,
    clients: Clients,
    functions_dir: Path,
    http: httpx.AsyncClient,
    redis_url: str,
    cluster: str,
) -> None:
    """Two ``laf-py serve`` nodes: a function on A joins B's socket by id, send_to_room from
    A reaches members of both nodes; SIGKILL B: its members leave room_members and Redis."""
    write_function(functions_dir, "__websocket__", CLUSTER_WEBSOCKET)
    for name, source in CLUSTER_FUNCTIONS.items():
        write_function(functions_dir, name, source)
    a, b = await start_nodes(2, functions_dir, heartbeat=FAST_HEARTBEAT)
    on_a = await clients.connect(a)
    on_b = await clients.connect(b)
    assert await call(http, a, "join_by_id", {"id": on_b.id, "room": "vip"}) == {"n": 1}
    assert await call(http, a, "join_by_id", {"id": on_a.id, "room": "vip"}) == {"n": 1}
    for room in ("lobby", "vip"):
        expected = sorted([on_a.id, on_b.id])
        assert (await call(http, b, "members", room=room))["members"] == expected
        assert await call(http, a, "to_room", {"room": room, "message": room}) == {"delivered": 2}
        assert await on_a.next() == room
        assert await on_b.next() == room

    b.process.kill()
    await asyncio.to_thread(b.process.wait, 10)
    # Not listed from the moment B counts as dead, and taken out of Redis when reaped.
    client = aioredis.Redis.from_url(redis_url)
    try:

        async def reaped() -> bool:
            if await client.exists(f"{cluster}:nrooms:{b.node_id}"):
                return False
            for room in ("lobby", "vip"):
                if on_b.id.encode() in await client.smembers(f"{cluster}:room:{room}"):
                    return False
            return True

        await poll(reaped, timeout=4 * FAST_HEARTBEAT + 2.0)
    finally:
        await client.aclose()
    for room in ("lobby", "vip"):
        assert (await call(http, a, "members", room=room))["members"] == [on_a.id]
        assert await call(http, a, "to_room", {"room": room, "message": "after"}) == {
            "delivered": 1
        }
        assert await on_a.next() == "after"
