"""The Redis bus on its own: nodes in this process, each a real SocketRegistry joined to real
Redis by a RedisBus, whose sockets have a stand-in transport (the one part that needs a
network connection). Failure modes found in review."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from laf_py.bus import redis as redis_bus
from laf_py.bus import wire
from laf_py.bus.redis import RedisBus
from laf_py.cloud.delivery import WRITTEN, LoopBridge
from laf_py.cloud.sockets import Socket, SocketRegistry
from laf_py.core.frames import encode_frame

from .conftest import wait_until


class FakeTransport:
    """A connection without the network: keeps the frames written to it, and its close."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.closed_with: tuple[int, str] | None = None

    def write_frame(self, frame: bytes) -> Any:
        if self.closed_with is not None:
            return None  # closing: Socket reports 0, as with a real connection
        self.frames.append(frame)
        return WRITTEN

    def close(self, code: int, reason: str) -> None:
        self.closed_with = (code, reason)


class Node:
    """One node: the socket registry (``cloud.sockets``) and its bus, as the runtime wires them."""

    def __init__(self, redis_url: str, cluster: str, heartbeat: float = 5.0) -> None:
        self.sockets = SocketRegistry(LoopBridge(asyncio.get_running_loop()))
        self.node_id = self.sockets.node_id
        self.bus = RedisBus(redis_url, self.node_id, cluster, heartbeat, lambda u, o: None)
        self.sockets.bus = self.bus

    async def start(self) -> Node:
        await self.bus.start(self.sockets)
        return self

    def connect(self, user_id: str | None = None) -> tuple[Socket, FakeTransport]:
        """A connection whose ``connection`` event accepted it."""
        transport = FakeTransport()
        socket = self.sockets.open(transport, user_id)
        self.sockets.accept(socket)
        return socket, transport

    def disconnect(self, socket: Socket) -> None:
        """The connection closed (what the server does after the client left)."""
        self.sockets.discard(socket)


@pytest.fixture
async def nodes(redis_url: str, cluster: str) -> AsyncIterator[list[Node]]:
    started = [await Node(redis_url, cluster).start() for _ in range(2)]
    yield started
    for node in started:
        await node.bus.stop()


async def test_a_burst_of_sends_arrives_complete_and_in_order(nodes: list[Node]) -> None:
    """2000 sends without await: none lost to an exhausted pool, none reordered."""
    a, b = nodes
    socket, transport = b.connect()
    for i in range(2000):
        a.bus.to_sockets(str(i).encode(), {b.node_id: [socket.id]})
    await wait_until(lambda: len(transport.frames) >= 2000)
    assert transport.frames == [str(i).encode() for i in range(2000)]


async def test_awaited_counts_come_from_the_other_node(nodes: list[Node]) -> None:
    """Counts are of the other node's open sockets that were written to: unknown, skipped,
    other users' and closed sockets are not counted."""
    a, b = nodes
    alice, alice_transport = b.connect("alice")
    anonymous, _ = b.connect()
    unknown = b.node_id + "0" * 16
    assert await a.bus.to_everyone(b"x", set()) == 2
    assert await a.bus.to_everyone(b"x", {anonymous.id}) == 1
    assert await a.bus.to_sockets(b"x", {b.node_id: [alice.id, anonymous.id, unknown]}) == 2
    assert await a.bus.to_user(b"x", "alice") == 1
    assert await a.bus.to_user(b"x", "bob") == 0

    # The registry's own calls go through the bus: a has no sockets, b's are counted.
    assert await a.sockets.send_to_user("alice", {"hi": 1}) == 1
    assert alice_transport.frames[-1] == encode_frame({"hi": 1})
    assert await a.sockets.publish("ping", [alice.id, anonymous.id]) == 2
    assert await a.sockets.broadcast("all") == 2

    b.disconnect(anonymous)
    assert await a.bus.to_everyone(b"x", set()) == 1
    assert await a.sockets.publish("ping", [anonymous.id]) == 0


async def test_close_reaches_a_socket_on_the_other_node(nodes: list[Node]) -> None:
    """``cloud.sockets.get(id).close()`` for a socket on another node closes it there."""
    a, b = nodes
    socket, transport = b.connect()
    remote = a.sockets.get(socket.id)
    assert remote is not None and remote.id == socket.id and socket.id not in a.sockets
    remote.close(4001, "bye")
    await wait_until(lambda: transport.closed_with is not None)
    assert transport.closed_with == (4001, "bye")


async def test_a_malformed_message_does_not_stop_the_listener(
    nodes: list[Node], redis_url: str, cluster: str
) -> None:
    a, b = nodes
    _, transport = b.connect()
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.publish(f"{cluster}:all", b"not json at all")
        await client.publish(f"{cluster}:all", wire.encode({"op": "deliver", "from": "x"}))
    finally:
        await client.aclose()
    assert await a.bus.to_everyone(b"after", set()) == 1
    assert transport.frames[-1] == b"after"


async def test_joining_or_leaving_twice_changes_presence_once(nodes: list[Node]) -> None:
    a, b = (node.bus for node in nodes)
    assert await a.user_joined("alice") is True
    assert await a.user_joined("alice") is False  # a repeat is not a new arrival
    assert await b.user_joined("alice") is False  # already online through a
    assert await a.user_left("alice") is False  # still on b
    assert await b.user_left("alice") is True
    assert await b.user_left("alice") is False
    assert await a.is_online("alice") is False


async def test_stop_forgets_this_node_s_users(nodes: list[Node]) -> None:
    a, b = nodes
    a.connect("carol")
    assert a.sockets.local_users() == ["carol"]
    assert await a.bus.user_joined("carol")  # as the presence events do for a new user
    assert await b.bus.is_online("carol") is True
    await a.bus.stop()
    nodes.remove(a)
    assert await b.bus.is_online("carol") is False


async def test_an_idle_node_keeps_its_subscription(
    redis_url: str, cluster: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A node that hears nothing for many times the socket timeout does not take its quiet
    subscription for a lost Redis (redis-py before 8.1 bounds a read that waits "forever" by
    the socket timeout), and still receives what is sent after the silence."""
    monkeypatch.setattr(redis_bus, "SOCKET_TIMEOUT", 0.3)
    caplog.set_level(logging.WARNING, logger="laf_py")
    node = await Node(redis_url, cluster, heartbeat=0.2).start()
    client = aioredis.Redis.from_url(redis_url)
    try:
        socket, transport = node.connect()
        first_beat = await client.zscore(f"{cluster}:nodes", node.node_id)
        assert first_beat is not None

        async def quiet_for_two_seconds() -> bool:  # measured by the node's own beats
            beat = await client.zscore(f"{cluster}:nodes", node.node_id)
            return beat is not None and beat - first_beat >= 2.0

        await wait_until(quiet_for_two_seconds)
        header = {"op": "deliver", "from": "test", "corr": 1, "k": "ids", "ids": [socket.id]}
        await client.publish(f"{cluster}:node:{node.node_id}", wire.encode(header, b"hello"))
        await wait_until(lambda: transport.frames == [b"hello"])
        assert "lost Redis" not in caplog.text
    finally:
        await client.aclose()
        await node.bus.stop()
