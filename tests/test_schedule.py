"""Scheduled functions in one process: ``schedule = 1`` / a cron string, ctx.method SCHEDULE,
bad settings, hot reload, no overlap, bounded shutdown.

Runs are recorded in ``cloud.shared`` (the server runs in this process); nothing sleeps to
wait: every wait polls with a deadline. Schedules are 1 s, so each test takes a few seconds.
"""

from __future__ import annotations

import itertools
import logging
import math
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from laf_py import cloud
from laf_py.core.schedule import Schedule, parse_schedule, setting_line
from laf_py.testing import LafTestServer

from .conftest import wait_until, write_function

# Each scheduled run appends {"method", "request_id", "tick", "thread", ...} to cloud.shared[key].
RECORDER = """
import threading
import time
from laf_py import cloud

{settings}

def record(ctx, **extra):
    runs = cloud.shared.setdefault({key!r}, [])
    runs.append({{
        "method": ctx.method,
        "request_id": ctx.request_id,
        "tick": ctx.params["scheduled_at"].timestamp(),
        "thread": threading.current_thread().name,
        **extra,
    }})

{kind}def main(ctx):
    if ctx.method == "SCHEDULE":
        record(ctx, version={version!r})
        return None
    return {{"method": ctx.method, "runs": len(cloud.shared.get({key!r}, []))}}
"""


def recorder(key: str, settings: str, *, plain: bool = False, version: str = "v1") -> str:
    return RECORDER.format(
        key=key, settings=settings, kind="" if plain else "async ", version=version
    )


def runs(key: str) -> list[dict[str, Any]]:
    return list(cloud.shared.get(key, []))


@pytest.fixture(autouse=True)
def _fresh_shared() -> None:
    cloud.shared.clear()


def scheduled(server: LafTestServer) -> dict[str, Schedule]:
    scheduler = server.server.runtime.scheduler
    assert scheduler is not None
    return scheduler.scheduled


# -- the setting -------------------------------------------------------------------------------


def test_interval_ticks_are_multiples_of_the_interval_since_the_epoch() -> None:
    every_30 = parse_schedule(30, time.time())
    assert every_30 == Schedule(every=30.0)
    assert every_30.next_after(1_700_000_000.0) == 1_700_000_010.0  # :00 and :30
    assert every_30.next_after(1_700_000_010.0) == 1_700_000_040.0  # strictly after
    assert parse_schedule(1, 0).next_after(12.5) == 13.0


def test_cron_is_five_fields_in_utc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "America/New_York")  # the server's own time zone plays no part
    time.tzset()
    try:
        check_cron_in_utc()
    finally:
        monkeypatch.undo()
        time.tzset()


def check_cron_in_utc() -> None:
    schedule = parse_schedule("*/5  * * * *", time.time())
    assert schedule == Schedule(cron="*/5 * * * *")
    start = datetime(2025, 3, 30, 0, 59, 30, tzinfo=UTC).timestamp()
    assert schedule.next_after(start) == datetime(2025, 3, 30, 1, 0, tzinfo=UTC).timestamp()
    nightly = parse_schedule("30 2 * * mon", time.time())
    tick = nightly.next_after(start)
    assert tick == datetime(2025, 3, 31, 2, 30, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("*/5 * * *", "has 4 field(s), not the 5 of cron"),
        ("0 */5 * * * *", "has 6 field(s)"),
        ("30", "for seconds use a number"),
        ("61 * * * *", "not a valid cron expression: Bad minute"),
        ("0 0 30 2 *", "not a valid cron expression"),
        (0, "number of seconds >= 1"),
        (0.5, "number of seconds >= 1"),
        (math.inf, "number of seconds >= 1"),
        (True, "got True"),
        (["* * * * *"], "got ['* * * * *']"),
    ],
)
def test_bad_schedules_say_what_is_wrong(value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_schedule(value, time.time())


def test_setting_line_finds_the_last_assignment(tmp_path: Path) -> None:
    path = tmp_path / "f.py"
    path.write_text("import x\nschedule = 1\n\nschedule: str = '* * *'\ndef main(ctx): pass\n")
    assert setting_line(path) == 4
    path.write_text("def main(ctx): pass\n")
    assert setting_line(path) is None


# -- running -----------------------------------------------------------------------------------


async def test_scheduled_functions_run_each_second_and_stay_http_functions(
    serve: Any, functions_dir: Path, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """``schedule = 1``: async and plain ``def`` both run every second with ctx.method
    SCHEDULE and a request id of their own; the plain ``def`` in the thread pool. Both still
    answer HTTP; ``methods = []`` makes one schedule-only."""
    caplog.set_level(logging.INFO, logger="laf_py")
    write_function(functions_dir, "tick_async", recorder("async", "schedule = 1"))
    write_function(functions_dir, "tick_plain", recorder("plain", "schedule = 1.0", plain=True))
    write_function(
        functions_dir, "tick_only", recorder("only", "schedule = 1\nmethods = []", plain=True)
    )
    async with serve(functions_dir) as server:
        assert set(scheduled(server)) == {"tick_async", "tick_plain", "tick_only"}
        await wait_until(lambda: all(len(runs(k)) >= 2 for k in ("async", "plain", "only")))

        for key in ("async", "plain", "only"):
            recorded = runs(key)
            assert {r["method"] for r in recorded} == {"SCHEDULE"}
            ids = [r["request_id"] for r in recorded]
            assert len(set(ids)) == len(ids)
            assert all(re.fullmatch(r"[0-9a-f]{24}", i) for i in ids)
            ticks = [r["tick"] for r in recorded]
            assert ticks == sorted(set(ticks))  # one run per tick, in order
            assert all(t == int(t) for t in ticks)  # whole seconds
        assert all(r["thread"] == "MainThread" for r in runs("async"))
        assert all(r["thread"] != "MainThread" for r in runs("plain"))

        response = await http.get(server.fn_url("tick_async"))
        assert response.status_code == 200
        assert response.json()["method"] == "GET"
        assert response.json()["runs"] >= 2
        assert (await http.post(server.fn_url("tick_plain"))).json()["method"] == "POST"
        assert (await http.get(server.fn_url("tick_only"))).status_code == 405

        first = runs("async")[0]
        lines = [r.getMessage() for r in caplog.records]
        assert any(
            line.startswith("SCHEDULE tick_async at ")
            and " done in " in line
            and f"(request {first['request_id']})" in line
            for line in lines
        ), lines


async def test_a_failing_run_is_logged_with_its_request_id_and_the_next_tick_runs(
    serve: Any, functions_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="laf_py")
    write_function(
        functions_dir,
        "flaky",
        """
        from laf_py import cloud
        schedule = 1
        async def main(ctx):
            cloud.shared["flaky"] = cloud.shared.get("flaky", []) + [ctx.request_id]
            raise RuntimeError("boom")
        """,
    )
    async with serve(functions_dir):
        await wait_until(lambda: len(cloud.shared.get("flaky", [])) >= 2)
        first = cloud.shared["flaky"][0]
        await wait_until(
            lambda: any(
                f"function 'flaky' (request {first}) raised RuntimeError" in r.getMessage()
                and r.exc_info is not None
                for r in caplog.records
            )
        )
        assert any(
            "SCHEDULE flaky at" in r.getMessage() and " failed in " in r.getMessage()
            for r in caplog.records
        )


async def test_a_bad_schedule_fails_only_its_function(
    serve: Any, functions_dir: Path, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """The log names the file and the line of the setting; the others load and run."""
    write_function(
        functions_dir,
        "bad_cron",
        """
        import time

        schedule = "*/5 * * *"

        async def main(ctx):
            return "never"
        """,
    )
    write_function(functions_dir, "bad_number", "schedule = 0\ndef main(ctx):\n    return 1\n")
    write_function(functions_dir, "good", recorder("good", "schedule = 1"))
    async with serve(functions_dir) as server:
        messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert any(
            "bad_cron.py, line 3: schedule '*/5 * * *' has 4 field(s)" in m for m in messages
        ), messages
        assert any("bad_number.py, line 1: schedule must be" in m for m in messages), messages
        assert (await http.get(server.fn_url("bad_cron"))).status_code == 500
        assert (await http.get(server.fn_url("bad_number"))).status_code == 500
        assert set(scheduled(server)) == {"good"}
        await wait_until(lambda: len(runs("good")) >= 1)
        assert (await http.get(server.fn_url("good"))).status_code == 200


async def test_hot_reload_adds_changes_and_removes_schedules(
    serve: Any, functions_dir: Path
) -> None:
    """A ``clock`` function (schedule = 1) is the test's clock: "two more of its runs went by"
    stands for "two seconds passed" without sleeping."""
    write_function(functions_dir, "clock", recorder("clock", "schedule = 1"))
    write_function(functions_dir, "job", "def main(ctx):\n    return 'not scheduled yet'\n")
    write_function(functions_dir, "gone", recorder("gone", "schedule = 1"))

    async def two_clock_runs() -> None:
        target = len(runs("clock")) + 2
        await wait_until(lambda: len(runs("clock")) >= target)

    async with serve(functions_dir) as server:
        assert set(scheduled(server)) == {"clock", "gone"}

        # Added: the setting appears in an existing file.
        write_function(functions_dir, "job", recorder("job", "schedule = 1", version="v1"))
        await wait_until(lambda: len(runs("job")) >= 1)
        assert scheduled(server)["job"] == Schedule(every=1.0)

        # Changed: every 2 s now, with new code (its ticks are even seconds); and a file
        # deleted: its schedule goes with it.
        write_function(functions_dir, "job", recorder("job", "schedule = 2", version="v2"))
        (functions_dir / "gone.py").unlink()
        await wait_until(lambda: set(scheduled(server)) == {"clock", "job"})
        assert scheduled(server)["job"] == Schedule(every=2.0)
        gone = len(runs("gone"))
        await wait_until(lambda: any(r["version"] == "v2" for r in runs("job")))
        v2 = [r for r in runs("job") if r["version"] == "v2"]
        assert all(int(r["tick"]) % 2 == 0 for r in v2)
        await two_clock_runs()
        assert len(runs("gone")) == gone

        # Removed from the file: the function stays, its schedule goes.
        write_function(functions_dir, "job", "def main(ctx):\n    return 'manual'\n")
        await wait_until(lambda: "job" not in scheduled(server))
        count = len(runs("job"))
        await two_clock_runs()
        assert len(runs("job")) == count
        assert set(scheduled(server)) == {"clock"}


async def test_a_slow_run_is_not_overlapped(
    serve: Any, functions_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A run of 1.5 s on a 1 s schedule: the tick that comes while it runs is skipped (and
    logged), never run alongside it."""
    caplog.set_level(logging.INFO, logger="laf_py")
    write_function(
        functions_dir,
        "slow",
        """
        import asyncio, time
        from laf_py import cloud
        schedule = 1
        async def main(ctx):
            runs = cloud.shared.setdefault("slow", [])
            run = {"tick": ctx.params["scheduled_at"].timestamp(), "start": time.time()}
            runs.append(run)
            await asyncio.sleep(1.5)
            run["end"] = time.time()
        """,
    )
    async with serve(functions_dir):
        await wait_until(lambda: sum("end" in r for r in runs("slow")) >= 2, timeout=15)
        recorded = runs("slow")
        for before, after in itertools.pairwise(recorded):
            assert "end" in before
            assert after["start"] >= before["end"]
            assert after["tick"] - before["tick"] >= 2  # the tick in between was skipped
        assert any(
            "'slow' skipped its run at" in r.getMessage() and "still going" in r.getMessage()
            for r in caplog.records
        )


async def test_shutdown_does_not_wait_past_its_grace_for_a_scheduled_run(
    functions_dir: Path, tmp_path: Path
) -> None:
    write_function(
        functions_dir,
        "stuck",
        """
        import asyncio
        from laf_py import cloud
        schedule = 1
        async def main(ctx):
            cloud.shared["stuck"] = "running"
            try:
                await asyncio.sleep(60)
            finally:
                cloud.shared["stuck"] = "cancelled"
        """,
    )
    server = LafTestServer(functions_dir, data_dir=tmp_path / ".laf", shutdown_grace=0.5)
    await server.__aenter__()
    try:
        await wait_until(lambda: cloud.shared.get("stuck") == "running")
    finally:
        started = time.monotonic()
        await server.__aexit__(None, None, None)
    assert time.monotonic() - started < 2.0
    assert cloud.shared.get("stuck") == "cancelled"
