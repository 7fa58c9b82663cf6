"""How deliveries reach sockets on other processes and machines.

Without Redis there is no bus: every socket is local and ``cloud.sockets`` needs nothing else.
With ``--redis-url``, :class:`~laf_py.bus.redis.RedisBus` joins the nodes (imported only then).
"""

from __future__ import annotations

import asyncio
from typing import Protocol

__all__ = ["Bus"]


class Bus(Protocol):
    """What the socket registry asks of the cluster. Futures resolve to the count of remote
    connections reached; they never raise."""

    node_id: str

    def to_sockets(self, frame: bytes, by_node: dict[str, list[str]]) -> asyncio.Future[int]: ...
    def to_everyone(self, frame: bytes, skip: set[str]) -> asyncio.Future[int]: ...
    def to_user(self, frame: bytes, user_id: str) -> asyncio.Future[int]: ...
    def close_socket(self, socket_id: str, code: int, reason: str) -> None: ...
    async def user_joined(self, user_id: str) -> bool: ...
    async def user_left(self, user_id: str) -> bool: ...
    async def is_online(self, user_id: str) -> bool: ...
    async def online_users(self) -> list[str]: ...
