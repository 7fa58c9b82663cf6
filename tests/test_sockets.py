"""``cloud.sockets``: finding live connections and delivering to them, by id, user or everyone.

Deliveries are made by HTTP functions of the same server (as users do); lookups (``get``,
``len``, iteration) are checked from the test, which runs in the server's process and loop.
A client that must *not* receive something is proven so by the next frame it gets: a marker
broadcast sent afterwards.
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
import websockets.sync.client

from laf_py import Socket, cloud

from .conftest import wait_until, write_function

pytestmark = pytest.mark.both_servers

# On connect: bind ?user= (with bind_user, or the user_id attribute when ?bind=attr) and send
# {"id", "user_id"}. Message "count": bump socket.state["count"] and send it back.
WEBSOCKET = """
from laf_py import cloud

async def main(ctx):
    socket = ctx.socket
    if ctx.method == "WebSocket:connection":
        cloud.shared.setdefault("ctx_sockets", {})[socket.id] = socket
        user = ctx.query.get("user")
        if user and ctx.query.get("bind") == "attr":
            socket.user_id = user
        elif user:
            cloud.sockets.bind_user(socket, user)
        socket.state["count"] = 0
        socket.send({"id": socket.id, "user_id": socket.user_id})
    elif ctx.method == "WebSocket:message":
        if ctx.params["data"] == "count":
            socket.state["count"] += 1
            socket.send({"count": socket.state["count"]})
    else:
        cloud.shared.setdefault("closed", []).append(socket.id)
"""

FUNCTIONS = {
    "publish": """
        from laf_py import cloud

        async def main(ctx):
            delivery = cloud.sockets.publish(ctx.body["message"], ctx.body["ids"])
            return {"delivered": await delivery}
        """,
    "broadcast": """
        from laf_py import cloud

        async def main(ctx):
            exclude = list(ctx.body.get("exclude_ids", []))
            exclude += [cloud.sockets.get(i) for i in ctx.body.get("exclude_sockets", [])]
            delivery = cloud.sockets.broadcast(ctx.body["message"], exclude=exclude)
            return {"delivered": await delivery}
        """,
    "to_user": """
        from laf_py import cloud

        async def main(ctx):
            delivery = cloud.sockets.send_to_user(ctx.body["user"], ctx.body["message"])
            return {"delivered": await delivery}
        """,
    "fire_and_forget": """
        from laf_py import cloud

        async def main(ctx):
            cloud.sockets.send_to_user(ctx.body["user"], ctx.body["message"])
            return {"returned": True}
        """,
    "sync_broadcast": """
        from laf_py import cloud

        def main(ctx):
            return {"delivered": cloud.sockets.broadcast(ctx.body["message"]).result(timeout=5)}
        """,
    "presence": """
        from laf_py import cloud

        async def main(ctx):
            return {
                "online": await cloud.sockets.is_online(ctx.query["user"]),
                "users": sorted(await cloud.sockets.online_users()),
            }
        """,
}


@pytest.fixture
def folder(functions_dir: Path) -> Path:
    write_function(functions_dir, "__websocket__", WEBSOCKET)
    for name, source in FUNCTIONS.items():
        write_function(functions_dir, name, source)
    return functions_dir


async def recv(ws: Any, timeout: float = 5.0) -> str | bytes:
    return await asyncio.wait_for(ws.recv(), timeout)


async def recv_json(ws: Any) -> Any:
    frame = await recv(ws)
    assert isinstance(frame, str), f"expected a text frame, got {frame!r}"
    return json.loads(frame)


async def join(server: Any, **query: str) -> tuple[Any, str]:
    """Connect (with ``query``) and return the client and its socket id."""
    url = server.ws_url + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")
    ws = await websockets.connect(url)
    hello = await recv_json(ws)
    return ws, hello["id"]


async def call(http: httpx.AsyncClient, server: Any, name: str, **body: Any) -> Any:
    response = await http.post(server.fn_url(name), json=body)
    assert response.status_code == 200, response.text
    return response.json()


async def presence(http: httpx.AsyncClient, server: Any, user: str) -> Any:
    response = await http.get(server.fn_url("presence"), params={"user": user})
    assert response.status_code == 200, response.text
    return response.json()


async def assert_next_is_marker(http: httpx.AsyncClient, server: Any, *clients: Any) -> None:
    """Broadcast a marker; each client's next frame must be it (nothing came before)."""
    await call(http, server, "broadcast", message="marker")
    for ws in clients:
        assert await recv(ws) == "marker"


# -- finding ---------------------------------------------------------------------------------


async def test_get_returns_the_socket_of_the_connection(serve, folder: Path):
    """get(id) is the very Socket the function saw as ctx.socket; unknown ids give None."""
    async with serve(folder) as server:
        ws, socket_id = await join(server)
        socket = cloud.sockets.get(socket_id)
        assert isinstance(socket, Socket)
        assert socket.id == socket_id
        assert socket is cloud.shared["ctx_sockets"][socket_id]
        assert cloud.sockets.get("no-such-socket") is None
        await ws.close()


async def test_len_counts_open_connections(serve, folder: Path):
    """len(cloud.sockets) counts open connections and drops back after a close."""
    async with serve(folder) as server:
        assert len(cloud.sockets) == 0
        a, _ = await join(server)
        b, _ = await join(server)
        assert len(cloud.sockets) == 2
        await a.close()
        await wait_until(lambda: len(cloud.sockets) == 1)
        await b.close()
        await wait_until(lambda: len(cloud.sockets) == 0)


async def test_iteration_yields_the_open_sockets(serve, folder: Path):
    """Iterating cloud.sockets yields a Socket per open connection."""
    async with serve(folder) as server:
        a, id_a = await join(server)
        b, id_b = await join(server)
        sockets = list(cloud.sockets)
        assert all(isinstance(s, Socket) for s in sockets)
        assert {s.id for s in sockets} == {id_a, id_b}
        await a.close()
        await wait_until(lambda: [s.id for s in cloud.sockets] == [id_b])
        await b.close()


async def test_closed_socket_is_not_found(serve, folder: Path):
    """After its close event, get(id) is None and the Socket reports closed."""
    async with serve(folder) as server:
        ws, socket_id = await join(server)
        socket = cloud.sockets.get(socket_id)
        assert socket is not None and not socket.closed
        await ws.close()
        await wait_until(lambda: socket_id in cloud.shared.get("closed", []))
        assert cloud.sockets.get(socket_id) is None
        assert socket.closed


# -- publish and broadcast -------------------------------------------------------------------


async def test_publish_reaches_listed_ids_and_skips_unknown(
    serve, folder: Path, http: httpx.AsyncClient
):
    """publish(message, ids) reaches those ids, skips unknown ones, and counts them."""
    async with serve(folder) as server:
        a, id_a = await join(server)
        b, id_b = await join(server)
        c, _ = await join(server)
        result = await call(http, server, "publish", message="news", ids=[id_a, "nope", id_b])
        assert result == {"delivered": 2}
        assert await recv(a) == "news"
        assert await recv(b) == "news"
        await assert_next_is_marker(http, server, c)
        for ws in (a, b, c):
            await ws.close()


async def test_publish_sends_json_for_dicts(serve, folder: Path, http: httpx.AsyncClient):
    """publish with a dict delivers a JSON text frame."""
    async with serve(folder) as server:
        ws, socket_id = await join(server)
        result = await call(http, server, "publish", message={"n": 1}, ids=[socket_id])
        assert result == {"delivered": 1}
        assert await recv_json(ws) == {"n": 1}
        await ws.close()


async def test_broadcast_reaches_everyone(serve, folder: Path, http: httpx.AsyncClient):
    """broadcast(message) reaches every open connection."""
    async with serve(folder) as server:
        clients = [(await join(server))[0] for _ in range(3)]
        assert await call(http, server, "broadcast", message="all") == {"delivered": 3}
        for ws in clients:
            assert await recv(ws) == "all"
            await ws.close()


async def test_broadcast_excludes_ids(serve, folder: Path, http: httpx.AsyncClient):
    """broadcast(message, exclude=[id]) skips that connection."""
    async with serve(folder) as server:
        a, id_a = await join(server)
        b, _ = await join(server)
        result = await call(http, server, "broadcast", message="hi", exclude_ids=[id_a])
        assert result == {"delivered": 1}
        assert await recv(b) == "hi"
        await assert_next_is_marker(http, server, a)
        await a.close()
        await b.close()


async def test_broadcast_excludes_sockets(serve, folder: Path, http: httpx.AsyncClient):
    """broadcast(message, exclude=[socket]) skips that connection."""
    async with serve(folder) as server:
        a, _ = await join(server)
        b, id_b = await join(server)
        result = await call(http, server, "broadcast", message="hi", exclude_sockets=[id_b])
        assert result == {"delivered": 1}
        assert await recv(a) == "hi"
        await assert_next_is_marker(http, server, b)
        await a.close()
        await b.close()


async def test_broadcast_from_plain_def_function(serve, folder: Path, http: httpx.AsyncClient):
    """A plain def HTTP function broadcasts from its thread; .result() gives the count."""
    async with serve(folder) as server:
        a, _ = await join(server)
        b, _ = await join(server)
        assert await call(http, server, "sync_broadcast", message="threaded") == {"delivered": 2}
        assert await recv(a) == "threaded"
        assert await recv(b) == "threaded"
        await a.close()
        await b.close()


async def test_broadcast_skips_closed_connections(serve, folder: Path, http: httpx.AsyncClient):
    """A connection that closed is no longer counted by broadcast."""
    async with serve(folder) as server:
        a, id_a = await join(server)
        b, _ = await join(server)
        await a.close()
        await wait_until(lambda: id_a in cloud.shared.get("closed", []))
        assert await call(http, server, "broadcast", message="left") == {"delivered": 1}
        assert await recv(b) == "left"
        await b.close()


# -- users -----------------------------------------------------------------------------------


async def test_send_to_user_reaches_every_connection_of_the_user(
    serve, folder: Path, http: httpx.AsyncClient
):
    """Two connections bound to alice both get send_to_user("alice"); bob does not."""
    async with serve(folder) as server:
        phone, _ = await join(server, user="alice")
        laptop, _ = await join(server, user="alice")
        bob, _ = await join(server, user="bob")
        result = await call(http, server, "to_user", user="alice", message="for alice")
        assert result == {"delivered": 2}
        assert await recv(phone) == "for alice"
        assert await recv(laptop) == "for alice"
        await assert_next_is_marker(http, server, bob)
        for ws in (phone, laptop, bob):
            await ws.close()


async def test_send_to_unknown_user_reaches_nobody(serve, folder: Path, http: httpx.AsyncClient):
    """send_to_user for a user with no connection reports 0."""
    async with serve(folder) as server:
        ws, _ = await join(server, user="alice")
        assert await call(http, server, "to_user", user="carol", message="x") == {"delivered": 0}
        await assert_next_is_marker(http, server, ws)
        await ws.close()


async def test_user_id_attribute_binds_the_socket(serve, folder: Path, http: httpx.AsyncClient):
    """ctx.socket.user_id = "alice" binds like bind_user: user_id reads back, send_to_user works."""
    async with serve(folder) as server:
        ws = await websockets.connect(server.ws_url + "?user=alice&bind=attr")
        hello = await recv_json(ws)
        assert hello["user_id"] == "alice"
        assert cloud.sockets.get(hello["id"]).user_id == "alice"
        result = await call(http, server, "to_user", user="alice", message="bound")
        assert result == {"delivered": 1}
        assert await recv(ws) == "bound"
        await ws.close()


async def test_bind_user_sets_user_id(serve, folder: Path):
    """cloud.sockets.bind_user(socket, "alice") sets socket.user_id."""
    async with serve(folder) as server:
        ws, socket_id = await join(server, user="alice")
        assert cloud.sockets.get(socket_id).user_id == "alice"
        await ws.close()


async def test_delivery_without_await_is_not_lost(serve, folder: Path, http: httpx.AsyncClient):
    """send_to_user without await still delivers."""
    async with serve(folder) as server:
        ws, _ = await join(server, user="alice")
        response = await http.post(
            server.fn_url("fire_and_forget"), json={"user": "alice", "message": "unawaited"}
        )
        assert response.json() == {"returned": True}
        assert await recv(ws) == "unawaited"
        await ws.close()


async def test_is_online_and_online_users(serve, folder: Path, http: httpx.AsyncClient):
    """A bound user is online and listed; an unknown user is not."""
    async with serve(folder) as server:
        alice, _ = await join(server, user="alice")
        anonymous, _ = await join(server)
        assert await presence(http, server, "alice") == {"online": True, "users": ["alice"]}
        assert (await presence(http, server, "bob"))["online"] is False
        await alice.close()
        await anonymous.close()


async def test_user_goes_offline_after_last_connection_closes(
    serve, folder: Path, http: httpx.AsyncClient
):
    """alice stays online while one connection remains; offline after both close."""
    async with serve(folder) as server:
        phone, id_phone = await join(server, user="alice")
        laptop, id_laptop = await join(server, user="alice")
        await phone.close()
        await wait_until(lambda: id_phone in cloud.shared.get("closed", []))
        assert await presence(http, server, "alice") == {"online": True, "users": ["alice"]}
        assert await call(http, server, "to_user", user="alice", message="x") == {"delivered": 1}
        await laptop.close()
        await wait_until(lambda: id_laptop in cloud.shared.get("closed", []))
        assert await presence(http, server, "alice") == {"online": False, "users": []}
        assert await cloud.sockets.is_online("alice") is False


SYNC_BIND = """
from laf_py import cloud

def main(ctx):
    if ctx.method == "WebSocket:message":
        cloud.shared["in_thread"] = True
        cloud.shared["go"].wait(5)
        ctx.socket.user_id = "alice"
        cloud.shared["seen"] = ctx.socket.user_id
        cloud.shared["done"].set()
"""


async def test_user_id_set_in_plain_def_reads_back(serve, functions_dir: Path):
    """In a plain def, ctx.socket.user_id = "alice" reads back "alice" even if the loop is busy."""
    write_function(functions_dir, "__websocket__", SYNC_BIND)
    async with serve(functions_dir) as server, websockets.connect(server.ws_url) as ws:
        go, done = threading.Event(), threading.Event()
        cloud.shared.update(go=go, done=done)
        await ws.send("bind")
        await wait_until(lambda: cloud.shared.get("in_thread"))
        # Keep the event loop busy (this test shares it with the server) while the worker
        # thread sets and reads user_id, as any slow coroutine elsewhere could.
        go.set()
        assert done.wait(5)
        assert cloud.shared["seen"] == "alice"
        await wait_until(lambda: cloud.sockets.is_online("alice"))


# -- per-connection state --------------------------------------------------------------------


async def test_socket_state_persists_across_events(serve, folder: Path):
    """socket.state set in connection is kept across messages, per connection."""
    async with serve(folder) as server:
        a, _ = await join(server)
        b, _ = await join(server)
        await a.send("count")
        assert await recv_json(a) == {"count": 1}
        await a.send("count")
        assert await recv_json(a) == {"count": 2}
        await b.send("count")
        assert await recv_json(b) == {"count": 1}
        await a.close()
        await b.close()


# -- the write path ----------------------------------------------------------------------------

# On "go": 300 numbered messages without awaiting, alternating 200 KiB and 10-byte ones, so the
# kernel's buffer fills mid-frame and later small frames must queue behind the unsent rest.
BURST = """
async def main(ctx):
    if ctx.method == "WebSocket:message" and ctx.params["data"] == "go":
        for i in range(300):
            size = 200 * 1024 if i % 2 else 10
            ctx.socket.send(i.to_bytes(4, "big") + bytes([i % 251]) * (size - 4))
"""


async def test_frames_arrive_whole_and_in_order_when_the_kernel_buffer_fills(
    serve, functions_dir: Path
):
    """Frames go straight to the kernel while nothing is queued and through Tornado's buffer
    otherwise; either way they arrive whole and in the order they were sent. The client reads
    from another thread, so the kernel's buffer drains while the burst is being written."""
    write_function(functions_dir, "__websocket__", BURST)
    buffer = 64 * 1024 * 1024  # room for the whole 30 MB burst: no slow-consumer drop here

    def read_burst(url: str) -> list[bytes]:
        with websockets.sync.client.connect(url, max_size=None) as ws:
            ws.send("go")
            return [bytes(ws.recv(timeout=10)) for _ in range(300)]

    async with serve(functions_dir, max_send_buffer=buffer) as server:
        messages = await asyncio.to_thread(read_burst, server.ws_url)
    for i, message in enumerate(messages):
        assert int.from_bytes(message[:4], "big") == i
        assert len(message) == (200 * 1024 if i % 2 else 10)
        assert message[4:] == bytes([i % 251]) * (len(message) - 4)
