"""Server: bind, start the runtime, serve; and shut down gracefully on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, NoReturn, ParamSpec, TypeVar

import tornado.httpserver
import tornado.netutil

from ..config import Settings
from ..runtime import Runtime, StartupError
from . import accept
from .activity import Activity
from .app import make_app
from .banner import banner
from .fast_http import FastFunctions
from .http import drain_limit
from .keepalive import Keepalive

if TYPE_CHECKING:
    from ..asgi.server import UvicornServer

__all__ = ["Server", "create_server", "serve"]

log = logging.getLogger("laf_py")

P = ParamSpec("P")
T = TypeVar("T")

SHUTDOWN_REASON = "server shutting down"

# After a signal, the process ends at most this long after --shutdown-grace. The orderly path
# needs less: the last close events (1 s), then the steps of Runtime.stop (presence events and
# kv writes, on_unload, leaving the cluster, closing the database: runtime.STEP_MINIMUM each
# once the grace is gone). A watchdog enforces it for the rest. Documented in the README.
SHUTDOWN_BOUND = 3.0


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

    async def start(
        self, listeners: list[socket.socket] | None = None, announce: bool | None = None
    ) -> None:
        """Bind (or take ``listeners`` bound by a parent process), load functions and run
        ``__init__``, then accept traffic. ``announce``: log the start-up banner (by default
        when this server bound its own port)."""
        self._listeners = listeners or bind(self.settings)
        try:
            await self.runtime.start()
        except BaseException:
            self._close_listeners()
            await self.runtime.stop()
            raise
        app = make_app(self.runtime, self.activity, self.keepalive)
        self._http = accept.HTTPServer(
            app,
            # Plain /fn/ calls without a RequestHandler (server/fast_http.py).
            functions=FastFunctions(app, self.runtime, self.activity),
            # X-Real-Ip / X-Forwarded-For only from a proxy we are told to trust: a client
            # could otherwise claim any address.
            xheaders=self.settings.trust_proxy_headers,
            # Above this Tornado drops the connection; between --max-body-size and this, the
            # body is read and thrown away, then the handler answers 413.
            max_body_size=drain_limit(self.settings.max_body_size),
            # Slow clients (README, "Limits and defaults"): one deadline for a request head
            # (from connect or the previous answer: idle keep-alive too), one for a body.
            idle_connection_timeout=self.settings.header_timeout,
            body_timeout=self.settings.body_timeout,
            max_header_size=self.settings.max_header_size,
            max_connections=self.settings.max_http_connections,
        )
        self._http.add_sockets(self._listeners)
        if announce if announce is not None else listeners is None:
            lines = banner(self.settings, self.url, self.runtime.registry.functions(), loop_name())
            # With --workers the parent said where it listens; worker 0 says the rest.
            log.info("%s", "\n".join(lines if listeners is None else lines[1:]))
            accept.log_open_file_limit()  # what serve() raised it to, if it ran

    async def stop(self) -> None:
        """Stop accepting, close every socket with 1001, let calls in flight finish."""
        grace = self.settings.shutdown_grace
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        self.activity.draining = True
        self.runtime.stop_scheduling()
        if self._http is not None:
            self._http.stop()
        await self.activity.drain(grace, SHUTDOWN_REASON)
        self.keepalive.stop()
        if self._http is not None:
            await self._http.close_all_connections()
        # What is left of the grace (and a moment per step once it is gone) for presence
        # events and kv writes, leaving the cluster and closing the database.
        await self.runtime.stop(timeout=max(0.0, deadline - loop.time()))
        log.info("laf-py stopped")

    def _close_listeners(self) -> None:
        for listener in self._listeners:
            listener.close()


def create_server(settings: Settings) -> Server | UvicornServer:
    """The server ``--server`` names: Tornado (laf-py's own), or uvicorn with the ASGI app."""
    if settings.server == "uvicorn":
        from ..asgi.server import UvicornServer

        return UvicornServer(settings)
    return Server(settings)


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
    accept.raise_open_file_limit()  # before forking: workers inherit it
    if settings.workers > 1:
        from .workers import serve_workers

        serve_workers(settings)
        return
    serve_one(settings)


def serve_one(
    settings: Settings,
    listeners: list[socket.socket] | None = None,
    ready: Callable[[], None] | None = None,
    announce: bool | None = None,
) -> None:
    """Run one server in this process until SIGTERM or SIGINT.

    Once a signal has come, the process ends within ``--shutdown-grace`` + SHUTDOWN_BOUND
    seconds, whatever functions are doing.
    """
    with asyncio.Runner(loop_factory=loop_factory(settings.event_loop)) as runner:
        busy = runner.run(_serve(settings, listeners, ready, announce))
        if busy:
            # Function code still running in threads past the grace period: leaving this
            # block would wait for the loop's executor, and Python's exit for every pool
            # thread, however long they take. Shutdown must not.
            _exit_now(
                f"exiting with {busy} thread(s) still running function code "
                "(plain def or asyncio.to_thread); not waiting for them"
            )


def _exit_now(warning: str) -> NoReturn:
    log.warning("%s", warning)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)


def _exit_at(deadline: float) -> None:
    """From a daemon thread: end the process at ``deadline`` (time.monotonic()) if it is
    still there. The orderly shutdown bounds each of its steps, so this is the backstop for
    what it cannot see: a task that ignores cancellation, a thread a function started, a
    database driver's thread busy with a slow query, an event loop blocked by a function."""

    def watch() -> None:
        time.sleep(max(0.0, deadline - time.monotonic()))
        others = [t.name for t in threading.enumerate() if t is not threading.current_thread()]
        _exit_now(
            f"shutdown still not done {SHUTDOWN_BOUND:g}s after the grace period; exiting now "
            f"(threads: {', '.join(others) or 'none'})"
        )

    threading.Thread(target=watch, name="laf-py shutdown watchdog", daemon=True).start()


class _LoopExecutor(ThreadPoolExecutor):
    """The event loop's default executor (``asyncio.to_thread``, ``run_in_executor(None,
    ...)``), which knows how many of its calls are unfinished. It is a ThreadPoolExecutor
    because asyncio's ``set_default_executor`` accepts nothing else."""

    def __init__(self) -> None:
        super().__init__(thread_name_prefix="laf-to-thread")
        self._unfinished: set[Future[Any]] = set()

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        future = super().submit(fn, *args, **kwargs)
        self._unfinished.add(future)
        future.add_done_callback(self._unfinished.discard)
        return future

    @property
    def unfinished(self) -> int:
        return len(self._unfinished)


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
    announce: bool | None = None,
) -> int:
    """Serve until a signal, stop; return how many threads are still running function code."""
    # Handlers first: a signal that arrives while starting still means a clean shutdown.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    background = _LoopExecutor()
    loop.set_default_executor(background)
    server = create_server(settings)
    await server.start(listeners, announce)
    if ready is not None:
        ready()
    await stop.wait()
    log.info("shutting down (grace %gs)", settings.shutdown_grace)
    _exit_at(time.monotonic() + settings.shutdown_grace + SHUTDOWN_BOUND)
    await server.stop()
    background.shutdown(wait=False, cancel_futures=True)
    return server.runtime.threads.running + background.unfinished
