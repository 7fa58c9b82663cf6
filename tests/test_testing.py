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
