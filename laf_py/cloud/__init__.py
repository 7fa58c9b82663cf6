"""The ``cloud`` object every function shares: ``from laf_py import cloud``."""

from __future__ import annotations

from .delivery import Delivery
from .shared import SharedMap
from .sockets import Socket, SocketRegistry

__all__ = ["Cloud", "Delivery", "SharedMap", "Socket", "SocketRegistry", "cloud"]


class Cloud:
    """Facade over the running server's shared services.

    One per process, as in Laf. ``cloud.shared`` always works; the rest exists while a
    server runs and belongs to it (the runtime attaches and detaches them).
    """

    def __init__(self) -> None:
        self.shared = SharedMap()
        self._sockets: SocketRegistry | None = None

    @property
    def sockets(self) -> SocketRegistry:
        """The live WebSocket connections of this process."""
        if self._sockets is None:
            raise RuntimeError("cloud.sockets exists only while a laf-py server is running")
        return self._sockets

    def attach(self, sockets: SocketRegistry) -> None:
        """Called by the runtime when it starts: fresh shared map, its socket registry."""
        self.shared = SharedMap()
        self._sockets = sockets

    def detach(self) -> None:
        self._sockets = None


cloud = Cloud()
