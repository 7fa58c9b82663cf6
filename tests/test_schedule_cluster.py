"""Scheduled functions across processes: two nodes of one cluster, and ``--workers 2``, run
each tick once for the whole deployment, and a slow run is never overlapped by another
process. Each run is a row in PostgreSQL, which every process shares; the test counts them.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from laf_py.bus.ticks import RedisTicks
from laf_py.scheduler import Claim

from .conftest import CliServer, wait_until, write_function

pg_only = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)

RECORD = """
import asyncio, os, time
from sqlalchemy import text
from laf_py import cloud

schedule = 1

async def main(ctx):
    started = time.time()
    if {seconds}:
        await asyncio.sleep({seconds})
    async with cloud.sql.session() as session:
        await session.execute(
            text("INSERT INTO ticks (name, tick, pid, started, ended) "
                 "VALUES (:name, :tick, :pid, :started, :ended)"),
            {{"name": {name!r}, "tick": ctx.params["scheduled_at"].timestamp(),
              "pid": os.getpid(), "started": started, "ended": time.time()}},
        )
        await session.commit()
    if ctx.method != "SCHEDULE":
        raise RuntimeError(ctx.method)
"""


@pytest.fixture
async def ticks(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    dsn = database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    connection = await asyncpg.connect(dsn)
    await connection.execute(
        "CREATE TABLE ticks (name text, tick double precision, pid int, "
        "started double precision, ended double precision)"
    )
    yield connection
    await connection.close()


@pytest.fixture
def folder(functions_dir: Path) -> Path:
    write_function(functions_dir, "fast", RECORD.format(name="fast", seconds=0))
    write_function(functions_dir, "slow", RECORD.format(name="slow", seconds=1.5))
    return functions_dir


@pg_only
@pytest.mark.parametrize("layout", ["two nodes", "two workers"])
async def test_one_run_per_tick_and_no_overlap_for_the_whole_deployment(
    layout: str,
    cli_server: Callable[..., CliServer],
    folder: Path,
    ticks: asyncpg.Connection,
    database_url: str,
    redis_url: str,
    cluster: str,
) -> None:
    args = [
        *("--functions", str(folder), "--database-url", database_url),
        *("--redis-url", redis_url, "--cluster", cluster, "--heartbeat", "0.25"),
        *("--shutdown-grace", "2", "--reload", "false"),
    ]
    # A short heartbeat makes the "running" lease (three beats, 0.75 s) shorter than the slow
    # run: only renewing it keeps the next tick from overlapping.
    env = {"LAF_SECRET": "s" * 32}
    if layout == "two nodes":
        cli_server(*args, env=env)
        cli_server(*args, env=env)
    else:
        cli_server(*args, "--workers", "2", env=env)
    since = time.time()  # both processes are serving from here on

    async def rows(name: str) -> list[Any]:
        return list(
            await ticks.fetch(
                "SELECT tick, pid, started, ended FROM ticks WHERE name = $1 AND tick >= $2 "
                "ORDER BY tick",
                name,
                since,
            )
        )

    async def enough() -> bool:
        return len(await rows("fast")) >= 4 and len(await rows("slow")) >= 2

    await wait_until(enough, timeout=20)
    fast = await rows("fast")
    fast_ticks = [row["tick"] for row in fast]
    assert len(set(fast_ticks)) == len(fast_ticks), f"a tick ran twice: {fast}"
    assert all(t == int(t) for t in fast_ticks)

    slow = await rows("slow")
    slow_ticks = [row["tick"] for row in slow]
    assert len(set(slow_ticks)) == len(slow_ticks), f"a tick ran twice: {slow}"
    for before, after in itertools.pairwise(slow):
        assert after["started"] >= before["ended"], f"runs overlapped: {slow}"
        assert after["tick"] - before["tick"] >= 2, f"a tick came while a run went on: {slow}"
    assert os.getpid() not in {row["pid"] for row in fast + slow}


async def test_a_dead_holders_running_marker_expires_within_its_lease(
    redis_url: str, cluster: str
) -> None:
    """Node A claims a tick and dies mid-run (never renews, never releases): the next ticks
    are skipped until its lease runs out, then B runs them. A live holder that renews keeps
    its marker past the lease."""
    a = RedisTicks(redis_url, cluster, "node-a", lease=0.3)
    b = RedisTicks(redis_url, cluster, "node-b", lease=0.3)
    try:
        assert await a.claim("job", 100.0) is Claim.RUN
        assert await b.claim("job", 100.0) is Claim.TAKEN  # each tick once
        assert await b.claim("job", 99.0) is Claim.TAKEN  # a late timer cannot go back
        assert await b.claim("job", 101.0) is Claim.BUSY  # no overlap
        tick = 101.0

        async def b_runs_the_next_tick() -> bool:
            nonlocal tick
            tick += 1
            return await b.claim("job", tick) is Claim.RUN

        started = time.monotonic()
        await wait_until(b_runs_the_next_tick, timeout=3)
        assert time.monotonic() - started < 1.0  # the 0.3 s lease, not a's time limit
        assert not await a.keep("job", 100.0)

        # B is alive: renewing every 0.1 s, it keeps its marker past the lease.
        past_the_lease = time.monotonic() + 0.6

        async def renewed_past_the_lease() -> bool:
            assert await b.keep("job", tick)
            return time.monotonic() > past_the_lease

        await wait_until(renewed_past_the_lease, interval=0.1)
        assert await a.claim("job", tick + 1) is Claim.BUSY
        await b.finished("job", tick)
        assert await a.claim("job", tick + 2) is Claim.RUN
    finally:
        await a.close()
        await b.close()
