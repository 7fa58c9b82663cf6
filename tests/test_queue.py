"""``cloud.queue``: jobs stored in the SQL database and run by a worker in every process.

In-process servers share the test's event loop, so the test body calls ``cloud.queue`` itself;
the crash and ``--workers 2`` tests run ``laf-py serve`` in child processes. Runs are recorded
in ``cloud.kv`` (one key per run), so a job that ran twice shows up as two keys.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from laf_py import cloud

from .conftest import CliServer, frame_matching, wait_until, write_function

# Records every run: kv key "run/<job id>/<request id>" → what the job saw.
RECORD = """
from laf_py import cloud

async def main(ctx):
    seen = {
        "method": ctx.method,
        "body": ctx.body,
        "user": ctx.user,
        "params": ctx.params,
        "request_id": ctx.request_id,
    }
    await cloud.kv.set(f"run/{ctx.params['job_id']}/{ctx.request_id}", seen)
    return {"echo": ctx.body}
"""

# Pushes from an HTTP call (so the job gets this call's user), async and plain def.
PUSH_ASYNC = """
from laf_py import cloud

async def main(ctx):
    job_id = await cloud.queue.push(ctx.body["function"], ctx.body.get("payload"))
    return {"job": job_id, "request_id": ctx.request_id}
"""

PUSH_SYNC = """
from laf_py import cloud

def main(ctx):
    job_id = cloud.queue.push(ctx.body["function"], ctx.body.get("payload")).result()
    return {"job": job_id, "request_id": ctx.request_id}
"""

FAILING = """
from laf_py import cloud

queue_attempts = 3
queue_backoff = 0.05

async def main(ctx):
    await cloud.kv.set(f"run/{ctx.params['job_id']}/{ctx.request_id}", ctx.params["attempt"])
    raise ValueError(f"boom {ctx.params['attempt']}")
"""

# Waits for the test to open its gate (an asyncio.Event in cloud.shared).
GATED = """
import asyncio

from laf_py import cloud

queue_concurrency = 2

async def main(ctx):
    cloud.shared["running"] = cloud.shared.get("running", 0) + 1
    cloud.shared["most"] = max(cloud.shared.get("most", 0), cloud.shared["running"])
    try:
        await cloud.shared.setdefault("gates", {}).setdefault(ctx.body, asyncio.Event()).wait()
    finally:
        cloud.shared["running"] -= 1
"""

NOTIFY = """
from laf_py import cloud

async def main(ctx):
    await cloud.sockets.send_to_user(ctx.user["uid"], {"job": ctx.params["job_id"], "done": True})
"""

WEBSOCKET = """
async def main(ctx):
    pass
"""


async def runs(job_id: str) -> list[Any]:
    """What each run of the job saw, from the kv records."""
    keys = await cloud.kv.keys(f"run/{job_id}/")
    return [await cloud.kv.get(key) for key in keys]


async def state_is(job_id: str, state: str) -> Any:
    job = await cloud.queue.get(job_id)
    return job if job is not None and job.state == state else None


# -- in one process ---------------------------------------------------------------------------


async def test_job_runs_once_as_its_pushers_user(
    serve: Any, functions_dir: Path, database_url: str
) -> None:
    """Pushed from async and plain-def HTTP calls with a token: the job runs once, with
    ctx.method QUEUE, the payload as body, the pusher's user and a fresh request id."""
    write_function(functions_dir, "record", RECORD)
    write_function(functions_dir, "push_async", PUSH_ASYNC)
    write_function(functions_dir, "push_sync", PUSH_SYNC)
    async with (
        serve(functions_dir, database_url=database_url) as server,
        httpx.AsyncClient(timeout=10) as http,
    ):
        token = cloud.get_token({"uid": "alice"})
        for pusher in ("push_async", "push_sync"):
            payload = {"n": 1, "via": pusher}
            response = await http.post(
                server.fn_url(pusher),
                json={"function": "record", "payload": payload},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert response.status_code == 200, response.text
            job_id, pushing_request = response.json()["job"], response.json()["request_id"]

            job = await wait_until(lambda j=job_id: state_is(j, "done"))
            assert job.attempts == 1 and job.result == {"echo": payload} and job.error is None
            assert job.user["uid"] == "alice" and job.payload == payload
            [seen] = await runs(job_id)
            assert seen["method"] == "QUEUE"
            assert seen["body"] == payload
            assert seen["user"]["uid"] == "alice"
            assert seen["params"] == {"job_id": job_id, "attempt": 1}
            assert seen["request_id"] != pushing_request and len(seen["request_id"]) == 24

        # Pushed outside any call: no user.
        job_id = await cloud.queue.push("record", [1, 2])
        job = await wait_until(lambda: state_is(job_id, "done"))
        assert job.user is None and job.result == {"echo": [1, 2]}
        assert await cloud.queue.get("no-such-job") is None


async def test_failing_job_is_retried_then_kept_failed_with_its_error(
    serve: Any, functions_dir: Path, database_url: str
) -> None:
    """queue_attempts = 3: three runs with backoff, then state "failed" and the last error."""
    write_function(functions_dir, "failing", FAILING)
    async with serve(functions_dir, database_url=database_url):
        job_id = await cloud.queue.push("failing", {"x": 1})
        job = await wait_until(lambda: state_is(job_id, "failed"))
        assert job.attempts == 3
        assert job.error == "ValueError: boom 3"
        assert job.finished_at is not None and job.next_run_at is None
        assert sorted(await runs(job_id)) == [1, 2, 3]


async def test_key_deduplicates_while_pending(serve: Any, functions_dir: Path) -> None:
    """A second push with the key of a pending job returns that job; once it has started, the
    key is free again."""
    write_function(functions_dir, "gated", GATED)
    async with serve(functions_dir):
        first = await cloud.queue.push("gated", "a", key="k", delay=3600)
        assert await cloud.queue.push("gated", "b", key="k") == first
        assert await cloud.queue.push("gated", "c", key="other", delay=3600) != first
        assert await cloud.queue.push("gated", "d", delay=3600) != first  # no key: a new job
        job = await cloud.queue.get(first)
        assert job.state == "pending" and job.payload == "a" and job.key == "k"

        running = await cloud.queue.push("gated", "e", key="now")
        await wait_until(lambda: state_is(running, "running"))
        again = await cloud.queue.push("gated", "f", key="now", delay=3600)
        assert again != running
        assert await cloud.queue.push("gated", "g", key="now") == again
        cloud.shared["gates"]["e"].set()
        await wait_until(lambda: state_is(running, "done"))


async def test_push_refuses_unknown_functions_and_bad_payloads(
    serve: Any, functions_dir: Path
) -> None:
    write_function(functions_dir, "record", RECORD)
    write_function(functions_dir, "broken", "def main(ctx):\n    return (\n")
    write_function(functions_dir, "__websocket__", WEBSOCKET)
    write_function(functions_dir, "bad_setting", "queue_concurrency = 0\ndef main(ctx): pass\n")
    async with serve(functions_dir):
        with pytest.raises(ValueError, match=r"'missing'.*no such function"):
            cloud.queue.push("missing", {})
        with pytest.raises(ValueError, match=r"'broken'.*failed to load"):
            cloud.queue.push("broken", {})
        with pytest.raises(ValueError, match="'__websocket__'"):
            cloud.queue.push("__websocket__", {})
        with pytest.raises(ValueError, match="queue_concurrency must be"):
            cloud.queue.push("bad_setting", {})
        with pytest.raises(TypeError, match="not JSON-serialisable"):
            cloud.queue.push("record", object())
        with pytest.raises(ValueError, match="delay"):
            cloud.queue.push("record", {}, delay=-1)


async def test_queue_concurrency_limits_jobs_of_a_function(serve: Any, functions_dir: Path) -> None:
    """queue_concurrency = 2: of six jobs, never more than two run at once."""
    write_function(functions_dir, "gated", GATED)
    async with serve(functions_dir):
        names = [f"job{i}" for i in range(6)]
        ids = [await cloud.queue.push("gated", name) for name in names]
        await wait_until(lambda: cloud.shared.get("running") == 2)
        for name, job_id in zip(names, ids, strict=True):
            await wait_until(lambda n=name: n in cloud.shared.get("gates", {}))
            cloud.shared["gates"][name].set()
            await wait_until(lambda j=job_id: state_is(j, "done"))
        assert cloud.shared["most"] == 2


async def test_job_survives_a_restart(serve: Any, functions_dir: Path, database_url: str) -> None:
    """A delayed job and one interrupted by the shutdown both run after the next start; the
    interrupted attempt does not count."""
    write_function(functions_dir, "gated", GATED)
    write_function(functions_dir, "record", RECORD)
    async with serve(functions_dir, database_url=database_url, shutdown_grace=0.2):
        interrupted = await cloud.queue.push("gated", "never")
        delayed = await cloud.queue.push("record", "later", delay=2)
        await wait_until(lambda: state_is(interrupted, "running"))
        assert (await cloud.queue.get(delayed)).state == "pending"
    write_function(functions_dir, "gated", RECORD)  # the next version finishes
    async with serve(functions_dir, database_url=database_url):
        job = await wait_until(lambda: state_is(interrupted, "done"))
        assert job.attempts == 1 and job.error is None
        job = await wait_until(lambda: state_is(delayed, "done"))
        assert job.result == {"echo": "later"} and len(await runs(delayed)) == 1


async def test_job_notifies_its_users_sockets(
    serve: Any, functions_dir: Path, database_url: str
) -> None:
    write_function(functions_dir, "__websocket__", WEBSOCKET)
    write_function(functions_dir, "notify", NOTIFY)
    write_function(functions_dir, "push_async", PUSH_ASYNC)
    async with serve(functions_dir, database_url=database_url) as server:
        token = cloud.get_token({"uid": "bob"})
        async with (
            websockets.connect(f"{server.ws_url}?token={token}") as ws,
            httpx.AsyncClient(timeout=10) as http,
        ):
            response = await http.post(
                server.fn_url("push_async"),
                json={"function": "notify"},
                headers={"Authorization": f"Bearer {token}"},
            )
            job_id = response.json()["job"]
            frame = await frame_matching(ws, lambda f: isinstance(f, dict) and "job" in f)
            assert frame == {"job": job_id, "done": True}


# -- several processes ------------------------------------------------------------------------

SLOW = """
import asyncio

from laf_py import cloud

timeout = 2

async def main(ctx):
    await cloud.kv.set(f"run/{ctx.params['job_id']}/{ctx.params['attempt']}", os.getpid())
    if ctx.params["attempt"] == 1:
        await asyncio.sleep(3600)  # killed before its timeout
    return "finished"

import os
"""

STATUS = """
from laf_py import cloud

async def main(ctx):
    job = await cloud.queue.get(ctx.query["job"])
    runs = {key: await cloud.kv.get(key) for key in await cloud.kv.keys("run/")}
    return {"state": job.state, "attempts": job.attempts, "result": job.result, "runs": runs}
"""

FILL = """
import asyncio

from laf_py import cloud

async def main(ctx):
    await asyncio.gather(*(cloud.queue.push("tally", i) for i in range(ctx.body["count"])))
"""

# Each run appends one line to a file (O_APPEND: whole lines, whichever process writes).
TALLY = """
import asyncio
import os

queue_concurrency = 20

async def main(ctx):
    with open(os.environ["TALLY_FILE"], "a") as tally:
        tally.write(f"{ctx.params['job_id']} {os.getpid()}\\n")
    # Long enough that one worker alone needs seconds for them all (1000 / 20 x 50 ms): the
    # other, even if no push woke it, finds jobs at its next look (once a second).
    await asyncio.sleep(0.05)
"""

COUNT = """
from laf_py import cloud

async def main(ctx):
    rows = await cloud.sql.execute("SELECT state, count(*) FROM laf_jobs GROUP BY state")
    return dict(rows.all())
"""


async def test_job_runs_again_after_its_process_is_killed(
    cli_server: Any, tmp_path: Path, database_url: str
) -> None:
    """SIGKILL mid-job: the next server claims the job once its lease (timeout + 2 s) ends."""
    functions = tmp_path / "functions"
    write_function(functions, "slow", SLOW)
    write_function(functions, "status", STATUS)
    write_function(functions, "push_async", PUSH_ASYNC)
    args = ("--database-url", database_url, "--secret", "q" * 40)
    server: CliServer = cli_server(*args, cwd=tmp_path)
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(f"{server.url}/fn/push_async", json={"function": "slow"})
        job_id = response.json()["job"]

        async def status(url: str) -> Any:
            return (await http.get(f"{url}/fn/status", params={"job": job_id})).json()

        await wait_until(lambda: _has_run(status(server.url), job_id, 1))
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait(10)

        started = time.monotonic()
        second: CliServer = cli_server(*args, cwd=tmp_path)
        final = await wait_until(lambda: _finished(status(second.url)), timeout=20)
        assert final["state"] == "done" and final["result"] == "finished"
        assert final["attempts"] == 2
        assert sorted(final["runs"]) == [f"run/{job_id}/1", f"run/{job_id}/2"]
        assert time.monotonic() - started < 15


async def _has_run(status: Any, job_id: str, attempt: int) -> bool:
    return f"run/{job_id}/{attempt}" in (await status)["runs"]


async def _finished(status: Any) -> Any:
    result = await status
    return result if result["state"] == "done" else None


async def test_two_sqlite_workers_never_run_a_job_twice(
    cli_server: Any, tmp_path: Path, redis_url: str, cluster: str
) -> None:
    """``--workers 2`` on one SQLite file: 1,000 jobs, each run exactly once, by both."""
    functions = tmp_path / "functions"
    write_function(functions, "fill", FILL)
    write_function(functions, "tally", TALLY)
    write_function(functions, "count", COUNT)
    tally = tmp_path / "tally.txt"
    server: CliServer = cli_server(
        "--workers", "2", "--redis-url", redis_url, "--cluster", cluster, "--secret", "w" * 40,
        cwd=tmp_path, env={"TALLY_FILE": str(tally)},
    )  # fmt: skip
    total = 1000
    async with httpx.AsyncClient(timeout=30) as http:
        # From several connections, so that both workers push and so both wake up at once.
        fills = [http.post(f"{server.url}/fn/fill", json={"count": total // 10}) for _ in range(10)]
        for response in await asyncio.gather(*fills):
            assert response.status_code == 204, response.text

        async def drained() -> Any:
            states = (await http.get(f"{server.url}/fn/count")).json()
            return states.get("done") == total

        await wait_until(drained, timeout=30)
    runs = [line.split() for line in tally.read_text().splitlines()]
    assert len(runs) == total
    assert len({job_id for job_id, _ in runs}) == total  # each job once
    assert len({pid for _, pid in runs}) == 2  # and both workers took part
