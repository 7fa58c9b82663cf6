"""Watch the functions folder and report changed Python files, via watchfiles (inotify).

Reports go out one at a time: the next burst of edits is reported once the handling of the
previous one has finished (edits made meanwhile are collected, not lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import watchfiles

__all__ = ["FolderWatcher"]

log = logging.getLogger("laf_py")


class FolderWatcher:
    """Awaits ``on_change(paths)`` on the event loop after each burst of edits."""

    def __init__(self, root: Path, on_change: Callable[[set[Path]], Awaitable[None]]) -> None:
        self._root = root
        self._on_change = on_change
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="laf-py watcher")
        # One turn of the loop lets awatch set up its inotify watches before we return, so
        # an edit made right after start-up is not missed.
        await asyncio.sleep(0)

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop watching; a reload under way gets ``timeout`` seconds to finish."""
        self._stop.set()
        if self._task is None:
            return
        done, _ = await asyncio.wait({self._task}, timeout=timeout)
        if not done:
            log.warning("stopping while a reload is still importing files")
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        try:
            async for changes in watchfiles.awatch(
                self._root,
                watch_filter=_FunctionFilter(),
                stop_event=self._stop,
                debounce=1000,
                step=30,
            ):
                try:
                    await self._on_change({Path(path) for _, path in changes})
                except Exception:
                    log.exception("reloading functions failed")
        except Exception:
            log.exception("watching %s failed; hot reload is off", self._root)


class _FunctionFilter(watchfiles.DefaultFilter):
    """Python files, and folders: moving a whole folder in or out reports only the folder."""

    def __call__(self, change: watchfiles.Change, path: str) -> bool:
        if not super().__call__(change, path):  # .git, __pycache__, editor swap files, ...
            return False
        name = Path(path).name
        return name.endswith(".py") or "." not in name
