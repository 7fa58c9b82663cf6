"""Server: bind, start the runtime, serve; and shut down gracefully on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import Callable

import tornado.httpserver
import tornado.netutil

from ..config import Settings
from ..runtime import Runtime, StartupError
from .activity import Activity
from .app import make_app
from .http import drain_limit
from .keepalive import Keepalive

__all__ = ["Server", "serve"]

log = logging.getLogger("laf_py")

SHUTDOWN_REASON = "server shutting down"


class Server:
    """One laf-py server in this process. ``await start()``, then ``await stop()``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings.validated()
        self.runtime = Runtime(self.settings)
        self.activity = Activity()
        self.keepalive = Keepalive(self.settings.ping_interval, self.settings.ping_timeout)
        self._http: tornado.httpserver.HTTPServer | None = None
        self._listeners: list[socket.socket] = []

    @property
    def port(self) -> int:
        """The port actually bound (useful with ``port=0``)."""
        return int(self._listeners[0].getsockname()[1])

    @property
    def url(self) -> str:
        host = self.settings.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    async def start(self, listeners: list[socket.socket] | None = None) -> None:
        """Bind (or take ``listeners`` bound by a parent process), load functions and run
        ``__init__``, then accept traffic."""
        self._listeners = listeners or bind(self.settings)
        try:
            await self.runtime.start()
        except BaseException:
            self._close_listeners()
            await self.runtime.stop()
            raise
        self._http = tornado.httpserver.HTTPServer(
            make_app(self.runtime, self.activity, self.keepalive),
            # X-Real-Ip / X-Forwarded-For only from a proxy we are told to trust: a client
            # could otherwise claim any address.
            xheaders=self.settings.trust_proxy_headers,
            # Above this Tornado drops the connection; between --max-body-size and this, the
            # body is read and thrown away, then the handler answers 413.
            max_body_size=drain_limit(self.settings.max_body_size),
        )
        self._http.add_sockets(self._listeners)
        if listeners is None:
            log.info("laf-py listening on %s (%s)", self.url, loop_name())

    async def stop(self) -> None:
        """Stop accepting, close every socket with 1001, let calls in flight finish."""
        grace = self.settings.shutdown_grace
        self.activity.draining = True
        if self._http is not None:
            self._http.stop()
        self.activity.close_connections(1001, SHUTDOWN_REASON)
        if not await self.activity.wait_idle(grace):
            log.warning(
                "shutdown grace of %gs ran out with %d call(s) and %d connection(s) in flight",
                grace,
                self.activity.requests,
                self.activity.connections,
            )
            # Drop the connections still open, so their close events run while functions
            # can still be called; wait a moment for those events, not for hung calls.
            self.activity.close_connections(1001, SHUTDOWN_REASON)
            await self.activity.wait_idle(min(grace, 1.0))
        self.keepalive.stop()
        if self._http is not None:
            await self._http.close_all_connections()
        await self.runtime.stop()
        log.info("laf-py stopped")

    def _close_listeners(self) -> None:
        for listener in self._listeners:
            listener.close()


def loop_name() -> str:
    """The running event loop, for the start-up line: "uvloop" or "asyncio"."""
    module = type(asyncio.get_running_loop()).__module__
    return "uvloop" if module.startswith("uvloop") else "asyncio"


def bind(settings: Settings) -> list[socket.socket]:
    try:
        return tornado.netutil.bind_sockets(settings.port, settings.host)
    except OSError as exc:
        raise StartupError(
            f"cannot listen on {settings.host}:{settings.port}: "
            f"{exc.strerror or exc}; choose another --port / LAF_PORT or --host / LAF_HOST"
        ) from None


def serve(settings: Settings) -> None:
    """Run a server until SIGTERM or SIGINT (the CLI's ``serve``)."""
    if settings.workers > 1:
        from .workers import serve_workers

        serve_workers(settings)
        return
    serve_one(settings)


def serve_one(
    settings: Settings,
    listeners: list[socket.socket] | None = None,
    ready: Callable[[], None] | None = None,
) -> None:
    """Run one server in this process until SIGTERM or SIGINT."""
    with asyncio.Runner(loop_factory=loop_factory(settings.event_loop)) as runner:
        finished = runner.run(_serve(settings, listeners, ready))
    if not finished:
        # A plain-def function is still running past the grace period. Python would wait for
        # its thread at exit, however long it takes; shutdown must not.
        log.warning("exiting with plain-def function calls still running in threads")
        logging.shutdown()
        os._exit(0)


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop for ``uvloop``, and for ``auto`` when it is installed; else asyncio's."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":  # Settings.validated() already refuses this
            raise
        return None
    return uvloop.new_event_loop


async def _serve(
    settings: Settings,
    listeners: list[socket.socket] | None,
    ready: Callable[[], None] | None,
) -> bool:
    # Handlers first: a signal that arrives while starting still means a clean shutdown.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = Server(settings)
    await server.start(listeners)
    if ready is not None:
        ready()
    await stop.wait()
    log.info("shutting down (grace %gs)", settings.shutdown_grace)
    await server.stop()
    return server.runtime.invoker.threads_busy() == 0
