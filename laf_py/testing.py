"""Run a real laf-py server inside your tests::

    async with LafTestServer("functions") as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            response = await client.get("/fn/hello")
        async with websockets.connect(server.ws_url) as ws:
            ...

The server listens on a free port of 127.0.0.1 and uses the event loop of the test.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any

from .config import Settings
from .server import Server

__all__ = ["LafTestServer"]


class LafTestServer:
    """A started :class:`~laf_py.server.Server` on an ephemeral port, stopped on exit."""

    def __init__(self, functions_dir: str | Path, **settings: Any) -> None:
        settings.setdefault("host", "127.0.0.1")
        settings.setdefault("port", 0)
        settings.setdefault("shutdown_grace", 5.0)
        self.server = Server(Settings(functions_dir=Path(functions_dir), **settings))

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def ws_url(self) -> str:
        return self.server.url.replace("http", "ws", 1) + "/__websocket__"

    def fn_url(self, name: str) -> str:
        return f"{self.server.url}/fn/{name}"

    async def __aenter__(self) -> LafTestServer:
        await self.server.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.server.stop()
