"""``laf-py serve --server uvicorn``: laf-py's ASGI app under uvicorn, in laf-py's own process
model (its signals, shutdown order, ``--workers`` sockets and banner)."""

from __future__ import annotations

import asyncio
import logging
import socket

import uvicorn

from ..config import Settings
from ..server import accept
from ..server.banner import banner
from ..server.runner import bind, loop_name
from .app import LafApp
from .bridge import ResponseAborted

__all__ = ["UvicornServer"]

log = logging.getLogger("laf_py")


def uvicorn_config(app: LafApp, settings: Settings) -> uvicorn.Config:
    """uvicorn's settings from laf-py's: what the ASGI server enforces itself."""
    trusted = settings.trust_proxy_headers
    return uvicorn.Config(
        app,
        lifespan="off",  # the server starts and stops the app itself, in laf-py's order
        log_config=None,  # laf-py's logging, as configured by the CLI
        access_log=False,  # the app writes laf-py's access lines (tokens hidden)
        server_header=False,
        proxy_headers=trusted,
        forwarded_allow_ips="*" if trusted else None,
        ws_max_size=settings.max_message_size,
        ws_ping_interval=settings.ping_interval,
        ws_ping_timeout=settings.ping_timeout,
        timeout_keep_alive=max(1, round(settings.header_timeout)),
        limit_concurrency=settings.max_http_connections + settings.max_connections,
        h11_max_incomplete_event_size=settings.max_header_size,
        timeout_graceful_shutdown=max(1, round(settings.shutdown_grace)),
    )


class _QuietAborts(logging.Filter):
    """uvicorn logs an app's exception with its traceback; a stream that failed mid-way was
    logged already, with its request id, and aborting is how the app ends it (bridge.py)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], ResponseAborted))


_QUIET_ABORTS = _QuietAborts()


def quiet_uvicorn() -> None:
    """uvicorn's own lines that laf-py's already say: a line per WebSocket opened and closed
    (laf-py writes the access line), and the abort of a failed stream."""
    errors = logging.getLogger("uvicorn.error")
    errors.addFilter(_QUIET_ABORTS)
    if errors.level < logging.WARNING and not errors.isEnabledFor(logging.DEBUG):
        errors.setLevel(logging.WARNING)


class UvicornServer:
    """The same interface as :class:`laf_py.server.Server`: ``start``, ``stop``, ``url``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = LafApp(settings)
        self.runtime = self.app.runtime
        self.activity = self.app.activity
        self._listeners: list[socket.socket] = []
        self._uvicorn: uvicorn.Server | None = None
        self._ticking: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        return int(self._listeners[0].getsockname()[1])

    @property
    def url(self) -> str:
        host = self.settings.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    async def start(
        self, listeners: list[socket.socket] | None = None, announce: bool | None = None
    ) -> None:
        self._listeners = listeners or bind(self.settings)
        try:
            await self.app.startup()
        except BaseException:
            for listener in self._listeners:
                listener.close()
            raise
        quiet_uvicorn()
        config = uvicorn_config(self.app, self.settings)
        config.load()
        server = self._uvicorn = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=self._listeners)
        # uvicorn's ticks refresh its Date header once a second.
        self._ticking = asyncio.ensure_future(server.main_loop())
        if announce if announce is not None else listeners is None:
            loop = f"{loop_name()}, uvicorn"
            lines = banner(self.settings, self.url, self.runtime.registry.functions(), loop)
            log.info("%s", "\n".join(lines if listeners is None else lines[1:]))
            accept.log_open_file_limit()

    async def stop(self) -> None:
        """As laf-py's own server: stop accepting, close every socket with 1001, let calls in
        flight finish, then stop uvicorn and the runtime."""
        server = self._uvicorn
        if server is not None:
            for listening in server.servers:
                listening.close()
        await self.app.shutdown()
        if server is not None:
            server.should_exit = True
            if self._ticking is not None:
                await self._ticking
            await server.shutdown()
        log.info("laf-py stopped")
