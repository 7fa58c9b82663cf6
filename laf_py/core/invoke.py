"""Calling ``main(ctx)``: async on the loop, plain ``def`` in a thread pool, within a time limit,
and wrapped by the interceptor when there is one."""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import math
from collections.abc import Callable
from typing import Any

from ..exceptions import FunctionTimeoutError
from ..logs.capture import flush_output
from .context import FunctionContext, current_call
from .eager import Done, start_now
from .registry import Function
from .threads import FunctionThreads

__all__ = ["FunctionExit", "Invoker"]


class FunctionExit(RuntimeError):
    """A function raised SystemExit, KeyboardInterrupt or a CancelledError of its own.

    Those must not stop the server or pass for a cancellation of the call, so they become an
    ordinary error (500, or an error frame).
    """


# What functions mostly return, known not to be awaitable without asking inspect (whose
# Awaitable check is an ABC's isinstance).
_NOT_AWAITABLE = frozenset({str, bytes, dict, list, tuple, int, float, bool, type(None)})


class _TimeUp(Exception):
    """A plain ``def`` past its time limit (what its waiter is given)."""


class _Deadlines:
    """The time limits of the plain-``def`` calls waiting for their threads, on one timer.

    A timer per call (arming and cancelling one costs several µs on the loop) would be a good
    share of a small call's hand-off. This one is armed for the earliest deadline; calls that
    end leave it at once (a dict), and when it fires, it ends the calls past their deadline and
    is armed again for the earliest left. Under steady traffic it fires about once per time
    limit.

    An expired call is given up on (``give_up``: its thread's place goes to a new thread) at
    once, in deadline order, as a timer per call would: the new thread can take a call queued
    behind it before that call's own deadline is looked at.
    """

    __slots__ = ("_at", "_give_up", "_loop", "_timer", "_waiting")

    def __init__(self, give_up: Callable[[asyncio.Future[Any]], None]) -> None:
        self._give_up = give_up
        self._waiting: dict[asyncio.Future[Any], float] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._at = math.inf

    def add(
        self, loop: asyncio.AbstractEventLoop, call: asyncio.Future[Any], deadline: float
    ) -> None:
        if loop is not self._loop:  # a new loop (tests run one per test): start afresh
            self._waiting.clear()
            self._timer, self._loop, self._at = None, loop, math.inf
        self._waiting[call] = deadline
        if deadline < self._at:
            self._arm(deadline)

    def discard(self, call: asyncio.Future[Any]) -> None:
        self._waiting.pop(call, None)

    def _arm(self, deadline: float) -> None:
        loop = self._loop
        assert loop is not None
        if self._timer is not None:
            self._timer.cancel()
        self._at = deadline
        self._timer = loop.call_at(deadline, self._fire, loop)

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        if loop is not self._loop:
            return  # armed on a loop since replaced
        self._timer, self._at = None, math.inf
        now = loop.time()
        waiting = self._waiting
        expired = sorted((c for c, d in waiting.items() if d <= now), key=waiting.__getitem__)
        for call in expired:
            del waiting[call]
            if not call.done():
                call.set_exception(_TimeUp())
                self._give_up(call)
        if waiting:
            self._arm(min(waiting.values()))


class Invoker:
    """Runs functions for one runtime: its threads and its default time limit."""

    def __init__(self, threads: FunctionThreads, default_timeout: float) -> None:
        self._threads = threads
        self._default_timeout = default_timeout
        self._deadlines = _Deadlines(threads.abandon)
        # Where the lines of each call are kept: the key of a laf_py.logs.store.LogStore.
        self.log_sink: Any = None
        # Told of every call that raised (the metrics count errors and timeouts per function).
        self.on_failure: Callable[[str, BaseException], None] | None = None

    async def call(
        self,
        function: Function,
        ctx: FunctionContext,
        interceptor: Function | None = None,
        on_reached: Callable[[], None] | None = None,
    ) -> tuple[Any, bool]:
        """Run ``function`` (through ``interceptor`` if given) and return its result and
        whether the function itself ran: False when the interceptor did not call ``next``.

        ``on_reached`` is called just before the function itself starts, so a caller learns
        that it ran even when it then raises.

        Raises what the function raises, or FunctionTimeoutError past its time limit.
        """
        seconds = function.timeout or self._default_timeout
        limit: asyncio.Timeout | None = None
        ctx.log_sink = self.log_sink
        calling = current_call.set(ctx)  # for cloud.queue.push: whose call this is
        try:
            if interceptor is None:
                if on_reached is not None:
                    on_reached()
                if not function.is_async and not function.is_generator:
                    return await self._in_thread(function, ctx, seconds), True
                # A call that ends in its first step needs no timer: arming and disarming one
                # costs ~5 µs, a few percent of a small HTTP call.
                started = start_now(self._run(function, ctx))
                if isinstance(started, Done):
                    return started.value, True
                work = started
            else:
                work = self._intercept(interceptor, function, ctx, on_reached)
            async with asyncio.timeout(seconds) as limit:
                result = await work
            return (result, True) if interceptor is None else result
        except TimeoutError as exc:
            if limit is not None and limit.expired():
                raise self._failed(function, FunctionTimeoutError(function.name, seconds)) from None
            self._failed(function, exc)
            raise
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the server is cancelling this call
            exit_ = FunctionExit(f"function {function.name!r} raised CancelledError")
            raise self._failed(function, exit_) from None
        except (SystemExit, KeyboardInterrupt) as exc:
            exit_ = FunctionExit(f"function {function.name!r} raised {exc!r}")
            raise self._failed(function, exit_) from exc
        except Exception as exc:
            self._failed(function, exc)
            raise
        finally:
            if ctx._output:
                flush_output(ctx)  # a last line without its newline
            current_call.reset(calling)

    async def _in_thread(self, function: Function, ctx: FunctionContext, seconds: float) -> Any:
        """A plain ``def`` (no interceptor): in a thread, within its time limit. Not
        ``asyncio.timeout``: the call always waits for its thread, so its limit is always
        armed, and _Deadlines arms it for a fraction of the cost."""
        main = function.main
        assert main is not None, "callers check Function.error first"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        # In the caller's context: the thread sees current_call (and any context variable).
        call = self._threads.run(contextvars.copy_context().run, main, ctx)
        deadlines = self._deadlines
        deadlines.add(loop, call, deadline)
        try:
            result = await call
        except _TimeUp:
            # The thread cannot be stopped, but it must not keep its place in the pool while
            # it finishes in the background.
            self._threads.abandon(call)
            raise FunctionTimeoutError(function.name, seconds) from None
        except asyncio.CancelledError:  # the server is stopping
            self._threads.abandon(call)
            raise
        finally:
            deadlines.discard(call)
        if type(result) not in _NOT_AWAITABLE and inspect.isawaitable(result):
            # a plain def that returned a coroutine
            try:
                async with asyncio.timeout_at(deadline) as limit:
                    result = await result
            except TimeoutError:
                if limit.expired():
                    raise FunctionTimeoutError(function.name, seconds) from None
                raise
        return result

    def _failed(self, function: Function, exc: BaseException) -> BaseException:
        if self.on_failure is not None:
            self.on_failure(function.name, exc)
        return exc

    async def _run(self, function: Function, ctx: FunctionContext, *extra: Any) -> Any:
        main = function.main
        assert main is not None, "callers check Function.error first"
        if function.is_async:
            return await main(ctx, *extra)
        if function.is_generator:
            return main(ctx, *extra)  # only makes the generator: no thread needed
        # In the caller's context: the thread sees current_call (and any context variable).
        call = self._threads.run(contextvars.copy_context().run, main, ctx, *extra)
        try:
            result = await call
        except asyncio.CancelledError:
            # Past its time limit (or the server is stopping): the thread cannot be stopped,
            # but it must not keep its place in the pool while it finishes in the background.
            self._threads.abandon(call)
            raise
        if inspect.isawaitable(result):  # a plain def that returned a coroutine
            result = await result
        return result

    async def _intercept(
        self,
        interceptor: Function,
        function: Function,
        ctx: FunctionContext,
        on_reached: Callable[[], None] | None,
    ) -> tuple[Any, bool]:
        reached = False

        async def next_async(inner_ctx: FunctionContext) -> Any:
            nonlocal reached
            reached = True
            if on_reached is not None:
                on_reached()
            return await self._run(function, inner_ctx)

        if interceptor.is_async:
            return await self._run(interceptor, ctx, next_async), reached

        # A plain-def interceptor runs in a worker thread, and its `next` blocks that thread.
        loop = asyncio.get_running_loop()

        def next_blocking(inner_ctx: FunctionContext) -> Any:
            nonlocal reached
            reached = True
            if on_reached is not None:
                loop.call_soon_threadsafe(on_reached)
            main: Callable[..., Any] | None = function.main
            assert main is not None
            if not function.is_async:
                # Run it right here: waiting for a second pool thread could deadlock the pool.
                return main(inner_ctx)
            return asyncio.run_coroutine_threadsafe(main(inner_ctx), loop).result()

        return await self._run(interceptor, ctx, next_blocking), reached
