"""Delivery: what every send returns. The send has already happened; awaiting it is optional
and gives the number of connections reached."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Awaitable, Callable, Generator
from typing import Any, TypeVar

__all__ = ["WRITTEN", "Delivery", "LoopBridge"]

T = TypeVar("T")


class _Written:
    """What a write that went straight to the kernel gives to await: nothing to wait for."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield  # a generator that finishes at once


WRITTEN: Awaitable[None] = _Written()


class Delivery:
    """The outcome of ``send``, ``publish``, ``send_to_user(s)``, ``broadcast``,
    ``send_to_room``, ``join`` or ``leave``.

    ``await delivery`` → the count of connections reached (0 when the socket was closed).
    For ``socket.send`` it also waits until the frame is written out. Plain-``def`` functions,
    which cannot await, use :meth:`result`.
    """

    __slots__ = ("_count", "_flushed", "_future", "_remote")

    def __init__(
        self,
        count: int = 0,
        *,
        flushed: Awaitable[Any] | None = None,
        remote: asyncio.Future[int] | None = None,
        future: concurrent.futures.Future[int] | None = None,
    ) -> None:
        self._count = count  # connections of this process reached
        self._flushed = flushed  # the write to a single socket, for socket.send
        self._remote = remote  # connections other nodes reached, as they report them
        self._future = future  # the whole count, for a send made from a worker thread

    def __await__(self) -> Generator[Any, None, int]:
        if self._future is not None:
            return (yield from asyncio.wrap_future(self._future).__await__())
        if self._flushed is not None:
            try:
                yield from self._flushed.__await__()
            except Exception:  # the connection went away before the frame was written
                return 0
        if self._remote is not None:
            return self._count + (yield from self._remote.__await__())
        return self._count

    def result(self, timeout: float | None = None) -> int:
        """The count, for code outside the event loop (a plain ``def main``)."""
        if self._future is not None:
            return self._future.result(timeout)
        return self._count

    def __repr__(self) -> str:
        state = "pending" if self._future is not None and not self._future.done() else "sent"
        return f"<Delivery {state}>"


class LoopBridge:
    """Runs socket operations on the event loop, whichever thread asks for them."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._thread_id = threading.get_ident()
        self._tasks: set[asyncio.Future[Any]] = set()

    def track(self, task: asyncio.Future[T]) -> asyncio.Future[T]:
        """Keep a started task alive until it is done (the loop holds only weak references)."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def drain(self) -> None:
        """Wait for every tracked task, so nothing that was started is cut off at shutdown."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def on_loop_thread(self) -> bool:
        return threading.get_ident() == self._thread_id

    def deliver(self, send: Callable[..., Delivery], *args: Any) -> Delivery:
        """Call ``send(*args)`` now if on the loop thread, else schedule it there."""
        if threading.get_ident() == self._thread_id:
            return send(*args)
        future: concurrent.futures.Future[int] = concurrent.futures.Future()

        async def settle(delivery: Delivery) -> None:
            try:
                future.set_result(await delivery)
            except BaseException as exc:  # never leave a waiting thread hanging
                future.set_exception(exc)
                raise

        def run() -> None:
            try:
                self.track(asyncio.ensure_future(settle(send(*args))))
            except BaseException as exc:
                future.set_exception(exc)

        try:
            self.loop.call_soon_threadsafe(run)
        except RuntimeError:  # the loop is closed: the server has stopped
            return Delivery(0)
        return Delivery(future=future)

    def call(self, action: Callable[..., None], *args: Any) -> None:
        """Run a fire-and-forget action on the loop thread."""
        if threading.get_ident() == self._thread_id:
            action(*args)
            return
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(action, *args)
