"""laf_py.testing as users use it: TestClient from plain synchronous tests, AsyncTestClient from
async ones, each with a server and a data folder of its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from laf_py.testing import AsyncTestClient, LafTestServer, TestClient, WebSocketClosed

from .conftest import write_function

COUNTER = """
from laf_py import cloud

async def main(ctx):
    count = (await cloud.kv.get("count", 0)) + 1
    await cloud.kv.set("count", count)
    return {"count": count, "user": ctx.user and ctx.user.get("uid")}
"""

SOCKET = """
from laf_py import HTTPError

async def main(ctx):
    if ctx.method == "WebSocket:connection":
        if ctx.query.get("go") == "away":
            raise HTTPError(403, "not you")
        ctx.socket.send({"user": ctx.socket.user_id, "room": ctx.query.get("room")})
    elif ctx.method == "WebSocket:message":
        ctx.socket.send(ctx.params["data"])
"""


@pytest.fixture
def app(tmp_path: Path) -> Path:
    write_function(tmp_path / "functions", "counter", COUNTER)
    write_function(tmp_path / "functions", "__websocket__", SOCKET)
    return tmp_path


def test_two_clients_at_once_do_not_share_data(app: Path) -> None:
    """Each client has its own database: counts start over, and the app's own .laf/ (the
    development data) is never touched."""
    with TestClient(app) as first, TestClient(app) as second:
        assert first.get("counter").json()["count"] == 1
        assert first.get("counter").json()["count"] == 2
        assert second.get("counter").json()["count"] == 1
    assert not (app / ".laf").exists()


def test_a_functions_folder_works_as_well_as_an_app_folder(app: Path) -> None:
    with TestClient(app / "functions") as client:
        assert client.get("counter").status_code == 200


def test_users_tokens_and_request_ids(app: Path) -> None:
    with TestClient(app) as client:
        response = client.post("counter", user="ada")
        assert response.json()["user"] == "ada"
        assert response.request_id is not None and len(response.request_id) == 24
        token = client.token({"uid": "bob"})
        response = client.get("counter", headers={"Authorization": f"Bearer {token}"})
        assert response.json()["user"] == "bob"
        assert client.get("nope").status_code == 404
        assert client.get("/_/healthz").json()["status"] == "ok"


def test_websocket_send_receive_and_close_codes(app: Path) -> None:
    with TestClient(app, max_message_size="1k") as client:
        with client.websocket(query={"room": "a"}, user="ada") as ws:
            assert ws.receive_json() == {"user": "ada", "room": "a"}
            ws.send("hello")
            assert ws.receive() == "hello"
            ws.send_json({"n": 1})
            assert ws.receive_json() == {"n": 1}
            ws.send("x" * 2000)
            with pytest.raises(WebSocketClosed) as closed:
                ws.receive()
            assert (closed.value.code, ws.close_code) == (1009, 1009)
        with client.websocket(query={"go": "away"}) as ws, pytest.raises(WebSocketClosed) as closed:
            ws.receive()
        assert (closed.value.code, closed.value.reason) == (4403, "not you")


def test_receive_times_out_when_nothing_comes(app: Path) -> None:
    with TestClient(app) as client, client.websocket() as ws:
        ws.receive()  # the greeting
        with pytest.raises(TimeoutError):
            ws.receive(timeout=0.2)


def test_a_bad_setting_or_a_broken_app_says_why(app: Path, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="unknown laf-py setting 'colour'"):
        TestClient(app, colour="blue").start()
    with pytest.raises(RuntimeError, match=r"--timeout"):
        TestClient(app, timeout="soon").start()
    with pytest.raises(FileNotFoundError):
        TestClient(tmp_path / "missing").start()


async def test_async_client(app: Path) -> None:
    async with AsyncTestClient(app) as client:
        assert (await client.get("counter")).json()["count"] == 1
        assert (await client.post("counter", user="ada")).json() == {"count": 2, "user": "ada"}
        async with client.websocket(user="ada") as ws:
            assert await ws.receive_json() == {"user": "ada", "room": None}
            await ws.send("hi")
            assert await ws.receive() == "hi"
        assert "laf-py listening on" in client.server_log


async def test_laf_test_server_uses_a_fresh_data_folder(app: Path) -> None:
    """The in-process harness no longer writes into the app's development database."""
    import httpx

    for _ in range(2):
        async with LafTestServer(app / "functions") as server, httpx.AsyncClient() as http:
            assert (await http.get(server.fn_url("counter"))).json()["count"] == 1
    assert not (app / ".laf").exists()


# -- the other triggers and the logs, from a test ----------------------------------------------

CLOCK = """
from laf_py import cloud

schedule = "0 0 1 1 *"  # once a year: only run_schedule makes it run in a test


async def main(ctx):
    print("tick", ctx.method)
    await cloud.kv.set("ticked", ctx.method)
"""

PUSH = """
from laf_py import cloud

async def main(ctx):
    job = await cloud.queue.push(ctx.query["to"], {"n": ctx.query.get("n")}, delay=3600)
    return {"job": job}
"""

WORK = """
from laf_py import cloud

async def main(ctx):
    print("working on", ctx.body["n"])
    await cloud.kv.set("worked-" + str(ctx.body["n"]), True)
"""

FAILING = """
queue_attempts = 3
queue_backoff = 600  # an hour of retries, unless the test drains the queue


def main(ctx):
    raise RuntimeError("this job always fails")
"""

READ = """
from laf_py import cloud

async def main(ctx):
    job = await cloud.queue.get(ctx.query["job"]) if "job" in ctx.query else None
    return {
        "ticked": await cloud.kv.get("ticked"),
        "worked": await cloud.kv.keys("worked-"),
        "state": job and job.state,
        "attempts": job and job.attempts,
    }
"""


@pytest.fixture
def triggers(tmp_path: Path) -> Path:
    for name, source in (
        ("clock", CLOCK),
        ("push", PUSH),
        ("work", WORK),
        ("failing", FAILING),
        ("read", READ),
    ):
        write_function(tmp_path / "functions", name, source)
    return tmp_path


def test_run_a_scheduled_function_now_and_read_its_lines(triggers: Path) -> None:
    with TestClient(triggers) as client:
        assert client.get("read").json()["ticked"] is None
        request_id = client.run_schedule("clock")
        assert client.get("read").json()["ticked"] == "SCHEDULE"
        [line] = client.logs(request_id=request_id)
        assert line.message == "tick SCHEDULE" and line.function == "clock"
        assert line.level_name == "INFO"
        with pytest.raises(RuntimeError, match="'read' has no schedule"):
            client.run_schedule("read")
        with pytest.raises(RuntimeError, match="'nope' is not a scheduled function"):
            client.run_schedule("nope")


def test_drain_runs_delayed_and_retrying_jobs_now(triggers: Path) -> None:
    with TestClient(triggers, admin_token="admin-token-of-this-test") as client:
        for n in ("1", "2"):
            assert client.get("push", query={"to": "work", "n": n}).status_code == 200
        failing = client.get("push", query={"to": "failing"}).json()["job"]
        assert client.get("read").json()["worked"] == []  # an hour away
        assert client.drain_queue() == 2 + 3  # the failing job ran all its attempts
        state = client.get("read", query={"job": failing}).json()
        assert state["worked"] == ["worked-1", "worked-2"]
        assert state["state"] == "failed" and state["attempts"] == 3
        lines = client.logs(function="work")
        assert sorted(line.message for line in lines) == ["working on 1", "working on 2"]
        errors = [line.message for line in client.logs(function="failing")]
        assert len(errors) == 3 and all("this job always fails" in e for e in errors)
        assert client.drain_queue() == 0


async def test_the_async_client_has_them_too(triggers: Path) -> None:
    async with AsyncTestClient(triggers) as client:
        request_id = await client.run_schedule("clock")
        assert [line.message for line in await client.logs(request_id)] == ["tick SCHEDULE"]
        await client.get("push", query={"to": "work", "n": "3"})
        assert await client.drain_queue() == 1
        assert [line.message for line in await client.logs(function="work")] == ["working on 3"]
