"""laf-py as an ASGI application: the same functions, sockets and ``/_/`` endpoints under
uvicorn, hypercorn or granian, alone or mounted inside a FastAPI or Starlette app."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from ..config import Settings
from ..runtime import Runtime
from ..server.activity import Activity
from ..server.app import make_app
from ..server.fast_http import FastFunctions
from ..server.keepalive import Keepalive
from ..server.runner import SHUTDOWN_REASON
from .bridge import Receive, Scope, Send, serve_http
from .functions import PlainCalls
from .logs import hide_tokens_in_server_logs
from .websocket import refuse_route, serve_websocket

__all__ = ["LafApp"]

WEBSOCKET_PATH = "/__websocket__"


def route_path(scope: Scope) -> str:
    """The raw path below where laf-py is mounted (``root_path``): ``/laf/fn/hello`` under
    ``app.mount("/laf", ...)`` is ``/fn/hello``. Raw, as Tornado routes it: still
    percent-encoded, so an encoded slash in a function name stays data."""
    raw = scope.get("raw_path")
    path: str = raw.decode("latin-1") if raw else scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("/", ""):
        path = path[len(root) :] or "/"
    return path


class LafApp:
    """The ASGI app. It starts (loads the functions, runs ``__init__``, opens the database)
    on the server's lifespan ``startup``, or on its first request where no lifespan reaches
    it (Starlette does not pass its own on to a mounted app: give it :meth:`lifespan`)."""

    def __init__(self, settings: Settings) -> None:
        hide_tokens_in_server_logs()
        self.settings = settings
        self.runtime = Runtime(settings)
        self.activity = Activity()
        # Never started: the ASGI server pings. SocketConnection only leaves it when it ends.
        self.keepalive = Keepalive(settings.ping_interval, settings.ping_timeout)
        self.tornado = make_app(self.runtime, self.activity, self.keepalive)
        self._plain = PlainCalls(FastFunctions(self.tornado, self.runtime, self.activity))
        self._started: asyncio.Future[None] | None = None
        self._running = False  # started, and not stopped
        self._stopped = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            if not self._running:
                await self.startup()
            path = route_path(scope)
            plain = self._plain.decide(scope, path)
            if plain is not None:
                await self._plain.answer(plain, scope, receive, send)
                return
            await serve_http(self.tornado, scope, receive, send, path, self.settings.max_body_size)
        elif kind == "websocket":
            await self.startup()
            if route_path(scope).partition("?")[0] != WEBSOCKET_PATH:
                await refuse_route(scope, receive, send)
                return
            runtime, activity = self.runtime, self.activity
            await serve_websocket(runtime, activity, self.keepalive, scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def startup(self) -> None:
        """Start the runtime, once; callers that come meanwhile wait for it."""
        started = self._started
        if started is None:
            started = self._started = asyncio.get_running_loop().create_future()
            try:
                await self.runtime.start()
            except BaseException as exc:
                started.set_exception(exc)
                started.exception()  # retrieved: raised here, and to whoever waits for it
                await self.runtime.stop()
                raise
            started.set_result(None)
            self._running = True
        await asyncio.shield(started)

    async def shutdown(self, grace: float | None = None) -> None:
        """What laf-py's own server does on SIGTERM: refuse new work (503), close every socket
        with 1001, let calls in flight finish within ``--shutdown-grace``, stop the runtime."""
        if self._started is None or self._stopped:
            return
        self._stopped = True
        self._running = False
        loop = asyncio.get_running_loop()
        grace = self.settings.shutdown_grace if grace is None else grace
        deadline = loop.time() + grace
        self.activity.draining = True
        self.runtime.stop_scheduling()
        await self.activity.drain(grace, SHUTDOWN_REASON)
        await self.runtime.stop(timeout=max(0.0, deadline - loop.time()))

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any = None) -> AsyncIterator[None]:
        """For the app laf-py is mounted in: ``FastAPI(lifespan=laf.lifespan)``, so laf-py
        starts with it and shuts down cleanly with it."""
        await self.startup()
        try:
            yield
        finally:
            await self.shutdown()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return
