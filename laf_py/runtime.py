"""Runtime: one server's functions, cloud services and thread pool, with no HTTP in sight.

The server package drives it: ``start()`` before serving, ``stop()`` after the last socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .cloud import cloud
from .cloud.delivery import LoopBridge
from .cloud.kv import KeyValueStore
from .cloud.queue import JobQueue
from .cloud.schema import migrate
from .cloud.sockets import SocketRegistry
from .cloud.sql import SQLStore, redacted
from .cloud.tokens import Tokens, load_or_create_secret
from .config import Settings
from .core.context import INIT_METHOD, FunctionContext
from .core.invoke import Invoker
from .core.registry import INIT_FILE, INTERCEPTOR, WEBSOCKET, Function, FunctionRegistry
from .core.threads import FunctionThreads
from .core.unload import call_on_unload
from .core.watcher import FolderWatcher
from .exceptions import LafError
from .jobs import JobWorker
from .logs.capture import PRINT_LOGGER, capture_output, release_output
from .logs.store import LogStore, install_store_handler
from .logs.tagging import install_call_tags
from .presence import PresenceEvents
from .scheduler import LocalTicks, Scheduler, TickClaims

if TYPE_CHECKING:
    from .bus.redis import RedisBus
    from .metrics import Metrics

__all__ = ["Runtime", "StartupError"]

log = logging.getLogger("laf_py")

# Once the shutdown time has run out, each remaining step of stop() (waiting for presence
# events and kv writes, leaving the Redis cluster, closing the database, ...) still gets this
# long: enough for a healthy service to say goodbye, short for one that hangs.
STEP_MINIMUM = 0.25


class StartupError(LafError):
    """The server cannot start: the message says why, in one line."""


class Runtime:
    """Functions, invoker, sockets and the ``cloud`` binding of one running server."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = FunctionRegistry(settings.functions)
        self.threads = FunctionThreads()  # plain-def functions run here
        self.invoker = Invoker(self.threads, settings.timeout)
        self._sockets: SocketRegistry | None = None
        self._watcher: FolderWatcher | None = None
        self.bridge: LoopBridge | None = None
        self.tokens: Tokens | None = None
        self.sql: SQLStore | None = None
        self.kv: KeyValueStore | None = None
        self.queue: JobQueue | None = None  # cloud.queue
        self.jobs: JobWorker | None = None  # runs the queued jobs
        self._attached = False
        self._bus: RedisBus | None = None
        self.scheduler: Scheduler | None = None
        self.logs: LogStore | None = None  # function logs kept in the database
        self._capturing = False
        # GET /_/metrics; None with --metrics false, and then nothing counts (or imports it).
        self.metrics: Metrics | None = None
        if settings.metrics:
            from .metrics import create_metrics

            self.metrics = create_metrics()
            self.invoker.on_failure = self.metrics.function_failed  # every trigger's calls

    @property
    def sockets(self) -> SocketRegistry:
        assert self._sockets is not None, "Runtime.start() first"
        return self._sockets

    def verify_token(self, token: str) -> dict[str, Any] | None:
        """The payload of a valid token signed with this server's secret, else None."""
        assert self.tokens is not None, "Runtime.start() first"
        return self.tokens.verify(token)

    @property
    def websocket(self) -> Function | None:
        return self.registry.get(WEBSOCKET)

    @property
    def interceptor(self) -> Function | None:
        return self.registry.get(INTERCEPTOR)

    async def start(self) -> None:
        """Open the database, attach ``cloud``, load every function, run ``__init__`` and
        start watching files."""
        try:
            self.registry.install()
        except LafError as exc:
            raise StartupError(str(exc)) from None
        self.bridge = bridge = LoopBridge(asyncio.get_running_loop())
        presence = PresenceEvents(self.registry, self.invoker, bridge)
        self._sockets = SocketRegistry(
            bridge, on_presence=presence, max_message=self.settings.max_outbound_message
        )
        self.tokens = Tokens(
            self.settings.secret or load_or_create_secret(self.settings.data),
            require_exp=self.settings.require_token_exp,
        )
        self.sql = await _open_database(self.settings.database)
        self.sql.attach(bridge)
        self._keep_function_logs(self.sql)
        self.kv = KeyValueStore(self.sql, bridge)
        self.kv.start_sweeping()
        self.queue = JobQueue(self.sql, bridge, self.registry)
        if self.settings.redis_url:
            bus = await _join_cluster(self.settings, self._sockets, presence)
            presence.bus = self._sockets.bus = self._bus = bus
        cloud.attach(self._sockets, self.kv, self.sql, self.tokens, queue=self.queue)
        self._attached = True
        functions = await self.registry.load()  # imports in a worker thread
        broken = sum(1 for f in functions if f.error)
        log.debug(  # the start-up banner says it (laf_py.server.banner)
            "loaded %d function(s) from %s%s",
            len(functions) - broken,
            self.registry.root,
            f", {broken} failed" if broken else "",
        )
        await self._run_init()
        self._keep_logging_ours()  # after the functions' own logging setup, if any
        self.jobs = JobWorker(self.queue, self.registry, self.invoker, self.settings.timeout)
        self.jobs.start()
        self.scheduler = Scheduler(self.registry, self.invoker, self._tick_claims())
        self.scheduler.sync()
        if self.settings.reload:
            self._watcher = FolderWatcher(self.registry.root, self._on_files_changed)
            await self._watcher.start()

    async def stop(self, timeout: float | None = None) -> None:
        """Let started work (kv writes, presence events) finish, then close everything.

        Takes ``timeout`` seconds at most (default: the shutdown grace), plus STEP_MINIMUM
        per step when the time has run out: a hung Redis or database must not hold the exit.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.settings.shutdown_grace if timeout is None else timeout)

        async def step(work: Awaitable[None], too_slow: str) -> None:
            seconds = max(deadline - loop.time(), STEP_MINIMUM)
            try:
                await asyncio.wait_for(work, seconds)
            except TimeoutError:
                log.warning("%s (gave up after %.2fs)", too_slow, seconds)

        if self.scheduler is not None:  # bounded by itself: runs get what is left, then stop
            await self.scheduler.stop(max(deadline - loop.time(), 0.0))
        if self._watcher is not None:
            await step(self._watcher.stop(), "the file watcher did not stop")
        if self.jobs is not None:  # running jobs get what is left, then go back to the queue
            grace = max(deadline - loop.time() - STEP_MINIMUM, 0.0)
            await step(self.jobs.stop(grace), "queued jobs did not stop")
        if self.bridge is not None:
            await step(
                self.bridge.drain(), "stopping with kv writes or presence events still unfinished"
            )
        await step(self._unload_functions(), "on_unload() of the functions did not finish")
        if self._bus is not None:
            await step(
                self._bus.stop(),
                "Redis did not answer while leaving the cluster; other nodes drop this node "
                "once its heartbeat stops",
            )
            self._bus = None
        if self.kv is not None:
            await step(self.kv.stop_sweeping(), "the kv sweeper did not stop")
        if self.logs is not None:
            await step(self.logs.stop(), "the last function log lines were not written")
            self.invoker.log_sink = self.registry.log_sink = self.logs = None
        if self._capturing:
            release_output()
            self._capturing = False
        if self.sql is not None:
            await step(self.sql.close(), "the database did not close its connections")
        self.threads.shutdown()  # never waits for calls still running
        self.registry.close()
        if self._attached:
            cloud.detach()
            self._attached = False

    def _keep_function_logs(self, sql: SQLStore) -> None:
        """Tag what functions print and log with their call; keep it unless retention is 0."""
        install_call_tags()
        capture_output()
        self._capturing = True
        # print() lines at --log-level, also in a process whose logging nobody configured
        # (a server embedded in tests: Python's default would drop them below WARNING).
        logging.getLogger(PRINT_LOGGER).setLevel(self.settings.log_level.upper())
        if self.settings.log_retention > 0:
            install_store_handler()
            self.logs = LogStore(sql, self.settings.log_retention)
            self.logs.start()
            self.invoker.log_sink = self.registry.log_sink = self.logs.key

    def _keep_logging_ours(self) -> None:
        """A functions folder may configure logging itself (``logging.config.dictConfig`` in
        ``__init__``): that must not silence print() in calls or stop lines being kept."""
        logging.getLogger(PRINT_LOGGER).disabled = False
        if self.logs is not None:
            install_store_handler()

    def stop_scheduling(self) -> None:
        """Shutdown has begun: no scheduled run starts any more (runs going on finish)."""
        if self.scheduler is not None:
            self.scheduler.pause()

    def _tick_claims(self) -> TickClaims:
        """Who runs each tick: this process alone, or the first node to claim it in Redis."""
        if self._bus is None or self.settings.redis_url is None:
            return LocalTicks()
        from .bus.ticks import RedisTicks  # redis is imported only when it is configured

        # The "running" marker lives as long as a node is presumed alive (three heartbeats).
        lease = 3 * self.settings.heartbeat
        return RedisTicks(self.settings.redis_url, self.settings.cluster, self._bus.node_id, lease)

    async def _run_init(self) -> None:
        init = self.registry.get(INIT_FILE)
        if init is None:
            return
        if init.error is not None:
            raise StartupError(f"functions/__init__.py cannot be loaded: {init.error}")
        try:
            await self.invoker.call(init, FunctionContext(INIT_METHOD, INIT_FILE))
        except Exception as exc:
            log.exception("functions/__init__.py failed")
            reason = f"{type(exc).__name__}: {exc}"
            raise StartupError(f"functions/__init__.py failed: {reason}") from exc

    async def _on_files_changed(self, paths: set[Path]) -> None:
        """Import what changed in the import thread, swap it in, then clean up the old."""
        result = await self.registry.refresh(paths)
        self._keep_logging_ours()
        if self.scheduler is not None:
            self.scheduler.sync()
        if result.loaded or result.removed or (result.changed and not result.init_changed):
            broken = sum(1 for f in result.loaded if f.error)
            log.info(
                "reloaded %s after change to %s%s",
                ", ".join(f.name for f in result.loaded) or "no function",
                ", ".join(result.changed) or "the folder",
                f" ({broken} failed)" if broken else "",
            )
            if result.removed:
                log.info("removed %s", ", ".join(result.removed))
        await call_on_unload(result.unloaded, self.settings.timeout, self.registry.display)

    async def _unload_functions(self) -> None:
        """At shutdown: the ``on_unload()`` of every loaded function and helper module."""
        timeout = min(self.settings.timeout, self.settings.shutdown_grace)
        await call_on_unload(self.registry.loaded_modules(), timeout, self.registry.display)


async def _join_cluster(
    settings: Settings, sockets: SocketRegistry, presence: PresenceEvents
) -> RedisBus:
    """Connect this node to the others through Redis, or fail start-up in one line."""
    from .bus.redis import RedisBus  # redis is imported only when it is configured

    assert settings.redis_url is not None
    bus = RedisBus(
        settings.redis_url,
        node_id=sockets.node_id,
        prefix=settings.cluster,
        heartbeat=settings.heartbeat,
        on_presence=presence.decided_by_cluster,
    )
    try:
        await bus.start(sockets)
    except Exception as exc:
        with contextlib.suppress(Exception):
            await bus.stop()
        raise StartupError(
            f"cannot reach Redis at {bus.safe_url()}: {exc} (check --redis-url / LAF_REDIS_URL)"
        ) from None
    log.info("joined cluster %r through Redis as node %s", settings.cluster, sockets.node_id)
    return bus


async def _open_database(url: str) -> SQLStore:
    """Connect and bring laf-py's tables up to date, or fail start-up in one line."""
    store = SQLStore(url)
    try:
        await store.use_wal_mode()
        await migrate(store.engine)
    except Exception as exc:
        await store.close()
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StartupError(
            f"cannot use the database {redacted(url)}: {reason} "
            "(check --database-url / LAF_DATABASE_URL)"
        ) from exc
    return store
