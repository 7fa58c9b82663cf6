"""RedisBus: nodes joined through Redis pub/sub, for delivery and presence.

Channels (``<prefix>`` is the cluster name, ``laf`` by default):

- ``<prefix>:all`` — broadcasts, sends to users and to rooms: one publish reaches every node;
- ``<prefix>:node:<id>`` — sends to sockets of one node (a socket id starts with its node's id)
  and the replies that count how many connections a delivery reached.

Each node delivers to its own members of a room from memory; the rooms' members are also
written to Redis sets (in order, through the same pipeline as the publishes) for
``room_members``, and taken out when their node is reaped.

Presence lives in Redis sets kept by Lua scripts, so "first device online" and "last device
gone" are decided once for the whole cluster; nodes beat every ``heartbeat`` seconds, and a node
silent for three beats is reaped by the others, its users going offline.

Delivery is at most once: while Redis is unreachable, local sockets are still served, other
nodes' sockets miss what is sent, and nothing is queued for later.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from . import scripts, wire

__all__ = ["LocalSockets", "RedisBus"]

log = logging.getLogger("laf_py")

REPLY_TIMEOUT = 2.0  # how long a delivery waits for other nodes' counts
SOCKET_TIMEOUT = 5.0  # a command's reply slower than this means Redis is lost
# How long one read of the subscription waits before it is simply made again. Not None
# ("wait forever"): redis-py before 8.1 bounds such a read by SOCKET_TIMEOUT, so an idle node
# would take its quiet subscription for a lost Redis, and resubscribe, every 5 seconds.
LISTEN_POLL = 1.0
_FAILURES = (RedisError, OSError, asyncio.TimeoutError)


class LocalSockets(Protocol):
    """What a node does with deliveries that arrive from other nodes."""

    def write_ids(self, frame: bytes, socket_ids: list[str]) -> int: ...
    def write_everyone(self, frame: bytes, skip: set[str]) -> int: ...
    def write_user(self, frame: bytes, user_id: str) -> int: ...
    def write_users(self, frame: bytes, user_ids: list[str]) -> int: ...
    def write_room(self, frame: bytes, room: str, skip: set[str]) -> int: ...
    def join_local(self, socket_id: str, room: str) -> int: ...
    def leave_local(self, socket_id: str, room: str) -> int: ...
    def close_local(self, socket_id: str, code: int, reason: str) -> None: ...
    def local_users(self) -> list[str]: ...
    def local_memberships(self) -> list[tuple[str, str]]: ...


class _Write:
    """Redis commands that go through the outbox, in order with the publishes: a node's
    records of room memberships."""

    __slots__ = ("commands", "future")

    def __init__(self, commands: list[tuple[Any, ...]], future: asyncio.Future[int]) -> None:
        self.commands = commands  # (method name, *arguments) of the pipeline
        self.future = future

    def done(self) -> None:
        if not self.future.done():
            self.future.set_result(0)


_Outgoing = tuple[str, bytes, "_Tally | None"] | _Write


class _Tally:
    """Counts from other nodes for one delivery, resolved when all answered or time is up."""

    __slots__ = ("answered", "expected", "future", "reached", "timer")

    def __init__(self, future: asyncio.Future[int]) -> None:
        self.future = future
        self.expected: int | None = None  # known once PUBLISH says how many nodes heard it
        self.answered = 0
        self.reached = 0
        self.timer: asyncio.TimerHandle | None = None

    def reached_all(self) -> bool:
        return self.expected is not None and self.answered >= self.expected

    def expect(self, replies: int) -> None:
        self.expected = replies
        if self.reached_all():
            self.settle()

    def settle(self) -> None:
        if not self.future.done():
            self.future.set_result(self.reached)
        if self.timer is not None:
            self.timer.cancel()


class RedisBus:
    def __init__(
        self,
        url: str,
        node_id: str,
        prefix: str,
        heartbeat: float,
        on_presence: Callable[[str, bool], None],
    ) -> None:
        self.node_id = node_id
        self._url = url
        self._prefix = prefix
        self._heartbeat = heartbeat
        self._lifetime = 3 * heartbeat
        self._on_presence = on_presence  # (user, online) decided by the cluster, not by us
        self._local: LocalSockets | None = None
        self._redis = aioredis.Redis.from_url(
            url, socket_connect_timeout=2, socket_timeout=SOCKET_TIMEOUT
        )
        self._all = f"{prefix}:all"
        self._mine = f"{prefix}:node:{node_id}"
        self._nodes = f"{prefix}:nodes"
        self._rooms_of_node = f"{prefix}:nrooms:{node_id}"
        self._forget = (prefix, node_id)  # FORGET_ROOMS's arguments
        self._tallies: dict[int, _Tally] = {}
        self._ids = itertools.count(1)
        self._lost = False
        self._tasks: list[asyncio.Task[None]] = []
        self._subscribed = asyncio.Event()
        self._recovering = asyncio.Lock()
        # Every publish goes through one queue and one sender, in order, pipelined: a burst
        # of sends can neither reorder nor exhaust the connection pool.
        self._outbox: asyncio.Queue[_Outgoing] = asyncio.Queue()

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self, local: LocalSockets) -> None:
        """Reach Redis (or raise), subscribe, beat. Returns once this node can be reached."""
        self._local = local
        await self._redis.ping()
        await self._beat(first=True)
        self._tasks = [
            asyncio.create_task(self._listen(), name="laf-py redis listener"),
            asyncio.create_task(self._beat_forever(), name="laf-py redis heartbeat"),
            asyncio.create_task(self._send_forever(), name="laf-py redis sender"),
        ]
        await asyncio.wait_for(self._subscribed.wait(), 10)

    async def stop(self) -> None:
        """Leave the cluster: forget this node's users and heartbeat, then disconnect."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._outbox.join(), REPLY_TIMEOUT)  # what was sent, goes
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for tally in list(self._tallies.values()):
            tally.settle()
        while not self._outbox.empty():  # not written: nobody waits for them any longer
            item = self._outbox.get_nowait()
            if isinstance(item, _Write):
                item.done()
        with contextlib.suppress(*_FAILURES):
            users = self._local.local_users() if self._local else []
            for user in users:
                await self.user_left(user)
            await self._redis.eval(scripts.FORGET_ROOMS, 1, self._rooms_of_node, *self._forget)
            await self._redis.zrem(self._nodes, self.node_id)
        await self._redis.aclose()

    # -- delivering -------------------------------------------------------------------------

    def to_sockets(self, frame: bytes, by_node: dict[str, list[str]]) -> asyncio.Future[int]:
        futures = [
            self._publish(f"{self._prefix}:node:{node}", {"k": "ids", "ids": ids}, frame)
            for node, ids in by_node.items()
        ]
        if len(futures) == 1:
            return futures[0]
        return asyncio.ensure_future(_sum(futures))

    def to_everyone(self, frame: bytes, skip: set[str]) -> asyncio.Future[int]:
        return self._publish(self._all, {"k": "all", "skip": sorted(skip)}, frame)

    def to_user(self, frame: bytes, user_id: str) -> asyncio.Future[int]:
        # One publish to every node rather than a lookup of the user's nodes first: one round
        # trip instead of two, and nodes without the user drop it after a dict lookup.
        return self._publish(self._all, {"k": "user", "user": user_id}, frame)

    def to_users(self, frame: bytes, user_ids: list[str]) -> asyncio.Future[int]:
        return self._publish(self._all, {"k": "users", "users": user_ids}, frame)

    def to_room(self, frame: bytes, room: str, skip: set[str]) -> asyncio.Future[int]:
        # One publish to every node: each knows its own members, no lookup in Redis first.
        return self._publish(self._all, {"k": "room", "room": room, "skip": sorted(skip)}, frame)

    def membership(self, socket_id: str, room: str, joining: bool) -> asyncio.Future[int]:
        """Join (or leave) a socket of another node: that node does it and records it, then
        answers 1 (0 when it has no such open socket, or nobody answers)."""
        header = {"k": "join" if joining else "leave", "id": socket_id, "room": room}
        return self._publish(f"{self._prefix}:node:{socket_id[: len(self.node_id)]}", header, b"")

    def record_rooms(self, socket_id: str, rooms: list[str], joined: bool) -> asyncio.Future[int]:
        entries = [f"{socket_id} {room}" for room in rooms]
        if joined:  # the node's record first: a node that dies in between is still reaped
            commands = [("sadd", self._rooms_of_node, *entries)]
            commands += [("sadd", f"{self._prefix}:room:{room}", socket_id) for room in rooms]
        else:
            commands = [("srem", f"{self._prefix}:room:{room}", socket_id) for room in rooms]
            commands.append(("srem", self._rooms_of_node, *entries))
        return self._write(commands)

    async def room_members(self, room: str) -> list[str]:
        keys = [self._nodes, f"{self._prefix}:room:{room}"]
        args = [self._lifetime, len(self.node_id)]
        try:
            members = await self._redis.eval(scripts.ROOM_MEMBERS, 2, *keys, *args)
        except _FAILURES as exc:
            self._lose(exc)
            return []
        return [m.decode() if isinstance(m, bytes) else str(m) for m in members]

    def _write(self, commands: list[tuple[Any, ...]]) -> asyncio.Future[int]:
        write = _Write(commands, asyncio.get_running_loop().create_future())
        self._outbox.put_nowait(write)
        return write.future

    def close_socket(self, socket_id: str, code: int, reason: str) -> None:
        header = {"op": "close", "id": socket_id, "code": code, "reason": reason}
        channel = f"{self._prefix}:node:{socket_id[: len(self.node_id)]}"
        self._outbox.put_nowait((channel, wire.encode(header), None))

    def _publish(self, channel: str, header: dict[str, Any], frame: bytes) -> asyncio.Future[int]:
        loop = asyncio.get_running_loop()
        tally = _Tally(loop.create_future())
        corr = next(self._ids)
        self._tallies[corr] = tally
        tally.future.add_done_callback(lambda _: self._tallies.pop(corr, None))
        tally.timer = loop.call_later(REPLY_TIMEOUT, tally.settle)
        header = {**header, "op": "deliver", "from": self.node_id, "corr": corr}
        self._outbox.put_nowait((channel, wire.encode(header, frame), tally))
        return tally.future

    async def _send_forever(self) -> None:
        while True:
            batch = [await self._outbox.get()]
            while not self._outbox.empty():
                batch.append(self._outbox.get_nowait())
            try:
                pipe = self._redis.pipeline(transaction=False)
                for item in batch:
                    if isinstance(item, _Write):
                        for name, *arguments in item.commands:
                            getattr(pipe, name)(*arguments)
                    else:
                        pipe.publish(item[0], item[1])
                replies: list[Any] | None = await pipe.execute()
            except _FAILURES as exc:
                self._lose(exc)  # memberships not written are written again on recovery
                replies = None
            index = 0
            for item in batch:
                if isinstance(item, _Write):
                    index += len(item.commands)
                    item.done()
                else:
                    channel, _, tally = item
                    listeners = 0 if replies is None else int(replies[index])
                    index += 1
                    if tally is not None:
                        tally.expect(self._expected_replies(channel, listeners))
                self._outbox.task_done()

    def _expected_replies(self, channel: str, listeners: int) -> int:
        """How many nodes will report a count: those PUBLISH says heard it, but ourselves.
        (Another subscriber to the cluster's channels, a redis-cli watching say, is counted
        too and never answers: awaited counts then take REPLY_TIMEOUT.)"""
        if channel == self._all:
            return max(0, listeners - 1)
        return min(listeners, 1)

    # -- presence ---------------------------------------------------------------------------

    async def user_joined(self, user_id: str) -> bool:
        """Record that this node holds ``user_id``; True if no node held them before."""
        return await self._presence_change(scripts.JOIN, user_id)

    async def user_left(self, user_id: str) -> bool:
        """Record that this node no longer holds ``user_id``; True if no node holds them now."""
        return await self._presence_change(scripts.LEAVE, user_id)

    async def _presence_change(self, script: str, user_id: str) -> bool:
        keys = [f"{self._prefix}:unodes:{user_id}", f"{self._prefix}:nusers:{self.node_id}"]
        try:
            return bool(await self._redis.eval(script, 2, *keys, self.node_id, user_id))
        except _FAILURES as exc:
            self._lose(exc)
            return True  # cannot tell: report what this node saw

    async def is_online(self, user_id: str) -> bool:
        keys = [self._nodes, f"{self._prefix}:unodes:{user_id}"]
        try:
            return bool(await self._redis.eval(scripts.IS_ONLINE, 2, *keys, self._lifetime))
        except _FAILURES as exc:
            self._lose(exc)
            return False

    async def online_users(self) -> list[str]:
        try:
            users = await self._redis.eval(
                scripts.ONLINE_USERS, 1, self._nodes, self._prefix, self._lifetime
            )
        except _FAILURES as exc:
            self._lose(exc)
            return []
        return [u.decode() if isinstance(u, bytes) else str(u) for u in users]

    # -- background -------------------------------------------------------------------------

    async def _listen(self) -> None:
        delay = 0.1
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._all, self._mine)
                self._subscribed.set()
                if self._lost:
                    await self._recover()
                delay = 0.1
                while True:
                    message = await pubsub.get_message(timeout=LISTEN_POLL)
                    if message is not None:
                        self._receive_safely(message["data"])
            except _FAILURES as exc:
                self._lose(exc)
            finally:
                with contextlib.suppress(*_FAILURES):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat)
            if self._lost:
                await self._recover()  # whichever of the connections failed, retry here too
            else:
                await self._beat()

    async def _beat(self, first: bool = False) -> None:
        """Say this node is alive, and reap nodes that stopped saying so."""
        try:
            unknown = await self._redis.eval(scripts.BEAT, 1, self._nodes, self.node_id)
            offline, _alive = await self._redis.eval(
                scripts.REAP, 1, self._nodes, self._prefix, self._lifetime
            )
        except _FAILURES as exc:
            self._lose(exc)
            return
        for user in offline:
            self._on_presence(user.decode() if isinstance(user, bytes) else str(user), False)
        if unknown and not first:
            # Others took this node for dead (it was paused, or Redis lost its data) and
            # announced its users offline: claim them again.
            log.warning("this node was missing from the cluster; claiming its users again")
            await self._reconcile()

    async def _recover(self) -> None:
        """After a failure: fresh connections, then make Redis agree with this node. The
        listener and the heartbeat may both get here; the lock lets one of them do it."""
        async with self._recovering:
            if not self._lost:
                return
            await self._redis.connection_pool.disconnect(inuse_connections=False)  # stale
            try:
                await self._redis.ping()
            except _FAILURES:
                return  # still gone; the next beat tries again
            log.warning("reconnected to Redis at %s", self.safe_url())
            self._lost = False
            await self._beat(first=True)
            await self._reconcile()

    async def _reconcile(self) -> None:
        """Users who came or went here while Redis could not be told, told now."""
        try:
            listed = await self._redis.smembers(f"{self._prefix}:nusers:{self.node_id}")
        except _FAILURES as exc:
            self._lose(exc)
            return
        claimed = {u.decode() if isinstance(u, bytes) else str(u) for u in listed}
        local = self._local
        assert local is not None
        for user in sorted(claimed - set(local.local_users())):
            # Asked again just before writing: the user may have come back meanwhile.
            if user not in local.local_users() and await self.user_left(user):
                self._on_presence(user, False)
        for user in sorted(set(local.local_users()) - claimed):
            if user in local.local_users() and await self.user_joined(user):
                self._on_presence(user, True)
        # Rooms: forget what Redis has of this node and write what is true now, as one write
        # in the outbox (after whatever was queued before it, before whatever comes later).
        commands: list[tuple[Any, ...]] = [
            ("eval", scripts.FORGET_ROOMS, 1, self._rooms_of_node, *self._forget)
        ]
        for socket_id, room in local.local_memberships():
            commands.append(("sadd", self._rooms_of_node, f"{socket_id} {room}"))
            commands.append(("sadd", f"{self._prefix}:room:{room}", socket_id))
        self._write(commands)

    def _receive_safely(self, data: bytes) -> None:
        try:
            self._receive(data)
        except Exception:  # one bad message (a newer node, a stranger on the channel)
            log.exception("ignoring a message on the Redis bus that could not be handled")

    def _receive(self, data: bytes) -> None:
        try:
            header, frame = wire.decode(data)
        except ValueError:
            log.warning("ignoring a malformed message on the Redis bus")
            return
        local = self._local
        assert local is not None
        op = header.get("op")
        if op == "deliver":
            if header["from"] == self.node_id:
                return  # our own broadcast: local sockets were written directly
            kind = header["k"]
            if kind == "ids":
                reached = local.write_ids(frame, header["ids"])
            elif kind == "all":
                reached = local.write_everyone(frame, set(header["skip"]))
            elif kind == "user":
                reached = local.write_user(frame, header["user"])
            elif kind == "room":
                reached = local.write_room(frame, header["room"], set(header["skip"]))
            elif kind == "users":
                reached = local.write_users(frame, header["users"])
            elif kind == "join":  # its record in Redis is queued before this reply
                reached = local.join_local(header["id"], header["room"])
            elif kind == "leave":
                reached = local.leave_local(header["id"], header["room"])
            else:
                log.warning("ignoring a delivery of unknown kind %r on the Redis bus", kind)
                return
            reply = {"op": "count", "corr": header["corr"], "n": reached}
            channel = f"{self._prefix}:node:{header['from']}"
            self._outbox.put_nowait((channel, wire.encode(reply), None))
        elif op == "count":
            tally = self._tallies.get(header["corr"])
            if tally is not None:
                tally.reached += header["n"]
                tally.answered += 1
                if tally.reached_all():
                    tally.settle()
        elif op == "close":
            local.close_local(header["id"], header["code"], header["reason"])

    def _lose(self, exc: BaseException) -> None:
        if not self._lost:
            self._lost = True
            log.warning(
                "lost Redis at %s (%s); local sockets are still served, other nodes' sockets "
                "miss what is sent until it is back; retrying",
                self.safe_url(),
                exc,
            )

    def safe_url(self) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(self._url)
        return f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}"


async def _sum(futures: list[asyncio.Future[int]]) -> int:
    return sum(await asyncio.gather(*futures))
