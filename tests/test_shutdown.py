"""Graceful shutdown: SIGTERM/SIGINT to a CLI server, and leaving ``serve(...)`` in-process."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from laf_py import cloud
from laf_py.server.runner import SHUTDOWN_BOUND

from .conftest import wait_until, write_function

pytestmark = pytest.mark.both_servers

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


# -- bounded whatever functions do -----------------------------------------------------------
# After SIGTERM the process ends within --shutdown-grace + SHUTDOWN_BOUND. The orderly path
# says "laf-py stopped"; the watchdog behind it says "shutdown still not done".

GRACE = 0.5
WATCHDOG = "shutdown still not done"

# Writes its name to $EVENTS_FILE, then blocks a thread for a minute.
STUCK_IN_THREADS = {
    "plain": """
import os
import time

def main(ctx):
    with open(os.environ["EVENTS_FILE"], "a") as events:
        events.write("plain\\n")
    time.sleep(60)
""",
    "to_thread": """
import asyncio
import os
import time

async def main(ctx):
    with open(os.environ["EVENTS_FILE"], "a") as events:
        events.write("to_thread\\n")
    await asyncio.to_thread(time.sleep, 60)
""",
}


async def signal_and_time_exit(server, signum: int = signal.SIGTERM) -> tuple[int, float]:
    """Send ``signum``; the exit code and how long the process took to exit."""
    sent = time.monotonic()
    server.process.send_signal(signum)
    code = await wait_exit(server.process, GRACE + SHUTDOWN_BOUND + 5)
    return code, time.monotonic() - sent


@pytest.mark.parametrize("stuck", [["plain"], ["to_thread"], ["plain", "to_thread"]])
async def test_threads_stuck_in_functions_do_not_hold_the_exit(
    cli_server, functions_dir: Path, events: Path, http: httpx.AsyncClient, stuck: list[str]
) -> None:
    """Calls blocked in a plain def or in asyncio.to_thread: exit 0 right after the grace,
    with one warning saying threads were left running."""
    for name in stuck:
        write_function(functions_dir, name, STUCK_IN_THREADS[name])
    server = cli_server(
        "--functions",
        str(functions_dir),
        "--shutdown-grace",
        str(GRACE),
        env={"EVENTS_FILE": str(events)},
    )
    calls = [asyncio.create_task(http.get(f"{server.url}/fn/{name}")) for name in stuck]
    try:
        await wait_until(lambda: all(recorded(events, name) for name in stuck))
        code, took = await signal_and_time_exit(server)
    finally:
        for call in calls:
            call.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
    output = server.read_rest()
    assert code == 0
    assert took < GRACE + SHUTDOWN_BOUND, (took, output)
    warnings = [line for line in output.splitlines() if "still running function code" in line]
    assert len(warnings) == 1, output
    assert f"exiting with {len(stuck)} thread(s)" in warnings[0]
    assert "laf-py stopped" in output
    assert WATCHDOG not in output


THREAD_OF_ITS_OWN = """
import threading
import time

def main(ctx):
    # daemon=False: a thread started in a pool thread would be a daemon like it.
    threading.Thread(target=time.sleep, args=(60,), name="sleeper", daemon=False).start()
    return "started"
"""


async def test_a_thread_a_function_started_does_not_hold_the_exit(
    cli_server, functions_dir: Path, http: httpx.AsyncClient
) -> None:
    """A non-daemon thread of the function's own would make Python wait at exit: the
    watchdog ends the process at grace + SHUTDOWN_BOUND and names the thread."""
    write_function(functions_dir, "spawn", THREAD_OF_ITS_OWN)
    server = cli_server("--functions", str(functions_dir), "--shutdown-grace", str(GRACE))
    assert (await http.get(f"{server.url}/fn/spawn")).text == "started"
    code, took = await signal_and_time_exit(server)
    output = server.read_rest()
    assert code == 0
    assert took < GRACE + SHUTDOWN_BOUND + 2, (took, output)
    assert "laf-py stopped" in output  # the orderly part finished; then Python waited
    watchdog = [line for line in output.splitlines() if WATCHDOG in line]
    assert len(watchdog) == 1, output
    assert "sleeper" in watchdog[0]


class HangingRedis:
    """A TCP proxy to the real Redis that can hang: after ``hang()`` it keeps every connection
    open and passes no more bytes either way, as a Redis that stopped answering. (The
    machine's Redis is shared with other tests, so it is never paused itself.) It runs its own
    event loop in a thread: starting a CLI server blocks the test's loop."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self._target = (parts.hostname or "127.0.0.1", parts.port or 6379)
        self._db = parts.path
        self._hanging = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.url = ""

    def __enter__(self) -> HangingRedis:
        self._thread.start()
        listening = asyncio.run_coroutine_threadsafe(self._listen(), self._loop)
        self.url = f"redis://127.0.0.1:{listening.result(10)}{self._db}"
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def hang(self) -> None:
        self._hanging.set()

    async def _listen(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._hanging.is_set():
            up_reader, upstream = await asyncio.open_connection(*self._target)
            await asyncio.gather(self._pipe(reader, upstream), self._pipe(up_reader, writer))
        await asyncio.Future()  # hung: hold the connection, answer nothing

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            if self._hanging.is_set():
                await asyncio.Future()
            writer.write(data)
            await writer.drain()


PRESENCE_SOCKET = """
def main(ctx):
    if ctx.method == "WebSocket:connection":
        ctx.socket.user_id = ctx.query["user"]
        ctx.socket.send("hi")
"""


async def test_a_hung_redis_does_not_hold_the_exit(
    cli_server, functions_dir: Path, redis_url: str, cluster: str
) -> None:
    """Redis stops answering while a user is online: the user's offline event and leaving
    the cluster wait on Redis, but only within the grace (and a moment past it); the orderly
    shutdown finishes without the watchdog."""
    write_function(functions_dir, "__websocket__", PRESENCE_SOCKET)
    with HangingRedis(redis_url) as redis:
        server = cli_server(
            "--functions",
            str(functions_dir),
            "--redis-url",
            redis.url,
            "--cluster",
            cluster,
            "--shutdown-grace",
            "1",
        )
        async with websockets.connect(server.ws_url + "?user=ada") as ws:
            assert await ws.recv() == "hi"
            redis.hang()
            code, took = await signal_and_time_exit(server)
    output = server.read_rest()
    assert code == 0
    assert took < 1 + SHUTDOWN_BOUND, (took, output)
    assert "Redis did not answer while leaving the cluster" in output
    assert "laf-py stopped" in output
    assert WATCHDOG not in output


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
