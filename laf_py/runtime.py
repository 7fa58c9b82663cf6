"""Runtime: one server's functions, cloud services and thread pool, with no HTTP in sight.

The server package drives it: ``start()`` before serving, ``stop()`` after the last socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .cloud import cloud
from .cloud.delivery import LoopBridge
from .cloud.kv import KeyValueStore
from .cloud.schema import migrate
from .cloud.sockets import SocketRegistry
from .cloud.sql import SQLStore, redacted
from .cloud.tokens import Tokens, load_or_create_secret
from .config import Settings
from .core.context import INIT_METHOD, FunctionContext
from .core.invoke import Invoker
from .core.registry import INIT_FILE, INTERCEPTOR, WEBSOCKET, Function, FunctionRegistry
from .core.watcher import FolderWatcher
from .exceptions import LafError
from .presence import PresenceEvents

if TYPE_CHECKING:
    from .bus.redis import RedisBus

__all__ = ["Runtime", "StartupError"]

log = logging.getLogger("laf_py")


class StartupError(LafError):
    """The server cannot start: the message says why, in one line."""


class Runtime:
    """Functions, invoker, sockets and the ``cloud`` binding of one running server."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = FunctionRegistry(settings.functions_dir)
        self.executor = ThreadPoolExecutor(
            max_workers=min(32, (os.cpu_count() or 1) + 4), thread_name_prefix="laf-fn"
        )
        self.invoker = Invoker(self.executor, settings.timeout)
        self._sockets: SocketRegistry | None = None
        self._watcher: FolderWatcher | None = None
        self.bridge: LoopBridge | None = None
        self.tokens: Tokens | None = None
        self.sql: SQLStore | None = None
        self.kv: KeyValueStore | None = None
        self._attached = False
        self._bus: RedisBus | None = None

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
        self._sockets = SocketRegistry(bridge, on_presence=presence)
        self.tokens = Tokens(self.settings.secret or load_or_create_secret(self.settings.data_dir))
        self.sql = await _open_database(self.settings.database)
        self.kv = KeyValueStore(self.sql, bridge)
        self.kv.start_sweeping()
        if self.settings.redis_url:
            bus = await _join_cluster(self.settings, self._sockets, presence)
            presence.bus = self._sockets.bus = self._bus = bus
        cloud.attach(self._sockets, self.kv, self.sql, self.tokens)
        self._attached = True
        functions = self.registry.load_all()
        broken = sum(1 for f in functions if f.error)
        log.info(
            "loaded %d function(s) from %s%s",
            len(functions) - broken,
            self.registry.root,
            f", {broken} failed" if broken else "",
        )
        await self._run_init()
        if self.settings.reload:
            self._watcher = FolderWatcher(self.registry.root, self._on_files_changed)
            await self._watcher.start()

    async def stop(self) -> None:
        """Let started work (kv writes, presence events) finish, then close everything."""
        if self._watcher is not None:
            await self._watcher.stop()
        if self.bridge is not None:
            try:
                await asyncio.wait_for(self.bridge.drain(), self.settings.shutdown_grace)
            except TimeoutError:
                log.warning("stopping with kv writes or presence events still unfinished")
        if self._bus is not None:
            await self._bus.stop()
            self._bus = None
        if self.kv is not None:
            await self.kv.stop_sweeping()
        if self.sql is not None:
            await self.sql.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.registry.close()
        if self._attached:
            cloud.detach()
            self._attached = False

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

    def _on_files_changed(self, paths: set[Path]) -> None:
        names = ", ".join(sorted(_relative(p, self.registry.root) for p in paths))
        functions = self.registry.reload()
        broken = sum(1 for f in functions if f.error)
        log.info("reloaded after change to %s%s", names, f" ({broken} failed)" if broken else "")


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


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)
