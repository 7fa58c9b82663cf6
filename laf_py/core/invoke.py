"""Calling ``main(ctx)``: async on the loop, plain ``def`` in a thread pool, within a time limit,
and wrapped by the interceptor when there is one."""

from __future__ import annotations

import asyncio
import contextvars
import inspect
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


class Invoker:
    """Runs functions for one runtime: its threads and its default time limit."""

    def __init__(self, threads: FunctionThreads, default_timeout: float) -> None:
        self._threads = threads
        self._default_timeout = default_timeout
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
        call = self._threads.submit(contextvars.copy_context().run, main, ctx, *extra)
        try:
            result = await asyncio.wrap_future(call)
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
