"""Runtime: one server's functions, cloud services and thread pool, with no HTTP in sight.

The server package drives it: ``start()`` before serving, ``stop()`` after the last socket.
"""

from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .cloud import cloud
from .cloud.delivery import LoopBridge
from .cloud.sockets import SocketRegistry
from .config import Settings
from .core.context import INIT, FunctionContext
from .core.invoke import Invoker
from .core.registry import INIT as INIT_FILE
from .core.registry import INTERCEPTOR, WEBSOCKET, Function, FunctionRegistry
from .core.watcher import FolderWatcher
from .exceptions import LafError

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

    @property
    def sockets(self) -> SocketRegistry:
        assert self._sockets is not None, "Runtime.start() first"
        return self._sockets

    @property
    def websocket(self) -> Function | None:
        return self.registry.get(WEBSOCKET)

    @property
    def interceptor(self) -> Function | None:
        return self.registry.get(INTERCEPTOR)

    async def start(self) -> None:
        """Attach ``cloud``, load every function, run ``__init__`` and start watching files."""
        self._sockets = SocketRegistry(LoopBridge(asyncio.get_running_loop()))
        cloud.attach(self._sockets)
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
        if self._watcher is not None:
            await self._watcher.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.registry.close()
        cloud.detach()

    async def _run_init(self) -> None:
        init = self.registry.get(INIT_FILE)
        if init is None:
            return
        if init.error is not None:
            raise StartupError(f"functions/__init__.py cannot be loaded: {init.error}")
        try:
            await self.invoker.call(init, FunctionContext(INIT, INIT_FILE))
        except Exception as exc:
            log.exception("functions/__init__.py failed")
            reason = f"{type(exc).__name__}: {exc}"
            raise StartupError(f"functions/__init__.py failed: {reason}") from exc

    def _on_files_changed(self, paths: set[Path]) -> None:
        names = ", ".join(sorted(_relative(p, self.registry.root) for p in paths))
        functions = self.registry.reload()
        broken = sum(1 for f in functions if f.error)
        log.info("reloaded after change to %s%s", names, f" ({broken} failed)" if broken else "")


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)
