"""The Invoker on its own: a call's first step runs at once, and only a call that suspends gets
a timer. Whichever way a call ends, it ends as if ``main`` had simply been awaited."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from laf_py.core.context import FunctionContext
from laf_py.core.invoke import FunctionExit, Invoker
from laf_py.core.registry import Function
from laf_py.core.threads import FunctionThreads
from laf_py.exceptions import FunctionTimeoutError


def function(main: Callable[..., Any], timeout: float | None = None) -> Function:
    is_async = asyncio.iscoroutinefunction(main)
    return Function("f", Path("f.py"), main=main, is_async=is_async, timeout=timeout)


@pytest.fixture
def threads() -> Any:
    pool = FunctionThreads(size=2)
    yield pool
    pool.shutdown()


@pytest.fixture
def invoker(threads: FunctionThreads) -> Invoker:
    return Invoker(threads, default_timeout=5)


def ctx() -> FunctionContext:
    return FunctionContext("GET", "f")


async def test_a_call_that_never_suspends_returns_its_value(invoker: Invoker) -> None:
    async def main(ctx: FunctionContext) -> str:
        return "at once"

    assert await invoker.call(function(main), ctx()) == ("at once", True)


async def test_a_call_that_suspends_goes_on_to_its_value(invoker: Invoker) -> None:
    async def main(ctx: FunctionContext) -> int:
        total = 0
        for i in range(3):
            await asyncio.sleep(0)  # a bare yield
            total += await asyncio.sleep(0.001, result=i)  # a timer future
        return total

    assert await invoker.call(function(main), ctx()) == (3, True)


async def test_a_call_that_suspends_past_its_limit_times_out(invoker: Invoker) -> None:
    cleaned = asyncio.Event()

    async def main(ctx: FunctionContext) -> None:
        try:
            await asyncio.sleep(30)
        finally:
            cleaned.set()

    with pytest.raises(FunctionTimeoutError):
        await invoker.call(function(main, timeout=0.05), ctx())
    assert cleaned.is_set()  # the function saw the cancellation and ran its finally


async def test_errors_before_and_after_the_first_suspension_come_through(
    invoker: Invoker,
) -> None:
    async def early(ctx: FunctionContext) -> None:
        raise TimeoutError("the function's own")  # not laf-py's time limit

    async def late(ctx: FunctionContext) -> None:
        await asyncio.sleep(0)
        raise ValueError("after a suspension")

    with pytest.raises(TimeoutError, match="the function's own"):
        await invoker.call(function(early), ctx())
    with pytest.raises(ValueError, match="after a suspension"):
        await invoker.call(function(late), ctx())


@pytest.mark.parametrize("suspend_first", [False, True])
async def test_a_function_raising_cancelled_or_system_exit_is_an_ordinary_error(
    invoker: Invoker, suspend_first: bool
) -> None:
    async def cancelled(ctx: FunctionContext) -> None:
        if suspend_first:
            await asyncio.sleep(0)
        raise asyncio.CancelledError

    async def exits(ctx: FunctionContext) -> None:
        if suspend_first:
            await asyncio.sleep(0)
        raise SystemExit(3)

    with pytest.raises(FunctionExit, match="CancelledError"):
        await invoker.call(function(cancelled), ctx())
    with pytest.raises(FunctionExit, match="SystemExit"):
        await invoker.call(function(exits), ctx())


async def test_cancelling_the_caller_cancels_a_suspended_call(invoker: Invoker) -> None:
    """The server cancelling a call (shutdown) reaches the function as a CancelledError, and
    the call ends as cancelled."""
    started = asyncio.Event()
    seen: list[type[BaseException]] = []

    async def main(ctx: FunctionContext) -> None:
        started.set()
        try:
            await asyncio.sleep(30)
        except BaseException as exc:
            seen.append(type(exc))
            raise

    task = asyncio.ensure_future(invoker.call(function(main), ctx()))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == [asyncio.CancelledError]  # passed in, not GeneratorExit from a close()


@pytest.mark.parametrize("ending", ["returns", "raises"])
async def test_a_function_may_handle_the_cancellation_and_go_on(
    invoker: Invoker, ending: str
) -> None:
    """What it awaits after catching the cancellation really runs (it waits for the test here),
    and how it then ends is how the call ends, as under a plain await."""
    started, caught, go_on = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def main(ctx: FunctionContext) -> str:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            caught.set()
            await go_on.wait()
            if ending == "raises":
                raise ValueError("cleaned up, then failed") from None
            return "cleaned up"
        return "unreachable"

    task = asyncio.ensure_future(invoker.call(function(main), ctx()))
    await started.wait()
    task.cancel()
    await asyncio.wait_for(caught.wait(), 5)
    assert not task.done()  # the function is waiting for go_on
    go_on.set()
    if ending == "raises":
        with pytest.raises(ValueError, match="cleaned up, then failed"):
            await task
    else:
        assert await task == ("cleaned up", True)


async def test_plain_def_runs_in_a_thread_under_the_limit(invoker: Invoker) -> None:
    def main(ctx: FunctionContext) -> str:
        return "from a thread"

    assert await invoker.call(function(main), ctx()) == ("from a thread", True)


async def test_a_timed_out_plain_def_gives_up_its_place_in_the_pool(
    invoker: Invoker, threads: FunctionThreads
) -> None:
    """Plain defs past their limit stay stuck in their threads, but the invoker tells the pool,
    so as many stuck calls as the pool has threads do not block the next call."""
    gate = threading.Event()

    def stuck(ctx: FunctionContext) -> None:
        gate.wait(10)

    def quick(ctx: FunctionContext) -> str:
        return "ran"

    try:
        for _ in range(threads.size):
            with pytest.raises(FunctionTimeoutError):
                await invoker.call(function(stuck, timeout=0.05), ctx())
        assert threads.abandoned == threads.size
        assert await invoker.call(function(quick, timeout=2), ctx()) == ("ran", True)
    finally:
        gate.set()


async def test_the_function_runs_in_the_callers_task_from_its_first_step(
    invoker: Invoker,
) -> None:
    """Its first step runs at once, in the task that awaits the call: asyncio.timeout inside
    the function, entered before the first suspension, cancels the function and nothing else."""
    seen: list[asyncio.Task[Any] | None] = []

    async def main(ctx: FunctionContext) -> str:
        seen.append(asyncio.current_task())
        try:
            async with asyncio.timeout(0.01):
                await asyncio.sleep(30)
        except TimeoutError:
            return "its own timeout"
        return "unreachable"

    async def caller() -> tuple[Any, bool]:
        return await invoker.call(function(main), ctx())

    task = asyncio.ensure_future(caller())
    assert await task == ("its own timeout", True)
    assert seen == [task]
