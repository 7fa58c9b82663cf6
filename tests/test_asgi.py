"""laf-py as an ASGI app (laf_py.asgi): mounted inside a Starlette app, started by a lifespan or
by its first request, configured from the environment. The contract itself (functions,
WebSocket events, limits, tokens, kv, ...) runs on uvicorn in the suites marked
``both_servers``; this file covers what only an ASGI app has."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import websockets
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from laf_py import cloud
from laf_py.asgi import LafApp, app_from_environment, create_app
from laf_py.exceptions import ConfigError

from .conftest import wait_until, write_function

WEBSOCKET = """
from laf_py import cloud

async def main(ctx):
    if ctx.method == "WebSocket:connection":
        ctx.socket.send({"path": "welcome", "user": ctx.user})
    elif ctx.method == "WebSocket:message":
        await cloud.kv.set("last", ctx.params["data"])
        ctx.socket.send("echo:" + ctx.params["data"])
    else:
        cloud.shared["closed"] = ctx.params
"""

HELLO = """
from laf_py import cloud

async def main(ctx):
    return {"hello": ctx.query.get("name", "world"), "last": await cloud.kv.get("last")}
"""

INIT = """
from laf_py import cloud

async def main(ctx):
    cloud.shared["init_ran"] = cloud.shared.get("init_ran", 0) + 1
"""


@contextlib.asynccontextmanager
async def uvicorn_serving(app: Any, lifespan: str = "on") -> AsyncIterator[str]:
    """``app`` under a real uvicorn on an ephemeral port, in this event loop; its URL."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    config = uvicorn.Config(app, lifespan=lifespan, log_config=None, access_log=False)
    server = uvicorn.Server(config)
    serving = asyncio.ensure_future(server.serve(sockets=[listener]))
    try:
        await wait_until(lambda: server.started or serving.done())
        if serving.done():
            serving.result()  # the start-up failed: say why
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await serving
        listener.close()


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    functions = tmp_path / "functions"
    write_function(functions, "hello", HELLO)
    write_function(functions, "__websocket__", WEBSOCKET)
    write_function(functions, "__init__", INIT)
    return tmp_path


def host_app(laf: LafApp) -> Starlette:
    """An existing app, as a user has one, with laf-py mounted at /laf."""

    async def home(_: Any) -> PlainTextResponse:
        return PlainTextResponse("the host app")

    return Starlette(
        routes=[Route("/", home), Mount("/laf", app=laf)],
        lifespan=laf.lifespan,
    )


async def test_mounted_in_starlette_serves_functions_and_websockets(app_dir: Path) -> None:
    laf = create_app(app_dir / "functions", app_dir=app_dir, reload=False)
    async with uvicorn_serving(host_app(laf)) as url, httpx.AsyncClient(base_url=url) as http:
        assert (await http.get("/")).text == "the host app"
        assert cloud.shared["init_ran"] == 1  # started by the host app's lifespan
        answer = await http.get("/laf/fn/hello", params={"name": "mount"})
        assert answer.status_code == 200
        assert answer.json() == {"hello": "mount", "last": None}
        assert answer.headers["x-request-id"]
        missing = await http.get("/laf/fn/missing")
        assert missing.status_code == 404
        assert missing.json()["error"] == "Function 'missing' not found"
        assert (await http.get("/fn/hello")).status_code == 404  # only under the mount

        token = cloud.get_token({"uid": "u1"})
        ws_url = url.replace("http", "ws", 1) + "/laf/__websocket__"
        async with websockets.connect(f"{ws_url}?token={token}") as ws:
            welcome = json.loads(await ws.recv())
            assert welcome["path"] == "welcome" and welcome["user"]["uid"] == "u1"
            await ws.send("hi")
            assert await ws.recv() == "echo:hi"
        await wait_until(lambda: "closed" in cloud.shared)
        assert cloud.shared["closed"] == {"code": 1000, "reason": ""}
        # cloud.kv written by the socket's function, read by the HTTP one
        assert (await http.get("/laf/fn/hello")).json()["last"] == "hi"
    assert laf._stopped  # the host app's shutdown stopped laf-py too


async def test_a_handshake_to_another_path_of_the_mount_is_404(app_dir: Path) -> None:
    laf = create_app(app_dir / "functions", app_dir=app_dir, reload=False)
    async with uvicorn_serving(host_app(laf)) as url:
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(url.replace("http", "ws", 1) + "/laf/elsewhere")
        assert refused.value.response.status_code == 404


async def test_without_a_lifespan_the_first_request_starts_it_once(app_dir: Path) -> None:
    """Mounted without passing its lifespan on: requests that come together start it once."""
    laf = create_app(app_dir / "functions", app_dir=app_dir, reload=False)
    host = Starlette(routes=[Mount("/laf", app=laf)])  # no lifespan=laf.lifespan
    try:
        async with uvicorn_serving(host) as url, httpx.AsyncClient(base_url=url) as http:
            assert laf._started is None  # nothing started it yet
            answers = await asyncio.gather(*(http.get("/laf/fn/hello") for _ in range(5)))
            assert [a.status_code for a in answers] == [200] * 5
            assert cloud.shared["init_ran"] == 1
    finally:
        await laf.shutdown()


async def test_the_app_alone_under_uvicorn_with_its_own_lifespan(app_dir: Path) -> None:
    laf = create_app(app_dir / "functions", app_dir=app_dir, reload=False)
    async with uvicorn_serving(laf) as url, httpx.AsyncClient(base_url=url) as http:
        assert cloud.shared["init_ran"] == 1
        assert (await http.get("/fn/hello")).json() == {"hello": "world", "last": None}
        assert (await http.get("/_/healthz")).json()["status"] == "ok"
    assert laf._stopped


async def test_a_failed_start_fails_the_lifespan_with_the_reason(app_dir: Path) -> None:
    """The ASGI lifespan protocol, as a server drives it: the start-up fails with the reason
    (uvicorn then logs it and exits)."""
    write_function(
        app_dir / "functions", "__init__", "def main(ctx):\n    raise RuntimeError('no')\n"
    )
    laf = create_app(app_dir / "functions", app_dir=app_dir, reload=False)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "lifespan.startup"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await laf({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    assert sent == [{"type": "lifespan.startup.failed", "message": sent[0]["message"]}]
    assert "RuntimeError: no" in sent[0]["message"]


def test_create_app_takes_settings_as_a_user_writes_them(app_dir: Path) -> None:
    """Folders as strings, lists for the tuple settings (as the README's example does)."""
    app = create_app(
        str(app_dir / "functions"),
        app_dir=str(app_dir),
        allowed_hosts=["api.example.com"],
        allowed_origins=["https://app.example.com"],
        database_url=f"sqlite:///{app_dir / 'app.db'}",
        max_body_size="2MiB",
    )
    assert app.settings.database_url == f"sqlite+aiosqlite:///{app_dir / 'app.db'}"
    assert app.settings.max_body_size == 2 * 1024 * 1024
    assert app.settings.functions_dir == app_dir / "functions"
    assert app.settings.app_dir == app_dir
    assert app.settings.allowed_hosts == ("api.example.com",)
    assert app.settings.allowed_origins == ("https://app.example.com",)


def test_a_bad_setting_is_refused_by_create_app(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        create_app(tmp_path / "nowhere", app_dir=tmp_path / "nowhere")
    with pytest.raises(TypeError):
        create_app(tmp_path, no_such_setting=1)
    with pytest.raises(ConfigError, match="max_body_size='lots' is not valid"):
        create_app(tmp_path, app_dir=tmp_path, max_body_size="lots")


def test_app_from_environment_reads_laf_variables(
    app_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAF_APP_DIR", str(app_dir))
    monkeypatch.setenv("LAF_MAX_BODY_SIZE", "1234")
    app = app_from_environment()
    assert app.settings.functions_dir == app_dir / "functions"
    assert app.settings.max_body_size == 1234
    monkeypatch.setenv("LAF_MAX_BODY_SIZE", "lots")
    with pytest.raises(ConfigError, match="LAF_MAX_BODY_SIZE"):
        app_from_environment()
