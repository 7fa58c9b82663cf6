"""Socket and cloud.sockets: the live WebSocket connections of this process.

Every delivery encodes its message once, writes the frame to each connection at once and
returns a Delivery; awaiting it is optional. Calls from plain-``def`` functions (worker threads)
are carried to the event loop thread, where all socket state lives.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from ..core.frame_parser import is_valid_close_code
from ..core.frames import encode_frame, frame_size, payload_size
from .delivery import Delivery, LoopBridge
from .pending import Pending, start
from .tokens import check_user_id

if TYPE_CHECKING:
    from ..bus import Bus

__all__ = [
    "SOCKET_ID_LENGTH",
    "RemoteSocket",
    "Socket",
    "SocketRegistry",
    "Transport",
    "check_room",
]

SOCKET_ID_LENGTH = 24  # 8 hex characters of node id, then 16 random ones
_NO_ROOMS: frozenset[str] = frozenset()  # shared by every socket in no room


def check_room(room: object) -> str:
    """Room names are non-empty strings: anything else is a TypeError, ``""`` a ValueError."""
    return check_user_id(room, "a room name")


class Transport(Protocol):
    """What the server layer provides for each connection."""

    def write_frame(self, frame: bytes) -> Awaitable[Any] | None:
        """Queue an encoded frame; None when the connection is closed or closing."""

    def close(self, code: int, reason: str) -> None: ...


class Socket:
    """One WebSocket connection, as ``ctx.socket`` and in ``cloud.sockets``.

    Keep it anywhere (``cloud.shared`` included): after the connection closes, ``send``
    does nothing and reports 0.
    """

    __slots__ = (
        "__weakref__",
        "_closed",
        "_present",
        "_registry",
        "_rooms",
        "_state",
        "_transport",
        "_user_id",
        "connected_at",
        "id",
        "messages_in",
        "messages_out",
        "remote_address",
    )

    def __init__(self, socket_id: str, transport: Transport, registry: SocketRegistry) -> None:
        self.id = socket_id
        # For the console (kept by the server whether or not --metrics is on): when the
        # connection opened (time.time()), from where, and the data messages each way.
        self.connected_at = time.time()
        self.remote_address: str | None = None
        self.messages_in = 0
        self.messages_out = 0
        self._state: dict[str, Any] | None = None
        self._transport = transport
        self._registry = registry
        self._user_id: str | None = None
        self._closed = False
        self._present = False  # accepted, and its close event has not finished: counts online
        # The rooms it is in: replaced, never changed in place, so any thread may read it.
        self._rooms = _NO_ROOMS

    @property
    def state(self) -> dict[str, Any]:
        """A dict for your functions' own data about this connection."""
        if self._state is None:
            self._state = {}  # made on first use: most connections never need one
        return self._state

    @state.setter
    def state(self, state: dict[str, Any]) -> None:
        self._state = state

    @property
    def user_id(self) -> str | None:
        """The user this connection belongs to, for ``send_to_user`` and presence."""
        return self._user_id

    @user_id.setter
    def user_id(self, user_id: str | None) -> None:
        self._registry.bind_user(self, user_id)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def rooms(self) -> frozenset[str]:
        """The rooms this connection is in (``cloud.sockets.join``); empty once it closed."""
        return self._rooms

    def send(self, data: Any) -> Delivery:
        """Send one message now: str → text frame, bytes → binary, anything else → JSON text
        (dict, list, numbers, datetime, UUID, Decimal, dataclasses ...).

        ``await`` the result to wait for the write; it gives 1, or 0 if the socket is closed.
        A message over the outbound limit raises ValueError here, and nothing is sent.
        """
        frame = encode_frame(data)
        registry = self._registry
        if len(frame) > registry.max_frame:
            raise registry.too_big(frame)
        return registry.bridge.deliver(self._send_frame, frame)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake; the ``close`` event follows. ``code`` is 1000, a
        code of RFC 6455 a server may send (1001-1003, 1007-1014) or your own (3000-4999)."""
        _check_close_code(code)
        self._registry.bridge.call(self._close_now, code, reason)

    def _send_frame(self, frame: bytes) -> Delivery:
        if self._closed:
            return Delivery(0)
        flushed = self._transport.write_frame(frame)
        if flushed is None:
            return Delivery(0)
        return Delivery(1, flushed=flushed)

    def _close_now(self, code: int, reason: str) -> None:
        if not self._closed:
            self._transport.close(code, reason)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Socket {self.id} user={self._user_id!r} {state}>"


class SocketRegistry:
    """``cloud.sockets``: find connections by id or user, group them in rooms, deliver to them.

    Rooms live in two plain indexes on the loop thread, ``room -> {Socket}`` here and each
    socket's ``_rooms``, so a send to a room is the same loop as a broadcast. With Redis, each
    node delivers to its own members (one publish reaches all nodes) and records its
    memberships in Redis for ``room_members``.

    ``max_message`` is the largest payload one delivery may carry (the server's
    ``Settings.max_outbound_message``); a larger one raises ValueError at the call.
    """

    def __init__(
        self,
        bridge: LoopBridge,
        on_presence: Callable[[str, bool], None] | None = None,
        node_id: str | None = None,
        max_message: int | None = None,
    ) -> None:
        self.bridge = bridge
        self.max_message = max_message
        # The same limit on the encoded frame, which is what a send has in hand: a payload is
        # over max_message exactly when its frame is over this (headers grow with length).
        self.max_frame = sys.maxsize if max_message is None else frame_size(max_message)
        self.node_id = node_id or os.urandom(4).hex()  # every socket id starts with it
        self.bus: Bus | None = None  # set when Redis joins this node to others
        self._on_presence = on_presence  # (user_id, online) when a user comes or goes
        self._sockets: dict[str, Socket] = {}
        self._by_user: dict[str, set[Socket]] = {}  # open sockets, for deliveries
        # Sockets that keep their user online: accepted, and their close event has not
        # finished. A user goes offline only after the close event of their last socket.
        self._present: dict[str, set[Socket]] = {}
        self._rooms: dict[str, set[Socket]] = {}  # room -> its members on this node

    # -- finding ---------------------------------------------------------------------------

    def get(self, socket_id: str) -> Socket | RemoteSocket | None:
        """The connection with this id: a Socket here, a RemoteSocket on another node."""
        socket = self._sockets.get(socket_id)
        if socket is None and self.bus is not None and self._is_remote_id(socket_id):
            return RemoteSocket(socket_id, self)
        return socket

    def __len__(self) -> int:
        return len(self._sockets)

    def __iter__(self) -> Iterator[Socket]:
        return iter(list(self._sockets.values()))

    def __contains__(self, socket: object) -> bool:
        socket_id = socket.id if isinstance(socket, Socket) else socket
        return socket_id in self._sockets

    # -- delivering ------------------------------------------------------------------------

    def publish(self, message: Any, socket_ids: Iterable[str]) -> Delivery:
        """Send ``message`` to each listed connection id; unknown ids are skipped."""
        frame = encode_frame(message)
        if len(frame) > self.max_frame:
            raise self.too_big(frame)
        return self.bridge.deliver(self._publish_frame, frame, list(socket_ids))

    def broadcast(self, message: Any, exclude: Iterable[str | Socket] = ()) -> Delivery:
        """Send ``message`` to every connection but the excluded ones (ids or sockets)."""
        frame = encode_frame(message)
        if len(frame) > self.max_frame:
            raise self.too_big(frame)
        skip = {s.id if isinstance(s, Socket) else s for s in exclude}
        return self.bridge.deliver(self._broadcast_frame, frame, skip)

    def send_to_user(self, user_id: str, message: Any) -> Delivery:
        """Send ``message`` to every connection of one user (all their devices). User ids
        are non-empty strings (TypeError, ValueError), as ``bind_user`` has them."""
        check_user_id(user_id)
        frame = encode_frame(message)
        if len(frame) > self.max_frame:
            raise self.too_big(frame)
        return self.bridge.deliver(self._user_frame, frame, user_id)

    def send_to_users(self, user_ids: Iterable[str], message: Any) -> Delivery:
        """Send ``message`` to every connection of each listed user, each connection once
        (a user listed twice is sent to once); with Redis, one publish for all of them."""
        if isinstance(user_ids, str):
            raise TypeError("send_to_users takes a list of user ids, not one string")
        users = list(dict.fromkeys(check_user_id(user_id) for user_id in user_ids))
        frame = encode_frame(message)
        if len(frame) > self.max_frame:
            raise self.too_big(frame)
        return self.bridge.deliver(self._users_frame, frame, users)

    # -- rooms -----------------------------------------------------------------------------

    def join(self, socket: Socket | RemoteSocket | str, room: str) -> Delivery:
        """Put a connection (a Socket, or an id: on this node or, with Redis, another) in
        ``room``. Acts when called; ``await`` it for 1 once the connection is in the room
        (and, with Redis, ``room_members`` says so everywhere), 0 if there is no such open
        connection. Joining a room twice is the same as once."""
        return self._change_membership(socket, check_room(room), True)

    def leave(self, socket: Socket | RemoteSocket | str, room: str) -> Delivery:
        """Take a connection out of ``room``; as :meth:`join`, 1 when the connection is open
        (and now out of the room), 0 when there is none. Leaving a room it is not in is
        harmless. A connection that closes leaves all its rooms by itself."""
        return self._change_membership(socket, check_room(room), False)

    def send_to_room(
        self, room: str, message: Any, exclude: Iterable[str | Socket | RemoteSocket] = ()
    ) -> Delivery:
        """Send ``message`` to every connection in ``room`` but the excluded ones (ids or
        sockets); with Redis, one publish reaches the members on every node."""
        check_room(room)
        frame = encode_frame(message)
        if len(frame) > self.max_frame:
            raise self.too_big(frame)
        skip = {s if isinstance(s, str) else s.id for s in exclude}
        return self.bridge.deliver(self._room_frame, frame, room, skip)

    def room_members(self, room: str) -> Pending[list[str]]:
        """``await`` it: the ids of the connections in ``room``, on every node, sorted."""
        return start(self.bridge, self._room_members(check_room(room)))

    def too_big(self, frame: bytes) -> ValueError:
        """The error for a message over ``max_message`` (every delivery call and socket.send
        raise it at the call, sending nothing): its size, the limit, what to set."""
        return ValueError(
            f"WebSocket message of {payload_size(frame)} bytes is over the {self.max_message}-"
            "byte limit for one message to clients (8 x --max-send-buffer / "
            "LAF_MAX_SEND_BUFFER): send it in parts, or raise --max-send-buffer"
        )

    # -- users and presence ----------------------------------------------------------------

    def bind_user(self, socket: Socket, user_id: str | None) -> None:
        """Bind a connection to a user (None unbinds it). User ids are non-empty strings:
        anything else raises TypeError (``""``: ValueError), as a token's would be refused."""
        if user_id is not None:
            check_user_id(user_id)
        previous = socket._user_id
        if previous != user_id:
            socket._user_id = user_id  # visible at once, from any thread
            self.bridge.call(self._reindex, socket, previous, user_id)

    def is_online(self, user_id: str) -> Pending[bool]:
        """``await`` it: True while the user has at least one accepted connection. User ids
        are non-empty strings (TypeError, ValueError)."""
        return start(self.bridge, self._is_online(check_user_id(user_id)))

    def online_users(self) -> Pending[list[str]]:
        """``await`` it: the ids of every user with a connection."""
        return start(self.bridge, self._online_users())

    async def _is_online(self, user_id: str) -> bool:
        if user_id in self._present:
            return True
        return self.bus is not None and await self.bus.is_online(user_id)

    async def _online_users(self) -> list[str]:
        if self.bus is None:
            return list(self._present)
        return sorted(set(self._present).union(await self.bus.online_users()))

    # -- used by the server, on the loop thread --------------------------------------------

    def open(self, transport: Transport, user_id: str | None = None) -> Socket:
        """A new connection, not yet findable: its ``connection`` event decides."""
        socket = Socket(self.node_id + os.urandom(8).hex(), transport, self)
        socket._user_id = user_id
        return socket

    def accept(self, socket: Socket) -> None:
        """The connection was accepted: findable by id and user from now on, and its user
        is online."""
        if not socket._closed:
            self._sockets[socket.id] = socket
            socket._present = True
            self._reindex(socket, None, socket._user_id)

    def discard(self, socket: Socket) -> None:
        """The connection has closed: it is no longer found and later sends to it report 0.
        Its user stays online until :meth:`release`."""
        socket._closed = True
        if self._sockets.pop(socket.id, None) is not None and socket._user_id is not None:
            _remove(self._by_user, socket._user_id, socket)
        rooms = socket._rooms
        if rooms:  # a closed connection leaves its rooms
            socket._rooms = _NO_ROOMS
            for room in rooms:
                _remove(self._rooms, room, socket)
            if self.bus is not None:
                self.bus.record_rooms(socket.id, sorted(rooms), False)

    def release(self, socket: Socket) -> None:
        """The connection's close event has finished: if it was its user's last, the user
        goes offline now (so ``Presence:offline`` follows whatever that event sent)."""
        if socket._present:
            socket._present = False
            user_id = socket._user_id
            if user_id is not None and _remove(self._present, user_id, socket):
                self._presence(user_id, False)

    # -- internals -------------------------------------------------------------------------

    def _publish_frame(self, frame: bytes, socket_ids: list[str]) -> Delivery:
        reached = self.write_ids(frame, socket_ids)
        if self.bus is None:
            return Delivery(reached)
        by_node: dict[str, list[str]] = {}
        for socket_id in socket_ids:
            if self._is_remote_id(socket_id):
                by_node.setdefault(socket_id[: len(self.node_id)], []).append(socket_id)
        if not by_node:
            return Delivery(reached)
        return Delivery(reached, remote=self.bus.to_sockets(frame, by_node))

    def _broadcast_frame(self, frame: bytes, skip: set[str]) -> Delivery:
        reached = self.write_everyone(frame, skip)
        if self.bus is None:
            return Delivery(reached)
        return Delivery(reached, remote=self.bus.to_everyone(frame, skip))

    def _user_frame(self, frame: bytes, user_id: str) -> Delivery:
        reached = self.write_user(frame, user_id)
        if self.bus is None:
            return Delivery(reached)
        return Delivery(reached, remote=self.bus.to_user(frame, user_id))

    def _users_frame(self, frame: bytes, users: list[str]) -> Delivery:
        reached = self.write_users(frame, users)
        if self.bus is None or not users:
            return Delivery(reached)
        return Delivery(reached, remote=self.bus.to_users(frame, users))

    def _room_frame(self, frame: bytes, room: str, skip: set[str]) -> Delivery:
        reached = self.write_room(frame, room, skip)
        if self.bus is None:
            return Delivery(reached)
        return Delivery(reached, remote=self.bus.to_room(frame, room, skip))

    def _change_membership(
        self, target: Socket | RemoteSocket | str, room: str, joining: bool
    ) -> Delivery:
        if isinstance(target, Socket):
            if target._registry is not self:
                raise ValueError(f"{target!r} belongs to another server")
            return self.bridge.deliver(self._membership_of, target, room, joining)
        socket_id = target.id if isinstance(target, RemoteSocket) else target
        if not isinstance(socket_id, str):
            raise TypeError(f"a socket or a socket id, not {type(target).__name__}")
        return self.bridge.deliver(self._membership_by_id, socket_id, room, joining)

    def _membership_by_id(self, socket_id: str, room: str, joining: bool) -> Delivery:
        socket = self._sockets.get(socket_id)
        if socket is not None:
            return self._membership_of(socket, room, joining)
        if self.bus is not None and self._is_remote_id(socket_id):
            return Delivery(remote=self.bus.membership(socket_id, room, joining))
        return Delivery(0)

    def _membership_of(self, socket: Socket, room: str, joining: bool) -> Delivery:
        if socket._closed:
            return Delivery(0)
        written = self._enter(socket, room) if joining else self._exit(socket, room)
        return Delivery(1, remote=written)

    def _enter(self, socket: Socket, room: str) -> asyncio.Future[int] | None:
        """Put an open socket in a room; with Redis, the future of recording it there."""
        if room in socket._rooms:
            return None
        socket._rooms = socket._rooms | {room}
        members = self._rooms.get(room)
        if members is None:
            members = self._rooms[room] = set()
        members.add(socket)
        return None if self.bus is None else self.bus.record_rooms(socket.id, [room], True)

    def _exit(self, socket: Socket, room: str) -> asyncio.Future[int] | None:
        if room not in socket._rooms:
            return None
        socket._rooms = socket._rooms - {room}
        _remove(self._rooms, room, socket)
        return None if self.bus is None else self.bus.record_rooms(socket.id, [room], False)

    async def _room_members(self, room: str) -> list[str]:
        here = {socket.id for socket in self._rooms.get(room, ())}
        if self.bus is not None:
            # Redis answers for the other nodes; this node's own members are known here, also
            # those whose record in Redis is still on its way.
            here.update(i for i in await self.bus.room_members(room) if self._is_remote_id(i))
        return sorted(here)

    def _is_remote_id(self, socket_id: str) -> bool:
        return len(socket_id) == SOCKET_ID_LENGTH and not socket_id.startswith(self.node_id)

    # -- LocalSockets: what other nodes ask of this one, on the loop thread ----------------

    def write_ids(self, frame: bytes, socket_ids: list[str]) -> int:
        found = (self._sockets.get(socket_id) for socket_id in socket_ids)
        return _write_all(frame, [socket for socket in found if socket is not None])

    def write_everyone(self, frame: bytes, skip: set[str]) -> int:
        sockets = self._sockets.values()
        if skip:
            return _write_all(frame, [s for s in sockets if s.id not in skip])
        return _write_all(frame, list(sockets))

    def write_user(self, frame: bytes, user_id: str) -> int:
        return _write_all(frame, list(self._by_user.get(user_id, ())))

    def write_users(self, frame: bytes, user_ids: list[str]) -> int:
        by_user = self._by_user
        sockets: list[Socket] = []
        for user_id in dict.fromkeys(user_ids):  # a socket has one user: no socket twice
            sockets.extend(by_user.get(user_id, ()))
        return _write_all(frame, sockets)

    def write_room(self, frame: bytes, room: str, skip: set[str]) -> int:
        members = self._rooms.get(room)
        if members is None:
            return 0
        if skip:
            return _write_all(frame, [s for s in members if s.id not in skip])
        return _write_all(frame, list(members))

    def join_local(self, socket_id: str, room: str) -> int:
        """Another node asked: put this node's socket in a room; 1 if it is open here."""
        socket = self._sockets.get(socket_id)
        if socket is None or socket._closed:
            return 0
        self._enter(socket, room)
        return 1

    def leave_local(self, socket_id: str, room: str) -> int:
        socket = self._sockets.get(socket_id)
        if socket is None or socket._closed:
            return 0
        self._exit(socket, room)
        return 1

    def local_memberships(self) -> list[tuple[str, str]]:
        """(socket id, room) for every membership of this node's sockets."""
        return [(s.id, room) for room, members in self._rooms.items() for s in members]

    def close_local(self, socket_id: str, code: int, reason: str) -> None:
        socket = self._sockets.get(socket_id)
        if socket is not None:
            socket._close_now(code, reason)

    def local_users(self) -> list[str]:
        return list(self._present)

    def _reindex(self, socket: Socket, previous: str | None, user_id: str | None) -> None:
        """Move a socket between users (on the loop thread, in call order)."""
        if previous is not None:
            _remove(self._by_user, previous, socket)
            if _remove(self._present, previous, socket):
                self._presence(previous, False)
        if user_id is None or socket._user_id != user_id:
            return  # rebound again since; that call moves it
        if socket.id in self._sockets:
            self._by_user.setdefault(user_id, set()).add(socket)
        if socket._present:
            devices = self._present.get(user_id)
            if devices is None:
                devices = self._present[user_id] = set()
                self._presence(user_id, True)
            devices.add(socket)

    def _presence(self, user_id: str, online: bool) -> None:
        if self._on_presence is not None:
            self._on_presence(user_id, online)


def _check_close_code(code: int) -> None:
    if isinstance(code, bool) or not isinstance(code, int) or not is_valid_close_code(code):
        raise ValueError(
            f"close code {code!r} may not be sent: use 1000, 1001-1003, 1007-1014 or "
            "your own 3000-4999"
        )


def _remove(index: dict[str, set[Socket]], key: str, socket: Socket) -> bool:
    """Take ``socket`` out of ``index[key]`` (a user's devices, a room's members); True if
    that left none."""
    devices = index.get(key)
    if devices is None or socket not in devices:
        return False
    devices.discard(socket)
    if devices:
        return False
    del index[key]
    return True


def _write_all(frame: bytes, sockets: list[Socket]) -> int:
    """Hand one encoded frame to each socket; the count is of those that took it."""
    reached = 0
    for socket in sockets:
        if socket._transport.write_frame(frame) is not None:
            reached += 1
    return reached


class RemoteSocket:
    """A connection on another node, found by id: it can be sent to and closed.

    Whether it still exists is known only there, so ``send`` reports 0 when it is gone.
    """

    __slots__ = ("_registry", "id")

    user_id = None
    closed = False

    def __init__(self, socket_id: str, registry: SocketRegistry) -> None:
        self.id = socket_id
        self._registry = registry

    @property
    def state(self) -> dict[str, Any]:
        raise AttributeError("socket.state lives on the node that holds the connection")

    @property
    def rooms(self) -> frozenset[str]:
        raise AttributeError(
            "socket.rooms lives on the node that holds the connection; "
            "use await cloud.sockets.room_members(room)"
        )

    def send(self, data: Any) -> Delivery:
        return self._registry.publish(data, [self.id])

    def close(self, code: int = 1000, reason: str = "") -> None:
        _check_close_code(code)
        bus = self._registry.bus
        if bus is not None:
            self._registry.bridge.call(bus.close_socket, self.id, code, reason)

    def __repr__(self) -> str:
        return f"<RemoteSocket {self.id}>"
