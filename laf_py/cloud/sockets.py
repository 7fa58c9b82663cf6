"""Socket and cloud.sockets: the live WebSocket connections of this process.

Every delivery encodes its message once, writes the frame to each connection at once and
returns a Delivery; awaiting it is optional. Calls from plain-``def`` functions (worker threads)
are carried to the event loop thread, where all socket state lives.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any, Protocol

from ..core.frames import encode_frame
from .delivery import Delivery, LoopBridge
from .pending import Pending, start

__all__ = ["Socket", "SocketRegistry", "Transport"]


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

    __slots__ = ("__weakref__", "_closed", "_registry", "_transport", "_user_id", "id", "state")

    def __init__(self, socket_id: str, transport: Transport, registry: SocketRegistry) -> None:
        self.id = socket_id
        self.state: dict[str, Any] = {}
        self._transport = transport
        self._registry = registry
        self._user_id: str | None = None
        self._closed = False

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

    def send(self, data: str | bytes | dict[str, Any] | list[Any]) -> Delivery:
        """Send one message now: str → text frame, bytes → binary, dict/list → JSON text.

        ``await`` the result to wait for the write; it gives 1, or 0 if the socket is closed.
        """
        return self._registry.bridge.deliver(self._send_frame, encode_frame(data))

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake; the ``close`` event follows."""
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
        self, bridge: LoopBridge, on_presence: Callable[[str, bool], None] | None = None
    ) -> None:
        self.bridge = bridge
        self._on_presence = on_presence  # (user_id, online) when a user comes or goes
        self._sockets: dict[str, Socket] = {}
        self._by_user: dict[str, set[Socket]] = {}

    # -- finding ---------------------------------------------------------------------------

    def get(self, socket_id: str) -> Socket | None:
        return self._sockets.get(socket_id)

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
        return user_id in self._by_user

    async def _online_users(self) -> list[str]:
        return list(self._by_user)

    # -- used by the server, on the loop thread --------------------------------------------

    def open(self, transport: Transport, user_id: str | None = None) -> Socket:
        """A new connection, not yet findable: its ``connection`` event decides."""
        socket = Socket(os.urandom(12).hex(), transport, self)
        socket._user_id = user_id
        return socket

    def accept(self, socket: Socket) -> None:
        """The connection was accepted: findable by id and user from now on."""
        if not socket._closed:
            self._sockets[socket.id] = socket
            self._reindex(socket, None, socket._user_id)

    def discard(self, socket: Socket) -> None:
        """Forget a connection that has closed; later sends to it report 0."""
        socket._closed = True
        self._sockets.pop(socket.id, None)
        self._reindex(socket, socket._user_id, None)

    # -- internals -------------------------------------------------------------------------

    def _publish_frame(self, frame: bytes, socket_ids: list[str]) -> Delivery:
        found = (self._sockets.get(socket_id) for socket_id in socket_ids)
        return _write_all(frame, [socket for socket in found if socket is not None])

    def _broadcast_frame(self, frame: bytes, skip: set[str]) -> Delivery:
        sockets = self._sockets.values()
        if skip:
            return _write_all(frame, [s for s in sockets if s.id not in skip])
        return _write_all(frame, list(sockets))

    def _user_frame(self, frame: bytes, user_id: str) -> Delivery:
        return _write_all(frame, list(self._by_user.get(user_id, ())))

    def _reindex(self, socket: Socket, previous: str | None, user_id: str | None) -> None:
        """Move a socket between users' sets (on the loop thread, in call order)."""
        if previous is not None:
            devices = self._by_user.get(previous)
            if devices is not None and socket in devices:
                devices.discard(socket)
                if not devices:
                    del self._by_user[previous]
                    self._presence(previous, False)
        if user_id is not None and socket._user_id == user_id and socket.id in self._sockets:
            devices = self._by_user.get(user_id)
            if devices is None:
                devices = self._by_user[user_id] = set()
                self._presence(user_id, True)
            devices.add(socket)

    def _presence(self, user_id: str, online: bool) -> None:
        if self._on_presence is not None:
            self._on_presence(user_id, online)


def _write_all(frame: bytes, sockets: list[Socket]) -> Delivery:
    """Hand one encoded frame to each socket; the count is of those that took it."""
    reached = 0
    for socket in sockets:
        if socket._transport.write_frame(frame) is not None:
            reached += 1
    return Delivery(reached)
