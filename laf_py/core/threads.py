"""The threads that run plain-``def`` functions: a pool that stuck calls cannot starve.

A thread cannot be stopped from outside, so a plain ``def`` past its time limit keeps its thread
until it returns. In an ordinary pool it also keeps its *place*: as many stuck calls as threads,
and every other plain-``def`` call waits in the queue until it times out too. Here the invoker
tells the pool when it gave up on a call (``abandon``): that call stops counting against the
pool's size, so a new thread can take its place, and its own thread finishes in the background.
When it does, it goes back to work if the pool is short of threads, else it ends.

Threads are daemon threads and ``shutdown`` never waits for a running call: a stuck function
must not hold the process exit.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

__all__ = ["FUNCTION_THREADS", "FunctionThreads"]

# As many as anyio (and so Starlette and FastAPI) gives sync code by default.
FUNCTION_THREADS = 40


class _Call:
    __slots__ = ("args", "fn", "future")

    def __init__(self, future: Future[Any], fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.future = future
        self.fn = fn
        self.args = args

    def run(self) -> None:
        if not self.future.set_running_or_notify_cancel():
            return  # cancelled while queued
        try:
            result = self.fn(*self.args)
        except BaseException as exc:  # SystemExit too: it belongs to the caller, not this thread
            self.future.set_exception(exc)
        else:
            self.future.set_result(result)


class FunctionThreads:
    """Up to ``size`` threads running calls, not counting the calls given up on."""

    def __init__(self, size: int = FUNCTION_THREADS, name: str = "laf-fn") -> None:
        self.size = size
        self._name = name
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()
        self._work_queued = threading.Condition(self._lock)
        self._queue: deque[_Call] = deque()
        self._counted = 0  # threads that count against `size`: idle, or on a call not abandoned
        self._idle = 0  # counted threads waiting for work
        self._running: dict[Future[Any], bool] = {}  # calls in threads -> abandoned?
        self._closed = False

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> Future[Any]:
        """Run ``fn(*args)`` in a thread; the future gets its result or exception."""
        call = _Call(Future(), fn, args)
        with self._lock:
            if self._closed:
                raise RuntimeError("the function threads are shut down")
            self._queue.append(call)
            self._work_queued.notify()
            self._add_thread_if_short()
        return call.future

    def abandon(self, future: Future[Any]) -> None:
        """The caller no longer waits for this call (it ran past its time limit).

        A queued call is cancelled. A running one stops counting against the pool's size, so
        a new thread can take its place; its thread finishes it in the background.
        """
        if future.cancel():
            return
        with self._lock:
            if self._running.get(future) is False:
                self._running[future] = True
                self._counted -= 1
                self._add_thread_if_short()

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
            self._work_queued.notify_all()
        for call in queued:
            call.future.cancel()

    # -- internals (called with the lock held, except _work) ----------------------------------

    def _add_thread_if_short(self) -> None:
        if len(self._queue) > self._idle and self._counted < self.size and not self._closed:
            self._counted += 1
            name = f"{self._name}-{next(self._numbers)}"
            threading.Thread(target=self._work, name=name, daemon=True).start()

    def _work(self) -> None:
        call: _Call | None = None
        while True:
            with self._lock:
                if call is not None:
                    if self._running.pop(call.future):  # abandoned: a new thread has its place
                        if self._counted >= self.size or self._closed:
                            return
                        self._counted += 1  # the pool is short of threads: stay
                    call = None
                while not self._queue:
                    if self._closed:
                        self._counted -= 1
                        return
                    self._idle += 1
                    self._work_queued.wait()
                    self._idle -= 1
                call = self._queue.popleft()
                self._running[call.future] = False
            call.run()
