"""Failure modes found in review: each one once broke the server or lost an event."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from laf_py import cloud
from laf_py.runtime import StartupError

from .conftest import wait_until, write_function

pytestmark = pytest.mark.both_servers


@pytest.mark.parametrize(
    "raise_it",
    ["raise SystemExit(3)", "raise KeyboardInterrupt", "raise asyncio.CancelledError()"],
)
async def test_function_raising_exit_or_cancel_is_a_500_and_the_server_lives(
    serve, functions_dir: Path, http: httpx.AsyncClient, raise_it: str
) -> None:
    """SystemExit, KeyboardInterrupt and a function's own CancelledError are plain errors."""
    write_function(functions_dir, "bad", f"import asyncio\nasync def main(ctx):\n    {raise_it}\n")
    write_function(functions_dir, "ok", "def main(ctx):\n    return 'fine'\n")
    async with serve(functions_dir) as server:
        response = await http.get(server.fn_url("bad"))
        assert response.status_code == 500
        assert response.json()["error"] == "Internal Server Error"
        assert (await http.get(server.fn_url("ok"))).text == "fine"


async def test_sync_exit_in_thread_is_a_500(
    serve, functions_dir: Path, http: httpx.AsyncClient
) -> None:
    write_function(functions_dir, "bad", "import sys\ndef main(ctx):\n    sys.exit(1)\n")
    async with serve(functions_dir) as server:
        assert (await http.get(server.fn_url("bad"))).status_code == 500


async def test_plain_def_interceptor_with_plain_def_functions_never_deadlocks_the_pool(
    serve, functions_dir: Path, http: httpx.AsyncClient
) -> None:
    """More concurrent calls than pool threads, each holding a thread in the interceptor."""
    write_function(functions_dir, "__interceptor__", "def main(ctx, next):\n    return next(ctx)\n")
    write_function(
        functions_dir,
        "work",
        """
        import threading
        from laf_py import cloud

        def main(ctx):
            started = cloud.shared.setdefault("started", [])
            started.append(1)
            cloud.shared["gate"].wait(10)
            return "done"
        """,
    )
    async with serve(functions_dir, timeout=20) as server:
        cloud.shared["gate"] = gate = threading.Event()
        pool = server.server.runtime.threads.size
        calls = pool + 10  # more calls than threads: some wait their turn
        pending = [asyncio.ensure_future(http.get(server.fn_url("work"))) for _ in range(calls)]
        await wait_until(lambda: len(cloud.shared.get("started", [])) >= min(calls, pool))
        gate.set()
        responses = await asyncio.gather(*pending)
        assert [r.status_code for r in responses] == [200] * calls


async def test_timeout_in_connection_event_sends_error_frame_then_1011(
    serve, functions_dir: Path
) -> None:
    write_function(
        functions_dir,
        "__websocket__",
        """
        import asyncio
        timeout = 0.2
        async def main(ctx):
            if ctx.method == "WebSocket:connection":
                await asyncio.sleep(30)
        """,
    )
    async with serve(functions_dir) as server, websockets.connect(server.ws_url) as ws:
        error = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert error["error"] == "Function '__websocket__' timed out after 0.2s"
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/plain; charset=base64", b"aGk="),
        ("text/plain; charset=rot13", b"uv"),
        ("multipart/form-data; boundary=xyz", b"this is not multipart"),
    ],
)
async def test_undecodable_bodies_are_400_not_500(
    serve, functions_dir: Path, http: httpx.AsyncClient, content_type: str, body: bytes
) -> None:
    write_function(functions_dir, "echo", "def main(ctx):\n    return repr(ctx.body)\n")
    async with serve(functions_dir) as server:
        response = await http.post(
            server.fn_url("echo"), content=body, headers={"content-type": content_type}
        )
        assert response.status_code == 400, response.text


async def test_second_server_in_one_process_is_refused_and_the_first_keeps_working(
    serve, functions_dir: Path, tmp_path: Path, http: httpx.AsyncClient
) -> None:
    write_function(functions_dir, "ping", "def main(ctx):\n    return 'pong'\n")
    other = tmp_path / "other"
    other.mkdir()
    async with serve(functions_dir) as first:
        with pytest.raises(StartupError, match="one server per process"):
            async with serve(other):
                pass
        assert (await http.get(first.fn_url("ping"))).text == "pong"
        assert len(cloud.sockets) == 0  # cloud still belongs to the first server


async def test_shutdown_past_grace_still_runs_close_events(serve, functions_dir: Path) -> None:
    """A client that never answers the close handshake is dropped, and its close event runs
    with the server's reason: the server closed first."""
    write_function(
        functions_dir,
        "__websocket__",
        """
        from laf_py import cloud
        async def main(ctx):
            if ctx.method == "WebSocket:connection":
                ctx.socket.send("hi")
            if ctx.method == "WebSocket:close":
                cloud.shared["closed"] = ctx.params
        """,
    )
    async with serve(functions_dir, shutdown_grace=0.3) as server:
        # A raw client: it completes the handshake, then never reads or answers again.
        host, port = "127.0.0.1", server.server.port
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(
            b"GET /__websocket__ HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        await writer.drain()
        assert b"101" in await reader.readline()
        await wait_until(lambda: server.server.activity.connections == 1)
    # Leaving `serve` waited 0.3 s for the handshake, then dropped the connection.
    assert cloud.shared["closed"] == {"code": 1001, "reason": "server shutting down"}
    writer.close()


async def test_access_log_hides_tokens_in_the_url(
    serve, functions_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_function(functions_dir, "__websocket__", "async def main(ctx):\n    pass\n")
    async with serve(functions_dir) as server:
        token = cloud.get_token({"uid": "alice"})
        with caplog.at_level("INFO", logger="tornado.access"):
            async with websockets.connect(f"{server.ws_url}?a=1&token={token}"):
                pass
            await wait_until(lambda: "__websocket__" in caplog.text)
    assert token not in caplog.text
    assert "token=***" in caplog.text
