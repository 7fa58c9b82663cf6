"""The ``cloud`` object every function shares: ``from laf_py import cloud``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from .delivery import Delivery
from .pending import Pending
from .shared import SharedMap
from .sockets import Socket, SocketRegistry

if TYPE_CHECKING:
    from .kv import KeyValueStore
    from .queue import JobQueue
    from .sql import SQLStore
    from .tokens import Tokens

T = TypeVar("T")

__all__ = ["Cloud", "Delivery", "Pending", "SharedMap", "Socket", "SocketRegistry", "cloud"]


class Cloud:
    """Facade over the running server's shared services.

    One per process, as in Laf. ``cloud.shared`` always works; the rest exists while a
    server runs and belongs to it (the runtime attaches and detaches them).
    """

    def __init__(self) -> None:
        self.shared = SharedMap()
        self._sockets: SocketRegistry | None = None
        self._kv: KeyValueStore | None = None
        self._sql: SQLStore | None = None
        self._tokens: Tokens | None = None
        self._queue: JobQueue | None = None

    @property
    def sockets(self) -> SocketRegistry:
        """The live WebSocket connections (of every node, once Redis joins them)."""
        return _running(self._sockets, "sockets")

    @property
    def kv(self) -> KeyValueStore:
        """The persistent key-value store."""
        return _running(self._kv, "kv")

    @property
    def sql(self) -> SQLStore:
        """SQLAlchemy's async engine and sessions on the server's database."""
        return _running(self._sql, "sql")

    @property
    def queue(self) -> JobQueue:
        """Queued jobs: ``await cloud.queue.push(function_name, payload)``, ``get(job_id)``."""
        return _running(self._queue, "queue")

    def get_token(self, payload: Mapping[str, Any], expires_in: float | None = None) -> str:
        """An HS256 JWT of ``payload`` signed with the server secret."""
        return _running(self._tokens, "get_token").issue(payload, expires_in)

    def parse_token(self, token: str) -> dict[str, Any] | None:
        """The payload of a valid token of this server; None if invalid or expired."""
        return _running(self._tokens, "parse_token").verify(token)

    def attach(
        self,
        sockets: SocketRegistry,
        kv: KeyValueStore,
        sql: SQLStore,
        tokens: Tokens,
        queue: JobQueue | None = None,
    ) -> None:
        """Called by the runtime when it starts: a fresh shared map and its services."""
        self.shared = SharedMap()
        self._sockets, self._kv, self._sql, self._tokens = sockets, kv, sql, tokens
        self._queue = queue

    def detach(self) -> None:
        self._sockets = self._kv = self._sql = self._tokens = None
        self._queue = None


def _running(service: T | None, name: str) -> T:
    if service is None:
        raise RuntimeError(f"cloud.{name} exists only while a laf-py server is running")
    return service


cloud = Cloud()
