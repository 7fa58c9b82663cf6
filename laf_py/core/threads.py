"""The threads that run plain-``def`` functions: a pool that stuck calls cannot starve.

A thread cannot be stopped from outside, so a plain ``def`` past its time limit keeps its thread
until it returns. In an ordinary pool it also keeps its *place*: as many stuck calls as threads,
and every other plain-``def`` call waits in the queue until it times out too. Here the invoker
tells the pool when it gave up on a call (``abandon``): that call stops counting against the
pool's size, so a new thread can take its place, and its own thread finishes in the background.
When it does, it goes back to work if the pool is short of threads, else it ends.

The hand-off is cheap, because a small function's call is mostly hand-off: an idle thread waits
on a lock of its own and is given its next call directly, the most recently idle first (its
caches are warm, and a light load keeps to a few threads); a call from the event loop
(``run``) reports back with one ``call_soon_threadsafe``, with no ``concurrent.futures.Future``
in between.

Threads are daemon threads and ``shutdown`` never waits for a running call: a stuck function
must not hold the process exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import Any

__all__ = ["FUNCTION_THREADS", "FunctionThreads"]

# As many as anyio (and so Starlette and FastAPI) gives sync code by default.
FUNCTION_THREADS = 40


class _Call:
    """One call: ``fn(*args)``, reported to a ``concurrent.futures.Future`` (``submit``) or
    to a future of an event loop (``run``)."""

    __slots__ = ("args", "fn", "future", "given_up", "key", "loop", "waiter")

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        future: Future[Any] | None = None,
        waiter: asyncio.Future[Any] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.fn = fn
        self.args = args
        self.future = future
        self.waiter = waiter
        self.loop = loop
        # What the caller holds, and passes to ``abandon``.
        self.key: Hashable = future if future is not None else waiter
        self.given_up = False  # abandoned while queued (a call from ``run``)

    def cancelled(self) -> bool:
        """Given up on while queued (``abandon``). For a call from ``run``, not the waiter's
        state: a task's cancellation cancels the waiter at once, and the call keeps its place
        in the queue until the caller says it gives up; a thread freed meanwhile takes it."""
        if self.future is not None:
            return self.future.cancelled()
        return self.given_up

    def run(self) -> None:
        future = self.future
        if future is not None:
            if not future.set_running_or_notify_cancel():
                return  # cancelled while queued
            try:
                result = self.fn(*self.args)
            except BaseException as exc:  # SystemExit too: it belongs to the caller
                future.set_exception(exc)
            else:
                future.set_result(result)
            return
        assert self.loop is not None
        # Given to a thread, it runs, even if its caller gives up meanwhile: it was started
        # (given up on while queued, it is never given to a thread: _take_queued).
        try:
            result = self.fn(*self.args)
        except BaseException as exc:  # SystemExit too: it belongs to the caller
            if isinstance(exc, StopIteration):  # a Future refuses it (it ends generators)
                exc = RuntimeError(f"function raised StopIteration: {exc!r}")
            self._report(_settle_exception, exc)
        else:
            self._report(_settle, result)

    def _report(self, settle: Callable[[asyncio.Future[Any], Any], None], outcome: Any) -> None:
        assert self.loop is not None and self.waiter is not None
        # (try/except rather than contextlib.suppress: this runs for every call)
        try:
            self.loop.call_soon_threadsafe(settle, self.waiter, outcome)
        except RuntimeError:
            return  # the loop is closed: the server has stopped, nobody waits


def _settle(waiter: asyncio.Future[Any], result: Any) -> None:
    if not waiter.done():  # else given up on (cancelled, or its time limit passed)
        waiter.set_result(result)


def _settle_exception(waiter: asyncio.Future[Any], exc: BaseException) -> None:
    if not waiter.done():
        waiter.set_exception(exc)


class _Worker:
    """One thread's mailbox: its next call, and a lock it sleeps on until it has one."""

    __slots__ = ("call", "wake")

    def __init__(self) -> None:
        self.call: _Call | None = None  # None when woken: the pool is shut down
        self.wake = threading.Lock()
        self.wake.acquire()


class FunctionThreads:
    """Up to ``size`` threads running calls, not counting the calls given up on."""

    def __init__(self, size: int = FUNCTION_THREADS, name: str = "laf-fn") -> None:
        self.size = size
        self._name = name
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()
        self._queue: deque[_Call] = deque()  # calls waiting for a thread
        self._idle: list[_Worker] = []  # threads waiting for a call; the last idle goes first
        self._counted = 0  # threads that count against `size`: idle, or on a call not abandoned
        self._running: dict[Hashable, bool] = {}  # calls given to threads -> abandoned?
        self._closed = False

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> Future[Any]:
        """Run ``fn(*args)`` in a thread; the future gets its result or exception."""
        future: Future[Any] = Future()
        self._start(_Call(fn, args, future=future))
        return future

    def run(self, fn: Callable[..., Any], /, *args: Any) -> asyncio.Future[Any]:
        """From the event loop: run ``fn(*args)`` in a thread; await the future for its result
        (cancelling it gives up on the call: pass it to ``abandon``)."""
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._start(_Call(fn, args, waiter=waiter, loop=loop))
        return waiter

    def abandon(self, future: Future[Any] | asyncio.Future[Any]) -> None:
        """The caller no longer waits for this call (it ran past its time limit).

        A queued call is cancelled. A running one stops counting against the pool's size, so
        a new thread can take its place; its thread finishes it in the background.
        """
        if isinstance(future, Future):
            if future.cancel():
                return
        else:
            future.cancel()
        with self._lock:
            running = self._running.get(future)
            if running is False:
                self._running[future] = True
                self._counted -= 1
                self._add_thread_if_short()
            elif running is None and not isinstance(future, Future):
                for call in self._queue:  # (rare: given up on before a thread took it)
                    if call.key is future:
                        call.given_up = True  # never given to a thread

    @property
    def running(self) -> int:
        """Calls running in threads right now, abandoned ones included."""
        with self._lock:
            return len(self._running)

    @property
    def abandoned(self) -> int:
        """Calls still running in threads after their caller gave up on them."""
        with self._lock:
            return sum(self._running.values())

    def shutdown(self) -> None:
        """Start nothing more: queued calls are cancelled, running calls are not waited for."""
        with self._lock:
            self._closed = True
            queued, self._queue = self._queue, deque()
            idle, self._idle = self._idle, []
            self._counted -= len(idle)
        for worker in idle:
            worker.wake.release()  # with no call: it ends
        for call in queued:
            if call.future is not None:
                call.future.cancel()
            elif call.loop is not None and call.waiter is not None:
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                    call.loop.call_soon_threadsafe(call.waiter.cancel)

    # -- internals ----------------------------------------------------------------------------

    def _start(self, call: _Call) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the function threads are shut down")
            if self._idle:
                worker = self._idle.pop()
                self._running[call.key] = False
                worker.call = call
                worker.wake.release()
                return
            self._queue.append(call)
            self._add_thread_if_short()

    def _add_thread_if_short(self) -> None:
        """(With the lock held.) A new thread, given the next queued call at once: a call
        waiting when a place frees up (a call given up on) is taken before its own time limit
        is looked at, whenever the new thread gets to run."""
        if len(self._queue) > len(self._idle) and self._counted < self.size and not self._closed:
            first = self._take_queued()
            if first is None:
                return
            self._counted += 1
            name = f"{self._name}-{next(self._numbers)}"
            threading.Thread(target=self._work, args=(first,), name=name, daemon=True).start()

    def _take_queued(self) -> _Call | None:
        """(With the lock held.) The next queued call not given up on, now running."""
        while self._queue:
            queued = self._queue.popleft()
            if not queued.cancelled():
                self._running[queued.key] = False
                return queued
            if queued.future is not None:
                queued.future.set_running_or_notify_cancel()  # tells its waiters
        return None

    def _work(self, first: _Call) -> None:
        worker = _Worker()
        lock = self._lock
        call: _Call | None = first
        first.run()
        while True:
            with lock:
                # Abandoned: a new thread has its place.
                if call is not None and self._running.pop(call.key):
                    if self._counted >= self.size or self._closed:
                        return
                    self._counted += 1  # the pool is short of threads: stay
                call = self._take_queued()
                if call is None:
                    if self._closed:
                        self._counted -= 1
                        return
                    self._idle.append(worker)
            if call is None:
                worker.wake.acquire()  # until given a call (or shut down: none)
                call, worker.call = worker.call, None
                if call is None:
                    return  # shut down (shutdown took it off the count)
            call.run()
