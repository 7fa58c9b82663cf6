"""How fast one laf-py process drains trivial queued jobs, on SQLite and on PostgreSQL.

    .venv/bin/python bench/queue_drain.py [--jobs 5000] [--postgres postgresql://...]

Each run starts an in-process server on a fresh database, pushes ``--jobs`` jobs for a function
that returns at once (``queue_concurrency = 50``), all due at the same moment, and times from
that moment until the last one is recorded done. It prints jobs per second; the target is
300/s on each database. PostgreSQL gets a database of its own, dropped afterwards; without a
reachable server that run is skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from laf_py import cloud  # noqa: E402
from laf_py.testing import LafTestServer  # noqa: E402

NOOP = """
queue_concurrency = 50

async def main(ctx):
    return None
"""


async def drain(database_url: str, jobs: int, folder: Path) -> tuple[float, float]:
    """(pushes per second, jobs drained per second)."""
    async with LafTestServer(folder / "functions", database_url=database_url):
        lead = 2.0 + jobs / 2000  # every job is due at once, after all of them are stored
        pushed = time.perf_counter()
        due = time.time() + lead
        for start in range(0, jobs, 500):
            chunk = range(start, min(start + 500, jobs))
            await asyncio.gather(
                *(cloud.queue.push("noop", i, delay=due - time.time()) for i in chunk)
            )
        push_rate = jobs / (time.perf_counter() - pushed)
        if time.time() >= due:
            raise RuntimeError("pushing took longer than the lead; use fewer --jobs")
        await asyncio.sleep(due - time.time())
        began = time.perf_counter()
        while True:
            done = (
                await cloud.sql.execute("SELECT count(*) FROM laf_jobs WHERE state = 'done'")
            ).scalar()
            if done == jobs:
                return push_rate, jobs / (time.perf_counter() - began)
            await asyncio.sleep(0.005)


async def postgres_database(admin_dsn: str) -> str | None:
    import asyncpg

    name = f"laf_py_bench_{os.getpid()}"
    try:
        admin = await asyncpg.connect(admin_dsn, timeout=5)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        print(f"postgresql: skipped ({exc})")
        return None
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return name


async def drop_database(admin_dsn: str, name: str) -> None:
    import asyncpg

    admin = await asyncpg.connect(admin_dsn, timeout=5)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument(
        "--postgres",
        default=os.environ.get("LAF_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"),
        help="an admin DSN; the benchmark creates and drops a database of its own",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="laf-queue-bench-") as scratch:
        folder = Path(scratch)
        (folder / "functions").mkdir()
        (folder / "functions" / "noop.py").write_text(NOOP)
        url = f"sqlite+aiosqlite:///{folder / 'laf.db'}"
        pushes, drained = await drain(url, args.jobs, folder)
        print(
            f"sqlite:     {drained:7.0f} jobs/s drained ({pushes:.0f} pushes/s), {args.jobs} jobs"
        )
        name = await postgres_database(args.postgres)
        if name is not None:
            base = args.postgres.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
            try:
                pushes, drained = await drain(f"{base}/{name}", args.jobs, folder)
            finally:
                await drop_database(args.postgres, name)
            print(
                f"postgresql: {drained:7.0f} jobs/s drained ({pushes:.0f} pushes/s), "
                f"{args.jobs} jobs"
            )


if __name__ == "__main__":
    asyncio.run(main())
