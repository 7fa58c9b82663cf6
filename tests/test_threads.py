"""The threads of plain-``def`` functions: 40 of them, and calls past their time limit give
their place to new threads instead of starving every other plain ``def``."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import httpx
import pytest

from laf_py import cloud
from laf_py.core.threads import FUNCTION_THREADS, FunctionThreads

from .conftest import wait_until, write_function


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    """What blocked calls wait for; opened at the end of the test whatever happens."""
    event = threading.Event()
    yield event
    event.set()


@pytest.fixture
def pool() -> Iterator[FunctionThreads]:
    threads = FunctionThreads(size=2, name="test-fn")
    yield threads
    threads.shutdown()


def pool_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("test-fn-")]


def blocker(gate: threading.Event, started: list[int]) -> Callable[[int], int]:
    def block(number: int) -> int:
        started.append(number)
        assert gate.wait(10), "the test never opened the gate"
        return number

    return block


async def result(future: Future[Any]) -> Any:
    return await asyncio.wait_for(asyncio.wrap_future(future), 10)


# -- the pool on its own -------------------------------------------------------------------


async def test_calls_beyond_the_size_wait_for_a_thread(
    pool: FunctionThreads, gate: threading.Event
) -> None:
    started: list[int] = []
    block = blocker(gate, started)
    calls = [pool.submit(block, n) for n in range(3)]
    await wait_until(lambda: len(started) == 2)
    assert pool.running == 2
    assert not calls[2].running()  # queued: both threads are taken
    gate.set()
    assert [await result(call) for call in calls] == [0, 1, 2]
    assert len(pool_threads()) == 2


async def test_an_abandoned_call_gives_its_place_to_a_new_thread(
    pool: FunctionThreads, gate: threading.Event
) -> None:
    """Both threads stuck and given up on: the next call still runs, in a third thread; when
    the stuck calls end, the pool shrinks back to its size."""
    started: list[int] = []
    stuck = [pool.submit(blocker(gate, started), n) for n in range(2)]
    await wait_until(lambda: len(started) == 2)
    for call in stuck:
        pool.abandon(call)
    assert pool.abandoned == 2
    assert await result(pool.submit(lambda: "runs")) == "runs"
    # The abandoned calls, still going (the third thread leaves the count just after its
    # result is out).
    await wait_until(lambda: pool.running == 2)
    assert pool.abandoned == 2
    gate.set()
    assert [await result(call) for call in stuck] == [0, 1]
    await wait_until(lambda: pool.running == 0 and len(pool_threads()) == 2)


async def test_abandoning_a_queued_call_cancels_it(
    pool: FunctionThreads, gate: threading.Event
) -> None:
    started: list[int] = []
    block = blocker(gate, started)
    running = [pool.submit(block, n) for n in range(2)]
    queued = pool.submit(block, 2)
    await wait_until(lambda: len(started) == 2)
    pool.abandon(queued)
    gate.set()
    assert [await result(call) for call in running] == [0, 1]
    assert queued.cancelled()
    assert started == [0, 1]


async def test_exceptions_reach_the_future_and_the_thread_goes_on(pool: FunctionThreads) -> None:
    def fails(exc: BaseException) -> None:
        raise exc

    with pytest.raises(ValueError, match="boom"):
        await result(pool.submit(fails, ValueError("boom")))
    with pytest.raises(SystemExit):
        await result(pool.submit(fails, SystemExit(3)))
    assert await result(pool.submit(lambda: "still here")) == "still here"


async def test_shutdown_cancels_queued_calls_and_waits_for_none(
    pool: FunctionThreads, gate: threading.Event
) -> None:
    started: list[int] = []
    block = blocker(gate, started)
    running = [pool.submit(block, n) for n in range(2)]
    queued = pool.submit(block, 2)
    await wait_until(lambda: len(started) == 2)
    assert all(t.daemon for t in pool_threads())  # nor do they hold the interpreter's exit
    pool.shutdown()  # returns at once although two calls are blocked
    assert queued.cancelled()
    with pytest.raises(RuntimeError, match="shut down"):
        pool.submit(block, 3)
    gate.set()
    assert [await result(call) for call in running] == [0, 1]
    await wait_until(lambda: not pool_threads())  # the threads end once idle


# -- through a real server -------------------------------------------------------------------

BLOCKS = """
from laf_py import cloud

timeout = {timeout}

def main(ctx):
    cloud.shared.setdefault("started", []).append(ctx.request_id)
    assert cloud.shared["gate"].wait(30)
    return "done"
"""


async def test_forty_plain_def_calls_run_at_once(
    serve, functions_dir: Path, gate: threading.Event
) -> None:
    write_function(functions_dir, "block", BLOCKS.format(timeout=30))
    async with serve(functions_dir) as server, httpx.AsyncClient(timeout=30) as http:
        cloud.shared["gate"] = gate
        calls = [asyncio.ensure_future(http.get(server.fn_url("block"))) for _ in range(40)]
        try:
            await wait_until(lambda: len(cloud.shared.get("started", [])) == 40)
            assert server.server.runtime.threads.running == 40
        finally:
            gate.set()
            responses = await asyncio.gather(*calls)
        assert [r.status_code for r in responses] == [200] * 40


async def test_plain_defs_still_run_after_more_calls_than_threads_timed_out_stuck(
    serve, functions_dir: Path, gate: threading.Event
) -> None:
    """FUNCTION_THREADS + 5 calls time out (504) and stay stuck in their threads; other plain
    ``def`` functions (HTTP, and the interceptor in front of them) still answer at once."""
    stuck_calls = FUNCTION_THREADS + 5
    write_function(functions_dir, "block", BLOCKS.format(timeout=0.3))
    write_function(functions_dir, "hello", "def main(ctx):\n    return 'hi'\n")
    write_function(functions_dir, "__interceptor__", "def main(ctx, next):\n    return next(ctx)\n")
    async with serve(functions_dir, timeout=3) as server, httpx.AsyncClient(timeout=30) as http:
        cloud.shared["gate"] = gate
        threads = server.server.runtime.threads
        try:
            responses = await asyncio.gather(
                *(http.get(server.fn_url("block")) for _ in range(stuck_calls))
            )
            assert [r.status_code for r in responses] == [504] * stuck_calls
            hello = await asyncio.gather(*(http.get(server.fn_url("hello")) for _ in range(10)))
            assert [(r.status_code, r.text) for r in hello] == [(200, "hi")] * 10
            # Every stuck call got a thread of its own, and all are still blocked there.
            assert len(cloud.shared["started"]) == stuck_calls
            assert threads.abandoned == stuck_calls
        finally:
            gate.set()
        await wait_until(lambda: threads.running == 0)
        # The stuck threads finished; those beyond the pool's size have ended.
        await wait_until(
            lambda: (
                sum(t.name.startswith("laf-fn-") for t in threading.enumerate()) <= FUNCTION_THREADS
            )
        )
