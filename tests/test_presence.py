"""Users on all their devices, and presence: ``send_to_user``, ``is_online``, ``online_users``
and ``functions/__presence__.py``.

Every test runs on SQLite and on PostgreSQL (the server always has a database). Presence events
run in the order they were queued, so a test proves that an event did *not* happen by bringing a
fresh "marker" user online and waiting for that event: anything queued before it has run by then.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from laf_py import cloud

from .conftest import wait_until, write_function

pytestmark = pytest.mark.both_servers

# Logs (method, socket id, user_id) per event. On connect: ?reject=1 raises HTTPError(403),
# ?bind=<user> binds the socket; then sends the socket id. Message "rebind:<user>" rebinds.
WEBSOCKET = """
from laf_py import HTTPError, cloud

async def main(ctx):
    socket = ctx.socket
    cloud.shared.setdefault("ws", []).append((ctx.method, socket.id, socket.user_id))
    if ctx.method == "WebSocket:connection":
        if ctx.query.get("reject"):
            raise HTTPError(403, "go away")
        if ctx.query.get("bind"):
            cloud.sockets.bind_user(socket, ctx.query["bind"])
        socket.send(socket.id)
    elif ctx.method == "WebSocket:message":
        data = ctx.params["data"]
        if data.startswith("rebind:"):
            cloud.sockets.bind_user(socket, data.removeprefix("rebind:"))
            socket.send("rebound")
"""

PRESENCE = """
from laf_py import cloud

async def main(ctx):
    cloud.shared.setdefault("presence", []).append((ctx.method, dict(ctx.params)))
"""

TO_USER = """
from laf_py import cloud

async def main(ctx):
    return {"delivered": await cloud.sockets.send_to_user(ctx.body["user"], ctx.body["message"])}
"""

ONLINE = "Presence:online"
OFFLINE = "Presence:offline"


def online(user: str) -> tuple[str, dict[str, str]]:
    return (ONLINE, {"user_id": user})


def offline(user: str) -> tuple[str, dict[str, str]]:
    return (OFFLINE, {"user_id": user})


def presence() -> list[tuple[str, dict[str, str]]]:
    return list(cloud.shared.get("presence", []))


def closed(socket_id: str) -> bool:
    """The close event of that socket has run (so the server has forgotten the socket)."""
    return any(m == "WebSocket:close" and s == socket_id for m, s, _ in cloud.shared.get("ws", []))


async def recv(ws: Any, timeout: float = 5.0) -> str | bytes:
    return await asyncio.wait_for(ws.recv(), timeout)


@pytest.fixture
def folder(functions_dir: Path) -> Path:
    write_function(functions_dir, "__websocket__", WEBSOCKET)
    write_function(functions_dir, "__presence__", PRESENCE)
    write_function(functions_dir, "to_user", TO_USER)
    return functions_dir


class Clients:
    """Opens WebSocket clients on a server and closes whatever is left at the end."""

    def __init__(self, server: Any, stack: AsyncExitStack) -> None:
        self.server = server
        self.stack = stack
        self._markers = itertools.count(1)

    async def connect(self, user: str | None = None, query: str = "") -> tuple[Any, str]:
        """A client (with a token for ``user``), once the server has accepted its socket."""
        params = [query] if query else []
        if user is not None:
            params.append(f"token={cloud.get_token({'uid': user})}")
        url = self.server.ws_url + ("?" + "&".join(params) if params else "")
        ws = await self.stack.enter_async_context(websockets.connect(url))
        socket_id = await recv(ws)
        assert isinstance(socket_id, str)
        await wait_until(lambda: cloud.sockets.get(socket_id) is not None)
        return ws, socket_id

    async def marker(self) -> str:
        """Bring a fresh user online and wait for that presence event; return the user."""
        user = f"marker-{next(self._markers)}"
        await self.connect(user)
        await wait_until(lambda: online(user) in presence())
        return user


@pytest.fixture
async def started(serve, folder: Path, database_url: str) -> AsyncIterator[tuple[Any, Clients]]:
    async with serve(folder, database_url=database_url) as server, AsyncExitStack() as stack:
        yield server, Clients(server, stack)


# -- all devices of a user -------------------------------------------------------------------


async def test_send_to_user_reaches_every_device(started, http) -> None:
    """send_to_user reaches both connections of the user: count 2, both get the message."""
    server, clients = started
    phone, _ = await clients.connect("alice")
    laptop, _ = await clients.connect("alice")
    response = await http.post(
        server.fn_url("to_user"), json={"user": "alice", "message": {"text": "hi"}}
    )
    assert response.json() == {"delivered": 2}
    assert await recv(phone) == '{"text":"hi"}'
    assert await recv(laptop) == '{"text":"hi"}'


async def test_send_to_user_skips_other_users(started, http) -> None:
    """Another user's connection does not get it: its next frame is the one meant for it."""
    server, clients = started
    await clients.connect("alice")
    bob, _ = await clients.connect("bob")
    for user, message in (("alice", "for alice"), ("bob", "for bob")):
        response = await http.post(
            server.fn_url("to_user"), json={"user": user, "message": message}
        )
        assert response.json() == {"delivered": 1}
    assert await recv(bob) == "for bob"


async def test_send_to_unknown_user_reaches_nobody(started, http) -> None:
    """send_to_user for a user with no connection: count 0."""
    server, clients = started
    await clients.connect("alice")
    response = await http.post(server.fn_url("to_user"), json={"user": "zoe", "message": "x"})
    assert response.json() == {"delivered": 0}


# -- is_online / online_users ------------------------------------------------------------------


async def test_connected_users_are_online(started) -> None:
    """is_online and online_users list users with a connection, not anonymous ones."""
    _, clients = started
    await clients.connect("alice")
    await clients.connect("alice")
    await clients.connect("bob")
    await clients.connect()
    assert await cloud.sockets.is_online("alice")
    assert await cloud.sockets.is_online("bob")
    assert not await cloud.sockets.is_online("carol")
    assert sorted(await cloud.sockets.online_users()) == ["alice", "bob"]


async def test_user_stays_online_while_one_device_is_left(started) -> None:
    """Closing one of two devices leaves the user online."""
    _, clients = started
    phone, phone_id = await clients.connect("alice")
    await clients.connect("alice")
    await phone.close()
    await wait_until(lambda: closed(phone_id))
    assert await cloud.sockets.is_online("alice")
    assert await cloud.sockets.online_users() == ["alice"]


async def test_user_goes_offline_when_last_device_closes(started) -> None:
    """After the client closes the last device, the user is offline."""
    _, clients = started
    phone, phone_id = await clients.connect("alice")
    laptop, laptop_id = await clients.connect("alice")
    await phone.close()
    await laptop.close()
    await wait_until(lambda: closed(phone_id) and closed(laptop_id))
    assert not await cloud.sockets.is_online("alice")
    assert await cloud.sockets.online_users() == []


async def test_user_goes_offline_when_last_device_vanishes(started) -> None:
    """A device that drops without a close frame still takes the user offline."""
    _, clients = started
    phone, _ = await clients.connect("alice")
    phone.transport.abort()

    async def alice_offline() -> bool:
        return not await cloud.sockets.is_online("alice")

    await wait_until(alice_offline)


# -- functions/__presence__.py ---------------------------------------------------------------


async def test_presence_online_once_for_the_first_device(started) -> None:
    """Two devices: Presence:online once, with params {"user_id": ...}."""
    _, clients = started
    await clients.connect("alice")
    await wait_until(lambda: presence())
    await clients.connect("alice")
    marker = await clients.marker()
    assert presence() == [online("alice"), online(marker)]


async def test_presence_offline_once_after_the_last_device(started) -> None:
    """Presence:offline only after the last device goes, exactly once, after online."""
    _, clients = started
    phone, phone_id = await clients.connect("alice")
    laptop, _ = await clients.connect("alice")
    await phone.close()
    await wait_until(lambda: closed(phone_id))
    first = await clients.marker()
    assert presence() == [online("alice"), online(first)]
    await laptop.close()
    await wait_until(lambda: offline("alice") in presence())
    second = await clients.marker()
    assert presence() == [online("alice"), online(first), offline("alice"), online(second)]


async def test_presence_offline_when_last_device_vanishes(started) -> None:
    """A device dropped without a close frame: Presence:offline follows."""
    _, clients = started
    phone, _ = await clients.connect("alice")
    phone.transport.abort()
    await wait_until(lambda: offline("alice") in presence())
    assert presence() == [online("alice"), offline("alice")]


async def test_no_presence_events_for_anonymous_sockets(started) -> None:
    """A socket without a user comes and goes without presence events."""
    _, clients = started
    anonymous, anonymous_id = await clients.connect()
    await anonymous.close()
    await wait_until(lambda: closed(anonymous_id))
    marker = await clients.marker()
    assert presence() == [online(marker)]


async def test_rejected_connection_never_makes_its_user_online(started) -> None:
    """A connection event that raises HTTPError: the user is never online, no presence."""
    server, clients = started
    url = f"{server.ws_url}?reject=1&token={cloud.get_token({'uid': 'mallory'})}"
    async with websockets.connect(url) as ws:
        with pytest.raises(ConnectionClosed) as info:
            await recv(ws)
    assert info.value.rcvd is not None
    assert info.value.rcvd.code == 4403
    marker = await clients.marker()
    assert presence() == [online(marker)]
    assert not await cloud.sockets.is_online("mallory")


async def test_bind_user_in_connection_event_makes_user_online(started) -> None:
    """bind_user(ctx.socket, "carol") on an anonymous socket: carol is online, once."""
    _, clients = started
    _, socket_id = await clients.connect(query="bind=carol")
    await wait_until(lambda: presence())
    assert presence() == [online("carol")]
    assert await cloud.sockets.is_online("carol")
    assert cloud.sockets.get(socket_id).user_id == "carol"


async def test_rebinding_moves_presence(started) -> None:
    """Rebinding a socket from dave to erin: dave goes offline, erin comes online."""
    _, clients = started
    ws, _ = await clients.connect("dave")
    await ws.send("rebind:erin")
    assert await recv(ws) == "rebound"
    await wait_until(lambda: online("erin") in presence())
    assert presence() == [online("dave"), offline("dave"), online("erin")]
    assert not await cloud.sockets.is_online("dave")
    assert await cloud.sockets.online_users() == ["erin"]


async def test_user_id_is_readable_in_the_close_event(started) -> None:
    """ctx.socket.user_id is still the user in the close event."""
    _, clients = started
    ws, socket_id = await clients.connect("alice")
    await ws.close()
    await wait_until(lambda: closed(socket_id))
    close_events = [e for e in cloud.shared["ws"] if e[0] == "WebSocket:close"]
    assert close_events == [("WebSocket:close", socket_id, "alice")]
