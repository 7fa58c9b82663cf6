"""The Redis bus on its own: two RedisBus instances in this process, real Redis, stand-in
local sockets. Failure modes found in review."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from laf_py.bus import wire
from laf_py.bus.redis import RedisBus

from .conftest import wait_until


class Sockets:
    """LocalSockets that record what reaches them: every id exists."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.users: list[str] = []

    def write_ids(self, frame: bytes, socket_ids: list[str]) -> int:
        self.frames.append(frame)
        return len(socket_ids)

    def write_everyone(self, frame: bytes, skip: set[str]) -> int:
        self.frames.append(frame)
        return 1

    def write_user(self, frame: bytes, user_id: str) -> int:
        self.frames.append(frame)
        return 1

    def close_local(self, socket_id: str, code: int, reason: str) -> None:
        pass

    def local_users(self) -> list[str]:
        return list(self.users)


@pytest.fixture
async def nodes(redis_url: str, cluster: str) -> AsyncIterator[list[tuple[RedisBus, Sockets]]]:
    started = []
    for _ in range(2):
        bus = RedisBus(redis_url, os.urandom(4).hex(), cluster, 5.0, lambda u, o: None)
        sockets = Sockets()
        await bus.start(sockets)
        started.append((bus, sockets))
    yield started
    for bus, _ in started:
        await bus.stop()


async def test_a_burst_of_sends_arrives_complete_and_in_order(nodes) -> None:
    """2000 sends without await: none lost to an exhausted pool, none reordered."""
    (a, _), (b, b_sockets) = nodes
    for i in range(2000):
        a.to_sockets(str(i).encode(), {b.node_id: [b.node_id + "0" * 16]})
    await wait_until(lambda: len(b_sockets.frames) >= 2000)
    assert b_sockets.frames == [str(i).encode() for i in range(2000)]


async def test_awaited_counts_come_from_the_other_node(nodes) -> None:
    (a, _), (b, _) = nodes
    assert await a.to_everyone(b"x", set()) == 1
    assert await a.to_sockets(b"x", {b.node_id: ["a", "b"]}) == 2


async def test_a_malformed_message_does_not_stop_the_listener(nodes, redis_url, cluster) -> None:
    (a, _), (_, b_sockets) = nodes
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.publish(f"{cluster}:all", b"not json at all")
        await client.publish(f"{cluster}:all", wire.encode({"op": "deliver", "from": "x"}))
    finally:
        await client.aclose()
    assert await a.to_everyone(b"after", set()) == 1
    assert b_sockets.frames[-1] == b"after"


async def test_joining_or_leaving_twice_changes_presence_once(nodes) -> None:
    (a, _), (b, _) = nodes
    assert await a.user_joined("alice") is True
    assert await a.user_joined("alice") is False  # a repeat is not a new arrival
    assert await b.user_joined("alice") is False  # already online through a
    assert await a.user_left("alice") is False  # still on b
    assert await b.user_left("alice") is True
    assert await b.user_left("alice") is False
    assert await a.is_online("alice") is False


async def test_stop_forgets_this_node_s_users(nodes) -> None:
    (a, a_sockets), (b, _) = nodes
    a_sockets.users.append("carol")
    assert await a.user_joined("carol")
    await a.stop()
    nodes.pop(0)
    assert await b.is_online("carol") is False
