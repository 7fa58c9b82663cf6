"""Socket and cloud.sockets: the live WebSocket connections of this process.

Every delivery encodes its message once, writes the frame to each connection at once and
returns a Delivery; awaiting it is optional. Calls from plain-``def`` functions (worker threads)
are carried to the event loop thread, where all socket state lives.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from ..core.frame_parser import is_valid_close_code
from ..core.frames import encode_frame
from .delivery import Delivery, LoopBridge
from .pending import Pending, start

if TYPE_CHECKING:
    from ..bus import Bus

__all__ = ["SOCKET_ID_LENGTH", "RemoteSocket", "Socket", "SocketRegistry", "Transport"]

SOCKET_ID_LENGTH = 24  # 8 hex characters of node id, then 16 random ones


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
        "_state",
        "_transport",
        "_user_id",
        "id",
    )

    def __init__(self, socket_id: str, transport: Transport, registry: SocketRegistry) -> None:
        self.id = socket_id
        self._state: dict[str, Any] | None = None
        self._transport = transport
        self._registry = registry
        self._user_id: str | None = None
        self._closed = False
        self._present = False  # accepted, and its close event has not finished: counts online

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

    def send(self, data: Any) -> Delivery:
        """Send one message now: str → text frame, bytes → binary, anything else → JSON text
        (dict, list, numbers, datetime, UUID, Decimal, dataclasses ...).

        ``await`` the result to wait for the write; it gives 1, or 0 if the socket is closed.
        """
        return self._registry.bridge.deliver(self._send_frame, encode_frame(data))

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
    """``cloud.sockets``: find connections by id or user and deliver to them."""

    def __init__(
        self,
        bridge: LoopBridge,
        on_presence: Callable[[str, bool], None] | None = None,
        node_id: str | None = None,
    ) -> None:
        self.bridge = bridge
        self.node_id = node_id or os.urandom(4).hex()  # every socket id starts with it
        self.bus: Bus | None = None  # set when Redis joins this node to others
        self._on_presence = on_presence  # (user_id, online) when a user comes or goes
        self._sockets: dict[str, Socket] = {}
        self._by_user: dict[str, set[Socket]] = {}  # open sockets, for deliveries
        # Sockets that keep their user online: accepted, and their close event has not
        # finished. A user goes offline only after the close event of their last socket.
        self._present: dict[str, set[Socket]] = {}

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
        return self.bridge.deliver(self._publish_frame, encode_frame(message), list(socket_ids))

    def broadcast(self, message: Any, exclude: Iterable[str | Socket] = ()) -> Delivery:
        """Send ``message`` to every connection but the excluded ones (ids or sockets)."""
        skip = {s.id if isinstance(s, Socket) else s for s in exclude}
        return self.bridge.deliver(self._broadcast_frame, encode_frame(message), skip)

    def send_to_user(self, user_id: str, message: Any) -> Delivery:
        """Send ``message`` to every connection of one user (all their devices)."""
        return self.bridge.deliver(self._user_frame, encode_frame(message), str(user_id))

    # -- users and presence ----------------------------------------------------------------

    def bind_user(self, socket: Socket, user_id: str | None) -> None:
        """Bind a connection to a user (None unbinds it)."""
        user_id = None if user_id is None else str(user_id)
        previous = socket._user_id
        if previous != user_id:
            socket._user_id = user_id  # visible at once, from any thread
            self.bridge.call(self._reindex, socket, previous, user_id)

    def is_online(self, user_id: str) -> Pending[bool]:
        """``await`` it: True while the user has at least one accepted connection."""
        return start(self.bridge, self._is_online(str(user_id)))

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


def _remove(index: dict[str, set[Socket]], user_id: str, socket: Socket) -> bool:
    """Take ``socket`` out of ``index[user_id]``; True if that left the user with none."""
    devices = index.get(user_id)
    if devices is None or socket not in devices:
        return False
    devices.discard(socket)
    if devices:
        return False
    del index[user_id]
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

    def send(self, data: Any) -> Delivery:
        return self._registry.publish(data, [self.id])

    def close(self, code: int = 1000, reason: str = "") -> None:
        _check_close_code(code)
        bus = self._registry.bus
        if bus is not None:
            self._registry.bridge.call(bus.close_socket, self.id, code, reason)

    def __repr__(self) -> str:
        return f"<RemoteSocket {self.id}>"
