"""Pending: a cloud operation that has already started on the event loop.

``await`` it in an ``async def``; call ``.result()`` in a plain ``def`` (a worker thread).
Starting at once means a forgotten ``await`` never loses a write.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine, Generator
from typing import Any, Generic, TypeVar

from .delivery import LoopBridge

__all__ = ["Pending", "start"]

T = TypeVar("T")


class Pending(Generic[T]):
    __slots__ = ("_future",)

    def __init__(self, future: asyncio.Future[T] | concurrent.futures.Future[T]) -> None:
        self._future = future

    def __await__(self) -> Generator[Any, None, T]:
        future = self._future
        if isinstance(future, concurrent.futures.Future):
            future = asyncio.wrap_future(future)
        return (yield from future.__await__())

    def result(self, timeout: float | None = None) -> T:
        """Wait for the outcome from a worker thread (plain ``def`` functions)."""
        future = self._future
        if isinstance(future, concurrent.futures.Future):
            return future.result(timeout)
        if not future.done():
            raise RuntimeError("on the event loop, use 'await' instead of .result()")
        return future.result()

    def done(self) -> bool:
        return self._future.done()


def start(bridge: LoopBridge, coroutine: Coroutine[Any, Any, T]) -> Pending[T]:
    """Run ``coroutine`` on the bridge's loop now, from whichever thread.

    The task is tracked either way, so shutdown waits for it even if nobody awaits it.
    """
    if bridge.on_loop_thread():
        return Pending(bridge.track(asyncio.ensure_future(coroutine)))
    outcome: concurrent.futures.Future[T] = concurrent.futures.Future()

    def begin() -> None:
        task = bridge.track(asyncio.ensure_future(coroutine))
        task.add_done_callback(lambda done: _copy(done, outcome))

    try:
        bridge.loop.call_soon_threadsafe(begin)
    except RuntimeError:  # the loop is closed: the server has stopped
        coroutine.close()
        raise RuntimeError("the laf-py server has stopped") from None
    return Pending(outcome)


def _copy(done: asyncio.Future[T], outcome: concurrent.futures.Future[T]) -> None:
    if done.cancelled():
        outcome.cancel()
    elif (error := done.exception()) is not None:
        outcome.set_exception(error)
    else:
        outcome.set_result(done.result())
