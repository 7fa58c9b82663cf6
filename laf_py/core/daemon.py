"""Run one blocking call in a daemon thread of its own and await it from the event loop.

For user code that may never return (a module stuck at import, an ``on_unload()`` that hangs):
unlike an executor's worker, a daemon thread holds neither a pool's place nor the exit of
the process. Giving up on the awaitable (a timeout, a cancellation) leaves the thread to finish
alone; its result is then dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["in_daemon_thread"]

T = TypeVar("T")


def in_daemon_thread(work: Callable[..., T], *args: Any, name: str) -> asyncio.Future[T]:
    """Start ``work(*args)`` in a new daemon thread called ``name``; the future gets its
    result or exception (any BaseException) on the running loop."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():
            return  # given up on
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def run() -> None:
        result, error = None, None
        try:
            result = work(*args)
        except BaseException as exc:  # handed to the awaiting side, whatever it is
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future
