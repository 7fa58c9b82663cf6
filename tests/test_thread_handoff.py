"""How a plain ``def`` reaches its thread and comes back: ``FunctionThreads.run`` from the event
loop, the most recently idle thread first, calls given up on while queued never run, and what a
thread raises always reaches the caller."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from laf_py import cloud
from laf_py.core.threads import FunctionThreads

from .conftest import wait_until, write_function


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    """What blocked calls wait for; opened at the end of the test whatever happens."""
    event = threading.Event()
    yield event
    event.set()


@pytest.fixture
def pool() -> Iterator[FunctionThreads]:
    threads = FunctionThreads(size=4, name="handoff-fn")
    yield threads
    threads.shutdown()


async def test_the_most_recently_idle_thread_takes_the_next_call(
    pool: FunctionThreads, gate: threading.Event
) -> None:
    """Four threads exist; calls one at a time then go to the same one (warm, and a light
    load keeps to few threads), not round the pool. (Nearly all: on a loaded machine a thread
    can be late back to idle.)"""
    started = threading.Barrier(5)

    def hold() -> None:
        started.wait(10)
        assert gate.wait(10)

    held = [pool.run(hold) for _ in range(4)]
    await asyncio.to_thread(started.wait, 10)  # four threads, each on a call
    gate.set()
    await asyncio.wait_for(asyncio.gather(*held), 10)
    idents = [await asyncio.wait_for(pool.run(threading.get_ident), 10) for _ in range(12)]
    assert max(Counter(idents).values()) >= 9  # round the pool: 3 each


async def test_a_call_given_up_on_while_queued_never_runs(
    pool: FunctionThreads, gate: threading.Event
) -> None:
    """Behind four stuck calls, a call whose caller gave up (its time limit, say) is skipped
    when a thread frees up; the call behind it runs."""
    ran: list[str] = []
    stuck = [pool.run(gate.wait, 10) for _ in range(4)]
    given_up = pool.run(ran.append, "given up")
    wanted = pool.run(ran.append, "wanted")
    pool.abandon(given_up)
    assert given_up.cancelled()
    gate.set()
    await asyncio.wait_for(asyncio.gather(*stuck, wanted), 10)
    assert ran == ["wanted"]


async def test_what_a_thread_raises_reaches_the_caller(pool: FunctionThreads) -> None:
    """Any exception, SystemExit too; StopIteration (which a Future refuses) as a
    RuntimeError, never a caller left waiting."""

    def raises(exc: BaseException) -> None:
        raise exc

    with pytest.raises(ValueError, match="boom"):
        await asyncio.wait_for(pool.run(raises, ValueError("boom")), 10)
    with pytest.raises(SystemExit):
        await asyncio.wait_for(pool.run(raises, SystemExit(3)), 10)
    with pytest.raises(RuntimeError, match="StopIteration"):
        await asyncio.wait_for(pool.run(raises, StopIteration()), 10)
    assert await asyncio.wait_for(pool.run(lambda: "still here"), 10) == "still here"
    assert pool.running == 0


async def test_a_plain_def_raising_stop_iteration_is_a_500(serve, functions_dir: Path) -> None:
    write_function(functions_dir, "stops", "def main(ctx):\n    raise StopIteration\n")
    write_function(functions_dir, "fine", "def main(ctx):\n    return 'fine'\n")
    async with serve(functions_dir) as server, httpx.AsyncClient(timeout=10) as client:
        response = await client.get(server.fn_url("stops"))
        assert response.status_code == 500
        assert (await client.get(server.fn_url("fine"))).text == "fine"


async def test_a_plain_def_returning_a_coroutine_keeps_its_time_limit(
    serve, functions_dir: Path
) -> None:
    """The coroutine a plain ``def`` returns is awaited within what is left of its time."""
    write_function(
        functions_dir,
        "late",
        """
        import asyncio

        timeout = 0.3

        def main(ctx):
            return asyncio.sleep(30)
        """,
    )
    async with serve(functions_dir) as server, httpx.AsyncClient(timeout=10) as client:
        response = await client.get(server.fn_url("late"))
        assert response.status_code == 504
        assert "timed out after 0.3s" in response.json()["error"]


BLOCKS = """
from laf_py import cloud

timeout = {timeout}

def main(ctx):
    cloud.shared["gate"].wait(10)
    return "late"
"""


async def test_a_shorter_limit_after_a_longer_one_still_ends_on_time(
    serve, functions_dir: Path, gate: threading.Event
) -> None:
    """Plain-def time limits share one timer: a call with 0.2 s, started while one with 8 s
    waits, still gets its 504 at about 0.2 s, not at the other's deadline."""
    write_function(functions_dir, "long", BLOCKS.format(timeout=8))
    write_function(functions_dir, "short", BLOCKS.format(timeout=0.2))
    async with serve(functions_dir) as server, httpx.AsyncClient(timeout=30) as client:
        cloud.shared["gate"] = gate
        long_call = asyncio.create_task(client.get(server.fn_url("long")))
        await wait_until(lambda: server.server.runtime.threads.running == 1)
        started = asyncio.get_running_loop().time()
        response = await client.get(server.fn_url("short"))
        assert response.status_code == 504
        assert asyncio.get_running_loop().time() - started < 4
        gate.set()
        assert (await long_call).text == "late"
