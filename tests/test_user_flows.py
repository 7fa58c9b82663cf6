"""The example functions in ``functions/`` as their users run them, on SQLite and PostgreSQL.

- Less: a client connects, ``POST /fn/hello`` publishes to it through ``cloud.kv``.
- queue-run: log in for a token, connect several devices with it, notify a user on all of
  them, see who is online and hear presence changes.

The server gets its own database and secret, so the repository's ``.laf`` is not touched.
Frames of different origins (greeting, presence, notification) may interleave, so clients
look for a frame by its content rather than by its position.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest
import websockets

from laf_py import cloud

from .conftest import EXAMPLES, frame_matching, wait_until

pytestmark = pytest.mark.both_servers

SECRET = "flows-" + "s" * 40
GREETING = "Connection established, your userID is: "


def is_greeting(frame: Any) -> bool:
    return isinstance(frame, str) and frame.startswith(GREETING)


def of_type(kind: str) -> Callable[[Any], bool]:
    """Matches a JSON object frame with that "type"."""
    return lambda frame: isinstance(frame, dict) and frame.get("type") == kind


def presence_frame(user: str, online: bool) -> dict[str, Any]:
    return {"type": "presence", "user": user, "online": online}


class App:
    """The examples served, with an HTTP client and WebSocket clients closed at the end."""

    def __init__(self, server: Any, http: httpx.AsyncClient, stack: AsyncExitStack) -> None:
        self.server = server
        self.http = http
        self.stack = stack

    async def login(self, user: str) -> str:
        response = await self.http.post(self.server.fn_url("login"), json={"user": user})
        assert response.status_code == 200, response.text
        token = response.json()["token"]
        assert isinstance(token, str)
        return token

    async def connect(self, token: str | None = None) -> tuple[Any, str]:
        """A client and its greeting frame."""
        url = self.server.ws_url + (f"?token={token}" if token else "")
        ws = await self.stack.enter_async_context(websockets.connect(url))
        greeting = await frame_matching(ws, is_greeting)
        return ws, greeting

    async def notify(self, token: str | None, user: str, message: str) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return await self.http.post(
            self.server.fn_url("notify"), json={"user": user, "message": message}, headers=headers
        )

    async def online(self) -> list[str]:
        response = await self.http.get(self.server.fn_url("online"))
        assert response.status_code == 200
        users: list[str] = response.json()["users"]
        return users


@pytest.fixture
async def app(serve, http, database_url: str) -> AsyncIterator[App]:
    async with (
        serve(EXAMPLES, database_url=database_url, secret=SECRET) as server,
        AsyncExitStack() as stack,
    ):
        yield App(server, http, stack)


# -- Less: POST /hello publishes to the connected client ---------------------------------------


async def test_less_post_hello_reaches_the_connected_client(app: App) -> None:
    """A client is connected: POST /fn/hello is 204 and the client gets the greeting."""
    ws, greeting = await app.connect()
    assert re.fullmatch(GREETING + "[0-9a-f]{12}", greeting)
    response = await app.http.post(app.server.fn_url("hello"))
    assert response.status_code == 204
    assert response.content == b""
    assert await frame_matching(ws, lambda f: f == "Hello from POST /hello")


async def test_less_post_hello_without_a_client_is_404(app: App) -> None:
    """Nobody connected: POST /fn/hello is 404 with a JSON error."""
    response = await app.http.post(app.server.fn_url("hello"))
    assert response.status_code == 404
    assert response.json() == {
        "error": "no WebSocket client is connected",
        "request_id": response.headers["x-request-id"],
    }


async def test_less_post_hello_after_the_client_left_is_404(app: App) -> None:
    """The client disconnects: its close event forgets it, POST /fn/hello is 404 again."""
    ws, _ = await app.connect()
    await ws.close()

    async def forgotten() -> bool:
        return await cloud.kv.get("DEMO_SOCKET_CONNECTION_ID") is None

    await wait_until(forgotten)
    response = await app.http.post(app.server.fn_url("hello"))
    assert response.status_code == 404


# -- queue-run: log in, all devices, presence --------------------------------------------------


async def test_login_returns_a_token_for_the_user(app: App) -> None:
    """POST /fn/login gives a server-signed token whose uid is the user, expiring in an hour."""
    token = await app.login("alice")
    payload = cloud.parse_token(token)
    assert payload is not None
    assert payload["uid"] == "alice"
    assert payload["exp"] - payload["iat"] in (3600, 3601)  # exp is rounded up to a second


async def test_each_device_is_greeted_with_the_token_user(app: App) -> None:
    """Two clients with alice's token are both greeted with userID alice."""
    token = await app.login("alice")
    _, first = await app.connect(token)
    _, second = await app.connect(token)
    assert first == second == GREETING + "alice"


async def test_notify_reaches_every_device_of_the_user(app: App) -> None:
    """bob notifies alice: delivered to her 2 devices, both get the notification."""
    alice = await app.login("alice")
    phone, _ = await app.connect(alice)
    laptop, _ = await app.connect(alice)
    bob = await app.login("bob")
    response = await app.notify(bob, "alice", "hi")
    assert response.status_code == 200
    assert response.json() == {"delivered": 2, "online": True}
    expected = {"type": "notification", "from": "bob", "message": "hi"}
    for ws in (phone, laptop):
        assert await frame_matching(ws, of_type("notification")) == expected


async def test_notify_without_a_token_is_401(app: App) -> None:
    """POST /fn/notify without a Bearer token: 401 JSON error."""
    response = await app.notify(None, "alice", "hi")
    assert response.status_code == 401
    assert response.json()["request_id"] == response.headers["x-request-id"]
    assert "log in first" in response.json()["error"]


@pytest.mark.parametrize("user", [1, "", ["alice"], None], ids=repr)
async def test_notify_a_user_id_that_is_not_a_string_is_400(app: App, user: Any) -> None:
    """User ids are non-empty strings: {"user": 1} or {"user": ""} is the caller's mistake (400),
    not a crash of the function (cloud.sockets.send_to_user raises on them)."""
    bob = await app.login("bob")
    response = await app.http.post(
        app.server.fn_url("notify"),
        json={"user": user, "message": "hi"},
        headers={"Authorization": f"Bearer {bob}"},
    )
    assert response.status_code == 400, response.text
    assert "user" in response.json()["error"]


async def test_online_lists_connected_users(app: App) -> None:
    """GET /fn/online lists alice while she is connected, and not anonymous clients."""
    await app.connect(await app.login("alice"))
    await app.connect()
    await wait_until(lambda: cloud.sockets.is_online("alice"))
    assert await app.online() == ["alice"]


async def test_presence_frames_reach_other_clients(app: App) -> None:
    """An observer hears alice come online and, after her last device closes, go offline."""
    observer, _ = await app.connect()
    token = await app.login("alice")
    phone, _ = await app.connect(token)
    laptop, _ = await app.connect(token)
    assert await frame_matching(observer, of_type("presence")) == presence_frame("alice", True)
    await phone.close()
    await laptop.close()
    assert await frame_matching(observer, of_type("presence")) == presence_frame("alice", False)


async def test_after_last_device_closes_user_is_gone_and_last_seen(app: App) -> None:
    """alice's devices close: /fn/online no longer lists her; kv has last_seen/alice."""
    token = await app.login("alice")
    phone, _ = await app.connect(token)
    laptop, _ = await app.connect(token)
    await wait_until(lambda: cloud.sockets.is_online("alice"))
    before = time.time()
    await phone.close()
    await laptop.close()

    async def gone() -> bool:
        return "alice" not in await app.online()

    await wait_until(gone)

    async def last_seen() -> Any:
        return await cloud.kv.get("last_seen/alice")

    seen = await wait_until(last_seen)
    assert before - 1 <= seen <= time.time()
