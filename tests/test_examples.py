"""The example functions (``functions/`` of this repository) as a user meets them: Laf's user
map (``__websocket__.py`` + ``push.py``) with several devices per user, on one server and
across two nodes joined through Redis; the chat's rooms (join/leave/room chat by message,
``chat/system.py`` from HTTP)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from laf_py import cloud

from .conftest import EXAMPLES, CliServer, frame_matching, wait_until

SECRET = "examples-tests-" + "x" * 40
GREETING = "Connection established, your userID is: "


def is_greeting(frame: Any) -> bool:
    return isinstance(frame, str) and frame.startswith(GREETING)


class Client:
    """HTTP calls to one server of the examples, and WebSocket clients that close at the end."""

    def __init__(self, url: str, http: httpx.AsyncClient, stack: AsyncExitStack) -> None:
        self.url = url
        self.ws_url = url.replace("http", "ws", 1) + "/__websocket__"
        self.http = http
        self.stack = stack
        self.registry: Any = None  # the server's function registry, when in-process

    async def login(self, user: str) -> str:
        response = await self.http.post(f"{self.url}/fn/login", json={"user": user})
        assert response.status_code == 200, response.text
        token: str = response.json()["token"]
        return token

    async def connect(self, token: str | None = None) -> tuple[Any, str]:
        """A client, and the userID of its greeting."""
        url = self.ws_url + (f"?token={token}" if token else "")
        ws = await self.stack.enter_async_context(websockets.connect(url))
        greeting = await frame_matching(ws, is_greeting)
        return ws, greeting.removeprefix(GREETING)

    async def push(self, user_id: str, message: str) -> httpx.Response:
        return await self.http.post(
            f"{self.url}/fn/push", json={"userID": user_id, "message": message}
        )

    async def online(self) -> list[str]:
        response = await self.http.get(f"{self.url}/fn/online")
        assert response.status_code == 200, response.text
        users: list[str] = response.json()["users"]
        return users


@pytest.fixture
async def examples(serve, http, tmp_path: Path) -> AsyncIterator[Client]:
    """One server of the examples, with a database and a secret of its own."""
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'laf.db'}"
    async with (
        serve(EXAMPLES, database_url=database_url, secret=SECRET) as server,
        AsyncExitStack() as stack,
    ):
        client = Client(server.url, http, stack)
        client.registry = server.server.runtime.registry
        yield client


def devices_of(user_id: str) -> int:
    """How many sockets the example's user map holds for the user, in this process."""
    return len(cloud.shared["wsMap"].get(user_id, ()))


async def test_push_reaches_every_device_of_a_token_user(examples: Client) -> None:
    """alice on two devices: /fn/push delivers to both; after one closes, to the other; after
    both close, "not connected". /fn/online agrees with /fn/push at each step."""
    token = await examples.login("alice")
    phone, phone_user = await examples.connect(token)
    laptop, laptop_user = await examples.connect(token)
    assert phone_user == laptop_user == "alice"
    assert devices_of("alice") == 2  # the second device did not replace the first

    response = await examples.push("alice", "to both")
    assert (response.status_code, response.json()) == (200, {"delivered": 2})
    for ws in (phone, laptop):
        assert await frame_matching(ws, lambda f: f == "to both") == "to both"
    assert await examples.online() == ["alice"]

    await phone.close()
    await wait_until(lambda: devices_of("alice") == 1)  # its close event has run
    response = await examples.push("alice", "to the laptop")
    assert (response.status_code, response.json()) == (200, {"delivered": 1})
    assert await frame_matching(laptop, lambda f: f == "to the laptop") == "to the laptop"
    assert await examples.online() == ["alice"]

    await laptop.close()

    async def offline() -> bool:
        return await examples.online() == []

    await wait_until(offline)
    assert "alice" not in cloud.shared["wsMap"]
    response = await examples.push("alice", "to nobody")
    assert response.status_code == 404
    assert response.json()["error"] == "user alice is not connected"


async def test_push_reaches_an_anonymous_user_alone(examples: Client) -> None:
    """A client without a token gets a random userID of its own: /fn/push reaches it (and no
    other client), /fn/online does not list it, and once it has closed it is "not connected"."""
    ws, user_id = await examples.connect()
    other, other_id = await examples.connect()
    assert user_id != other_id
    response = await examples.push(user_id, "just you")
    assert (response.status_code, response.json()) == (200, {"delivered": 1})
    assert await frame_matching(ws, lambda f: f == "just you") == "just you"
    assert await examples.online() == []

    await ws.close()

    async def forgotten() -> bool:  # the close event has run to its end
        return devices_of(user_id) == 0 and await cloud.kv.get(f"ws/{user_id}") is None

    await wait_until(forgotten)
    response = await examples.push(user_id, "gone")
    assert response.status_code == 404
    other_push = await examples.push(other_id, "still here")
    assert other_push.json() == {"delivered": 1}
    assert await frame_matching(other, lambda f: f == "still here") == "still here"


async def test_push_reaches_devices_on_two_nodes(
    cli_server, redis_url: str, cluster: str, tmp_path: Path, http: httpx.AsyncClient
) -> None:
    """Two nodes of one cluster: a push on node A reaches alice's devices on A and on B (her
    token), and an anonymous client on B (its socket id, from cloud.kv)."""
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    nodes: list[CliServer] = [
        cli_server(
            *("--functions", str(EXAMPLES), "--redis-url", redis_url, "--cluster", cluster),
            *("--database-url", database_url, "--reload", "false", "--shutdown-grace", "2"),
            env={"LAF_SECRET": SECRET},
        )
        for _ in range(2)
    ]
    async with AsyncExitStack() as stack:
        a, b = (Client(node.url, http, stack) for node in nodes)
        token = await a.login("alice")
        on_a, _ = await a.connect(token)
        on_b, _ = await b.connect(token)
        anonymous, anonymous_id = await b.connect()

        response = await a.push("alice", "both nodes")
        assert (response.status_code, response.json()) == (200, {"delivered": 2})
        for ws in (on_a, on_b):
            assert await frame_matching(ws, lambda f: f == "both nodes") == "both nodes"

        response = await a.push(anonymous_id, "from A")
        assert (response.status_code, response.json()) == (200, {"delivered": 1})
        assert await frame_matching(anonymous, lambda f: f == "from A") == "from A"


# -- chat rooms ----------------------------------------------------------------------------------


def of_type(kind: str) -> Any:
    return lambda frame: isinstance(frame, dict) and frame.get("type") == kind


async def send_json(ws: Any, message: dict[str, Any]) -> None:
    await ws.send(json.dumps(message))


async def test_chat_rooms_join_leave_and_send_to_members_only(examples: Client) -> None:
    """join/leave by JSON message; a chat with a room reaches the room's other members only
    (the ack counts them); a chat without one is still a broadcast; a bad room is refused."""
    ann, ann_id = await examples.connect()
    bob, _ = await examples.connect()
    cat, _ = await examples.connect()
    for ws in (ann, bob):
        await send_json(ws, {"type": "join", "room": "python"})
        joined = await frame_matching(ws, of_type("joined"))
        assert joined == {"type": "joined", "room": "python", "rooms": ["python"]}

    await send_json(ann, {"type": "chat", "room": "python", "text": "hi room"})
    assert await frame_matching(ann, of_type("ack")) == {"type": "ack", "delivered": 1}
    chat = {"type": "chat", "from": ann_id, "room": "python", "text": "hi room"}
    assert await frame_matching(bob, of_type("chat")) == chat
    # cat is in no room: the next chat it sees is the broadcast sent after the room chat.
    await send_json(ann, {"type": "chat", "text": "hi all"})
    assert await frame_matching(ann, of_type("ack")) == {"type": "ack", "delivered": 2}
    assert (await frame_matching(cat, of_type("chat")))["text"] == "hi all"
    assert (await frame_matching(bob, of_type("chat")))["text"] == "hi all"

    await send_json(bob, {"type": "leave", "room": "python"})
    left = await frame_matching(bob, of_type("left"))
    assert left == {"type": "left", "room": "python", "rooms": []}
    await send_json(ann, {"type": "chat", "room": "python", "text": "alone"})
    assert await frame_matching(ann, of_type("ack")) == {"type": "ack", "delivered": 0}

    error = {"type": "error", "error": "room (a non-empty string) is required"}
    for bad in (
        {"type": "join"},
        {"type": "leave", "room": ""},
        {"type": "chat", "room": 1, "text": "x"},
    ):
        await send_json(ann, bad)
        assert await frame_matching(ann, of_type("error")) == error


async def test_chat_system_posts_to_a_room(examples: Client) -> None:
    """POST /fn/chat/system reaches the room's members and no one else; bad bodies are 400."""
    ann, _ = await examples.connect()
    bob, _ = await examples.connect()
    await send_json(ann, {"type": "join", "room": "ops"})
    await frame_matching(ann, of_type("joined"))
    url = f"{examples.url}/fn/chat/system"
    response = await examples.http.post(url, json={"room": "ops", "text": "maintenance"})
    assert (response.status_code, response.json()) == (200, {"delivered": 1, "members": 1})
    system = {"type": "chat", "from": "system", "room": "ops", "text": "maintenance"}
    assert await frame_matching(ann, of_type("chat")) == system
    # bob is not in the room: the next chat he sees is a broadcast made afterwards.
    response = await examples.http.post(f"{examples.url}/fn/chat/send", json={"text": "marker"})
    assert response.json() == {"delivered": 2}
    assert (await frame_matching(bob, of_type("chat")))["text"] == "marker"

    for body, error in (
        ({"text": "x"}, "room (a non-empty string) is required"),
        ({"room": "", "text": "x"}, "room (a non-empty string) is required"),
        ({"room": "ops"}, "text (a string) is required"),
    ):
        response = await examples.http.post(url, json=body)
        assert response.status_code == 400 and response.json()["error"] == error
    assert (await examples.http.get(url)).status_code == 405


async def test_export_queues_a_job_that_tells_every_device(examples: Client) -> None:
    """queue-run's flow: POST /fn/export answers at once with a job id; the job runs as alice
    and both her sockets hear that the file is ready; GET /fn/export?job= gives its state."""
    token = await examples.login("alice")
    phone, _ = await examples.connect(token)
    laptop, _ = await examples.connect(token)
    auth = {"Authorization": f"Bearer {token}"}
    anonymous = await examples.http.post(f"{examples.url}/fn/export")
    assert anonymous.status_code == 401
    queued = await examples.http.post(f"{examples.url}/fn/export", headers=auth)
    assert queued.status_code == 200
    job = queued.json()["job"]
    ready = {"type": "export_ready", "url": f"/files/{job}.csv"}
    for ws in (phone, laptop):
        assert await frame_matching(ws, of_type("export_ready"), timeout=15) == ready

    async def done() -> Any:
        state = await examples.http.get(
            f"{examples.url}/fn/export", params={"job": job}, headers=auth
        )
        return state.json() if state.json().get("state") == "done" else None

    finished = await wait_until(done)
    assert finished["result"] == {"url": f"/files/{job}.csv"}
    not_http = await examples.http.post(f"{examples.url}/fn/export_job")
    assert not_http.status_code == 405


async def test_clock_sends_the_time_to_its_room(examples: Client) -> None:
    """The scheduled clock (every minute) sends to the "clock" room only; POST /fn/clock runs
    the same code now."""
    clock = examples.registry.get("clock")
    assert clock is not None and clock.schedule is not None and clock.error is None
    member, _ = await examples.connect()
    await examples.connect()  # another socket, in no room: not counted
    await send_json(member, {"type": "join", "room": "clock"})
    await frame_matching(member, of_type("joined"))
    response = await examples.http.post(f"{examples.url}/fn/clock")
    assert response.json() == {"delivered": 1}
    tick = await frame_matching(member, of_type("clock"))
    assert tick["time"].endswith("+00:00")
