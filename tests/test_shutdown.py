"""Graceful shutdown: SIGTERM/SIGINT to a CLI server, and leaving ``serve(...)`` in-process."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from laf_py import cloud

from .conftest import wait_until, write_function

SIGNALS = [pytest.param(signal.SIGTERM, id="SIGTERM"), pytest.param(signal.SIGINT, id="SIGINT")]

# Records every close event in the file named by $EVENTS_FILE; greets on connection.
WEBSOCKET = """
import os

def main(ctx):
    if ctx.method == "WebSocket:connection":
        ctx.socket.send("hi")
    elif ctx.method == "WebSocket:close":
        with open(os.environ["EVENTS_FILE"], "a") as events:
            events.write(f"close {ctx.socket.id}\\n")
"""

# Writes "started" to $EVENTS_FILE, then takes {seconds}s to answer.
SLOW_ASYNC = """
import asyncio
import os

async def main(ctx):
    with open(os.environ["EVENTS_FILE"], "a") as events:
        events.write("started\\n")
    await asyncio.sleep({seconds})
    return "done"
"""

SLOW_SYNC = """
import os
import time

def main(ctx):
    with open(os.environ["EVENTS_FILE"], "a") as events:
        events.write("started\\n")
    time.sleep({seconds})
    return "done"
"""


@pytest.fixture
def events(tmp_path: Path) -> Path:
    return tmp_path / "events.txt"


async def wait_exit(process: subprocess.Popen[str], timeout: float) -> int:
    """The exit code, or fail (killing the process) if it is still running after ``timeout``."""
    try:
        return await asyncio.to_thread(process.wait, timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        await asyncio.to_thread(process.wait)
        raise AssertionError(f"server still running {timeout}s after the signal") from None


def recorded(events: Path, line: str) -> bool:
    return events.exists() and line in events.read_text().splitlines()


# -- signals to a CLI server ---------------------------------------------------------------


@pytest.mark.parametrize("signum", SIGNALS)
async def test_signal_exits_zero(
    cli_server, functions_dir: Path, http: httpx.AsyncClient, signum: int
) -> None:
    """SIGTERM / SIGINT make a serving server exit 0 within a few seconds."""
    write_function(functions_dir, "hello", "def main(ctx):\n    return 'hi'\n")
    server = cli_server("--functions", str(functions_dir))
    assert (await http.get(f"{server.url}/fn/hello")).text == "hi"
    server.process.send_signal(signum)
    assert await wait_exit(server.process, 5) == 0
    output = server.read_rest()
    assert "Traceback" not in output
    assert "laf-py stopped" in output


# A slow log handler (think: a log shipper) that pauses after printing "listening on".
SLOW_LOG_INIT = """
import logging
import time

class PauseAfterListening(logging.Handler):
    def emit(self, record):
        if "listening on" in record.getMessage():
            time.sleep(0.5)

def main(ctx):
    logging.getLogger().addHandler(PauseAfterListening())
"""


async def test_sigterm_right_after_listening_line(cli_server, functions_dir: Path) -> None:
    """SIGTERM sent as soon as "listening on" is printed still shuts down cleanly (exit 0)."""
    write_function(functions_dir, "hello", "def main(ctx):\n    return 'hi'\n")
    write_function(functions_dir, "__init__", SLOW_LOG_INIT)
    server = cli_server("--functions", str(functions_dir))
    server.process.send_signal(signal.SIGTERM)
    assert await wait_exit(server.process, 5) == 0


@pytest.mark.parametrize("signum", SIGNALS)
async def test_signal_closes_websocket_with_1001(
    cli_server, functions_dir: Path, events: Path, signum: int
) -> None:
    """A connected client is closed with 1001 "server shutting down"."""
    write_function(functions_dir, "__websocket__", WEBSOCKET)
    server = cli_server("--functions", str(functions_dir), env={"EVENTS_FILE": str(events)})
    async with websockets.connect(server.ws_url) as ws:
        assert await ws.recv() == "hi"
        server.process.send_signal(signum)
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1001
    assert closed.value.rcvd.reason == "server shutting down"
    assert await wait_exit(server.process, 5) == 0


async def test_close_event_runs_on_shutdown(cli_server, functions_dir: Path, events: Path) -> None:
    """The ``close`` event of a socket open at SIGTERM runs before the process exits."""
    write_function(functions_dir, "__websocket__", WEBSOCKET)
    server = cli_server("--functions", str(functions_dir), env={"EVENTS_FILE": str(events)})
    async with websockets.connect(server.ws_url) as ws:
        assert await ws.recv() == "hi"
        server.process.send_signal(signal.SIGTERM)
        assert await wait_exit(server.process, 5) == 0
    lines = events.read_text().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("close ")


async def test_request_in_flight_completes(
    cli_server, functions_dir: Path, events: Path, http: httpx.AsyncClient
) -> None:
    """An HTTP call running when SIGTERM arrives still gets its 200 answer."""
    write_function(functions_dir, "slow", SLOW_ASYNC.format(seconds=1))
    server = cli_server("--functions", str(functions_dir), env={"EVENTS_FILE": str(events)})
    call = asyncio.create_task(http.get(f"{server.url}/fn/slow"))
    await wait_until(lambda: recorded(events, "started"))
    server.process.send_signal(signal.SIGTERM)
    response = await call
    assert response.status_code == 200
    assert response.text == "done"
    assert await wait_exit(server.process, 5) == 0


@pytest.mark.parametrize(
    "source", [pytest.param(SLOW_ASYNC, id="async"), pytest.param(SLOW_SYNC, id="sync")]
)
async def test_grace_limits_shutdown(
    cli_server, functions_dir: Path, events: Path, http: httpx.AsyncClient, source: str
) -> None:
    """A call slower than --shutdown-grace does not hold the exit; the log says grace ran out."""
    write_function(functions_dir, "slow", source.format(seconds=30))
    server = cli_server(
        "--functions",
        str(functions_dir),
        "--shutdown-grace",
        "0.5",
        env={"EVENTS_FILE": str(events)},
    )
    call = asyncio.create_task(http.get(f"{server.url}/fn/slow"))
    try:
        await wait_until(lambda: recorded(events, "started"))
        server.process.send_signal(signal.SIGTERM)
        code = await wait_exit(server.process, 5)
    finally:
        call.cancel()
        await asyncio.gather(call, return_exceptions=True)
    assert code == 0
    output = server.read_rest()
    assert any("grace" in line and "ran out" in line for line in output.splitlines()), output


# -- in-process ----------------------------------------------------------------------------

HOLD = """
import asyncio
from laf_py import cloud

async def main(ctx):
    cloud.shared.set("held", True)
    await cloud.shared.get("release").wait()
    return "released"
"""


async def test_healthz_503_while_draining(serve, functions_dir: Path) -> None:
    """Once stop() has begun, /_/healthz answers 503 on a connection opened before."""
    write_function(functions_dir, "hold", HOLD)
    async with (
        serve(functions_dir) as server,
        httpx.AsyncClient(base_url=server.url, timeout=10) as probe,
        httpx.AsyncClient(base_url=server.url, timeout=10) as caller,
    ):
        release = asyncio.Event()
        cloud.shared.set("release", release)
        assert (await probe.get("/_/healthz")).status_code == 200  # keep-alive connection
        held = asyncio.create_task(caller.get("/fn/hold"))
        await wait_until(lambda: cloud.shared.get("held"))
        stopping = asyncio.create_task(server.server.stop())
        try:
            await wait_until(lambda: server.server.activity.draining)
            # The held call keeps the grace period open, so this connection is still served.
            response = await probe.get("/_/healthz")
            assert response.status_code == 503
        finally:
            release.set()
            assert (await held).text == "released"
            await stopping


async def test_leaving_serve_closes_websocket_with_1001(
    serve, functions_dir: Path, events: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Leaving ``async with serve(...)`` closes clients with 1001 and runs their close event."""
    monkeypatch.setenv("EVENTS_FILE", str(events))
    write_function(functions_dir, "__websocket__", WEBSOCKET)
    async with serve(functions_dir) as server:
        ws = await websockets.connect(server.ws_url)
        assert await ws.recv() == "hi"
    with pytest.raises(ConnectionClosed) as closed:
        await ws.recv()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1001
    assert closed.value.rcvd.reason == "server shutting down"
    lines = events.read_text().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("close ")
