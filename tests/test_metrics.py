"""``GET /_/metrics``: Prometheus counters after real calls, through real servers and clients.

Scrapes are parsed with prometheus_client's own text parser, so what is checked is what
Prometheus reads. In-process servers (``serve``) for most tests; ``--workers 2`` runs the CLI
with Redis, as tests/test_workers.py does. Nothing sleeps to wait for a condition.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families

from laf_py import cloud
from laf_py.server.metrics import METRICS_OFF

from .conftest import CliServer, wait_until, write_function
from .test_limits import raw_client
from .test_slow_consumer import small_kernel_buffer

pytestmark = pytest.mark.both_servers

ADMIN_TOKEN = "metrics-admin-token-0123456789"
SECRET = "metrics-" + "s" * 40
UNKNOWN = "<unknown>"

HELLO = """
def main(ctx):
    return "hello"
"""
BOOM = """
def main(ctx):
    raise ValueError("boom")
"""
SLOW = """
import asyncio

timeout = 0.2

async def main(ctx):
    await asyncio.sleep(30)
"""
TEAPOT = """
from laf_py import HTTPError

def main(ctx):
    raise HTTPError(418, "short and stout")
"""
STREAM = """
async def main(ctx):
    for part in ("a", "b", "c"):
        yield part
"""
# Echoes text; "raise" makes the message event fail; ?user= binds a user.
WEBSOCKET = """
async def main(ctx):
    socket = ctx.socket
    if ctx.method == "WebSocket:connection":
        if "user" in ctx.query:
            socket.user_id = ctx.query["user"]
        socket.send("hello " + socket.id)
    elif ctx.method == "WebSocket:message":
        if ctx.params["data"] == "raise":
            raise RuntimeError("message event failed")
        socket.send("echo:" + ctx.params["data"])
"""
# ?id=&size=&count=: `count` messages of `size` bytes to one socket at once, then awaited.
PUSH = """
from laf_py import cloud

async def main(ctx):
    socket = cloud.sockets.get(ctx.query["id"])
    size, count = int(ctx.query["size"]), int(ctx.query["count"])
    deliveries = [socket.send(bytes(size)) for _ in range(count)]
    return {"sent": [await delivery for delivery in deliveries]}
"""
PID = """
import os
from laf_py import cloud

def main(ctx):
    return {"pid": os.getpid(), "node": cloud.sockets.node_id}
"""


# -- reading a scrape ------------------------------------------------------------------------


class Scrape:
    """One scrape, parsed: ``scrape.value(name, **labels)`` (None when there is no such
    sample), ``scrape.labels(name, label)`` (every value that label has)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: list[tuple[str, dict[str, str], float]] = [
            (sample.name, sample.labels, sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        ]

    def value(self, name: str, **labels: str) -> float | None:
        for sample_name, sample_labels, value in self.samples:
            if sample_name == name and sample_labels == labels:
                return value
        return None

    def labels(self, name: str, label: str) -> set[str]:
        return {s[1][label] for s in self.samples if s[0] == name and label in s[1]}

    def names(self) -> set[str]:
        return {s[0] for s in self.samples}


async def scrape(http: httpx.AsyncClient, url: str, **headers: str) -> Scrape:
    response = await http.get(f"{url}/_/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return Scrape(response.text)


def requests_total(found: Scrape, function: str, method: str, status: int) -> float | None:
    return found.value(
        "laf_http_requests_total", function=function, method=method, status=str(status)
    )


@pytest.fixture
def folder(functions_dir: Path) -> Path:
    for name, source in {
        "hello": HELLO,
        "boom": BOOM,
        "slow": SLOW,
        "teapot": TEAPOT,
        "stream": STREAM,
        "__websocket__": WEBSOCKET,
        "push": PUSH,
    }.items():
        write_function(functions_dir, name, source)
    public = functions_dir.parent / "public"
    public.mkdir()
    (public / "page.html").write_text("<p>static</p>")
    return functions_dir


# -- HTTP --------------------------------------------------------------------------------------


async def test_http_requests_are_counted_by_function_method_and_status(
    serve, folder: Path, http: httpx.AsyncClient, server_kind: str
):
    """Each answered /fn/ request counts once under the function that served it; names that
    serve nothing count under one label value; static files and /_/ count nowhere. (uvicorn's
    HTTP parser refuses a method it does not know, BREW, itself: it never reaches laf-py.)"""
    refused = 2 if server_kind == "tornado" else 1
    async with serve(folder) as server:
        for _ in range(3):
            assert (await http.get(server.fn_url("hello"))).status_code == 200
        assert (await http.post(server.fn_url("hello"))).status_code == 200
        for name in ("nope", "missing/deeper", "other"):
            assert (await http.get(server.fn_url(name))).status_code == 404
        assert (await http.request("PROPFIND", server.fn_url("hello"))).status_code == 405
        brewed = await http.request("BREW", server.fn_url("hello"))
        assert brewed.status_code == (405 if server_kind == "tornado" else 400)
        assert (await http.get(server.fn_url("teapot"))).status_code == 418
        assert (await http.get(server.fn_url("stream"))).text == "abc"
        assert (await http.get(f"{server.url}/page.html")).status_code == 200
        assert (await http.get(f"{server.url}/_/healthz")).status_code == 200

        found = await scrape(http, server.url)
        assert requests_total(found, "hello", "GET", 200) == 3
        assert requests_total(found, "hello", "POST", 200) == 1
        assert requests_total(found, UNKNOWN, "GET", 404) == 3
        assert requests_total(found, "hello", "OTHER", 405) == refused  # any other: one value
        assert requests_total(found, "teapot", "GET", 418) == 1
        assert requests_total(found, "stream", "GET", 200) == 1  # streamed: counted at its end
        functions = found.labels("laf_http_requests_total", "function")
        assert functions == {"hello", UNKNOWN, "teapot", "stream"}
        assert found.labels("laf_http_requests_total", "method") == {"GET", "POST", "OTHER"}

        # The histogram: one observation per request, in cumulative buckets.
        count = found.value("laf_http_request_duration_seconds_count", function="hello")
        assert count == 4 + refused  # 3 GET, 1 POST, the refused methods
        histogram = "laf_http_request_duration_seconds_bucket"
        assert found.value(histogram, function="hello", le="+Inf") == 4 + refused
        seconds = found.value("laf_http_request_duration_seconds_sum", function="hello")
        assert seconds is not None and 0 < seconds < 10
        buckets = [s for s in found.samples if s[0] == histogram and s[1]["function"] == "hello"]
        assert len(buckets) > 10
        assert [v for *_, v in buckets] == sorted(v for *_, v in buckets)
        # An HTTPError is the function's own answer, not an error.
        assert found.labels("laf_function_errors_total", "function") == set()


async def test_errors_and_timeouts_are_counted_by_kind(
    serve, folder: Path, http: httpx.AsyncClient
):
    async with serve(folder) as server:
        assert (await http.get(server.fn_url("boom"))).status_code == 500
        assert (await http.get(server.fn_url("boom"))).status_code == 500
        assert (await http.get(server.fn_url("slow"))).status_code == 504

        found = await scrape(http, server.url)
        assert requests_total(found, "boom", "GET", 500) == 2
        assert requests_total(found, "slow", "GET", 504) == 1
        errors = "laf_function_errors_total"
        assert found.value(errors, function="boom", kind="error") == 2
        assert found.value(errors, function="slow", kind="timeout") == 1
        assert found.value(errors, function="boom", kind="timeout") is None
        assert found.value(errors, function="slow", kind="error") is None
        # It took its 0.2 s time limit: not in the 0.1 s bucket (le is "at most"), in +Inf.
        bucket = "laf_http_request_duration_seconds_bucket"
        assert found.value(bucket, function="slow", le="0.1") == 0
        assert found.value(bucket, function="slow", le="+Inf") == 1
        assert found.value("laf_http_request_duration_seconds_sum", function="slow") >= 0.2


async def test_the_process_collector_and_every_metric_are_there_from_the_start(
    serve, folder: Path, http: httpx.AsyncClient
):
    async with serve(folder) as server:
        found = await scrape(http, server.url)
    assert found.value("laf_websocket_connections") == 0
    assert found.value("laf_online_users") == 0
    assert found.value("laf_slow_consumer_closes_total") == 0
    assert found.value("laf_websocket_messages_total", direction="in") == 0
    assert found.value("laf_websocket_messages_total", direction="out") == 0
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes"} <= found.names()
    for name in ("laf_http_requests", "laf_function_errors", "laf_http_request_duration_seconds"):
        assert f"# TYPE {name}" in found.text


# -- WebSocket ---------------------------------------------------------------------------------


async def recv(ws: Any) -> Any:
    return await asyncio.wait_for(ws.recv(), 5)


async def test_websocket_connections_messages_and_online_users(
    serve, folder: Path, http: httpx.AsyncClient
):
    """The gauge goes up when a socket opens and down once it has closed; messages count
    each way (the connection event's greeting and error frames are messages out too); the
    socket itself carries the console's counters."""
    async with serve(folder) as server:
        before = time.time()
        ws = await websockets.connect(server.ws_url + "?user=ada")
        greeting = await recv(ws)
        socket_id = greeting.removeprefix("hello ")
        found = await scrape(http, server.url)
        assert found.value("laf_websocket_connections") == 1
        assert found.value("laf_online_users") == 1

        for text in ("one", "two", "three"):
            await ws.send(text)
            assert await recv(ws) == f"echo:{text}"
        await ws.send("raise")
        assert "error" in await recv(ws)  # an error frame

        found = await scrape(http, server.url)
        assert found.value("laf_websocket_messages_total", direction="in") == 4
        assert found.value("laf_websocket_messages_total", direction="out") == 5
        errors = "laf_function_errors_total"
        assert found.value(errors, function="__websocket__", kind="error") == 1

        socket = cloud.sockets.get(socket_id)
        assert socket is not None
        assert (socket.messages_in, socket.messages_out) == (4, 5)  # type: ignore[union-attr]
        assert before <= socket.connected_at <= time.time()  # type: ignore[union-attr]
        assert socket.remote_address == "127.0.0.1"  # type: ignore[union-attr]

        await ws.close()

        async def closed() -> bool:
            found = await scrape(http, server.url)
            return found.value("laf_websocket_connections") == 0 and (
                found.value("laf_online_users") == 0
            )

        await wait_until(closed)


async def test_a_refused_handshake_is_not_an_open_connection(
    serve, folder: Path, http: httpx.AsyncClient
):
    write_function(
        folder,
        "__websocket__",
        """
        from laf_py import HTTPError

        def main(ctx):
            if ctx.method == "WebSocket:connection":
                raise HTTPError(403, "no")
        """,
    )
    async with serve(folder) as server:
        async with websockets.connect(server.ws_url) as ws:
            with pytest.raises(websockets.ConnectionClosed):
                await recv(ws)
        found = await scrape(http, server.url)
        assert found.value("laf_websocket_connections") == 0
        assert (
            found.value("laf_function_errors_total", function="__websocket__", kind="error") is None
        )


async def test_a_slow_consumer_close_is_counted(serve, folder: Path, http: httpx.AsyncClient):
    """Unsent data past the cap (16 x --max-send-buffer) to a client that never reads."""
    kib = 1024
    async with (
        serve(folder, max_send_buffer=64 * kib) as server,
        raw_client(server.server.port, rcvbuf=4096),
    ):
        socket_id = (await wait_until(lambda: [s.id for s in cloud.sockets]))[0]
        small_kernel_buffer(socket_id)
        params = {"id": socket_id, "size": 500 * kib, "count": 8}  # 4 MB, over the 1 MiB cap
        await http.get(server.fn_url("push"), params=params)
        await wait_until(lambda: socket_id not in cloud.sockets)
        found = await scrape(http, server.url)
        assert found.value("laf_slow_consumer_closes_total") == 1
        assert found.value("laf_websocket_connections") == 0


# -- who may scrape ----------------------------------------------------------------------------


async def test_loopback_clients_scrape_without_a_token(serve, folder: Path, http):
    async with serve(folder) as server:
        assert (await http.get(f"{server.url}/_/metrics")).status_code == 200
        # Same-origin is fine; a page of another site is not, even on this machine.
        same = {"Origin": server.url}
        assert (await http.get(f"{server.url}/_/metrics", headers=same)).status_code == 200
        other = await http.get(f"{server.url}/_/metrics", headers={"Origin": "https://evil.test"})
        assert other.status_code == 403
        assert "access-control-allow-origin" not in other.headers
        fetched = await http.get(
            f"{server.url}/_/metrics", headers={"Sec-Fetch-Site": "cross-site"}
        )
        assert fetched.status_code == 403


async def test_a_client_that_is_not_on_loopback_needs_the_token(serve, folder: Path, http):
    """Behind a trusted proxy the forwarded address decides: not loopback, no token: 403."""
    async with serve(folder, trust_proxy_headers=True) as server:
        forwarded = {"X-Forwarded-For": "203.0.113.7"}
        response = await http.get(f"{server.url}/_/metrics", headers=forwarded)
        assert response.status_code == 403
        assert "--admin-token" in response.json()["error"]


async def test_with_an_admin_token_every_scrape_needs_it(serve, folder: Path, http):
    async with serve(folder, admin_token=ADMIN_TOKEN) as server:
        url = f"{server.url}/_/metrics"
        missing = await http.get(url)
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"].startswith("Bearer")
        wrong = await http.get(url, headers={"Authorization": "Bearer not-the-token-at-all"})
        assert wrong.status_code == 401
        right = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        found = await scrape(http, server.url, **right)
        assert found.value("laf_websocket_connections") == 0
        cross = await http.get(url, headers={**right, "Origin": "https://evil.test"})
        assert cross.status_code == 403


async def test_metrics_off_answers_404_and_counts_nothing(serve, folder: Path, http):
    async with serve(folder, metrics=False) as server:
        assert server.server.runtime.metrics is None
        assert (await http.get(server.fn_url("hello"))).text == "hello"
        assert (await http.get(server.fn_url("boom"))).status_code == 500
        async with websockets.connect(server.ws_url) as ws:
            await recv(ws)
            await ws.send("hi")
            assert await recv(ws) == "echo:hi"
        response = await http.get(f"{server.url}/_/metrics")
        assert response.status_code == 404
        assert response.json()["error"] == METRICS_OFF


# -- --workers 2: one sum over every worker ----------------------------------------------------


@pytest.fixture
def workers(
    cli_server, functions_dir: Path, tmp_path: Path, redis_url: str, cluster: str
) -> Iterator[tuple[CliServer, Path]]:
    """``serve --workers 2`` with its temporary folder (where the metrics folder goes) in
    ``tmp_path / "tmp"``; stopped with SIGTERM at the end if the test did not."""
    write_function(functions_dir, "pid", PID)
    write_function(functions_dir, "__websocket__", WEBSOCKET)
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    server = cli_server(
        "--functions",
        str(functions_dir),
        "--workers",
        "2",
        "--redis-url",
        redis_url,
        "--cluster",
        cluster,
        "--heartbeat",
        "0.3",
        "--shutdown-grace",
        "2",
        "--database-url",
        f"sqlite+aiosqlite:///{tmp_path / 'laf.db'}",
        env={"LAF_SECRET": SECRET, "TMPDIR": str(temporary)},
    )
    yield server, temporary
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(15)


async def call_and_scrape(url: str) -> tuple[dict[str, Any], Scrape]:
    """GET /fn/pid, then a scrape on the same connection: the same worker answers both."""
    async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=1)) as one:
        worker = (await one.get(f"{url}/fn/pid")).json()
        return worker, await scrape(one, url)


async def test_with_workers_a_scrape_of_either_worker_shows_the_sum(workers):
    """Calls and sockets spread over both workers by the kernel: whichever worker answers
    the scrape, the counters and the gauge are the sums over both. A worker that dies leaves
    its counts in the sums and its connections out of the gauge; the folder goes at exit."""
    server, temporary = workers
    (folder,) = list(temporary.glob("laf-py-metrics-*"))  # one fresh folder for this start

    sockets: list[Any] = []
    holders: dict[str, int] = {}  # node id -> sockets it holds
    for _ in range(30):  # in batches at once: one idle worker may otherwise win every accept
        batch = await asyncio.gather(*(websockets.connect(server.ws_url) for _ in range(10)))
        sockets.extend(batch)
        for ws in batch:
            node = (await recv(ws)).removeprefix("hello ")[:8]  # a socket id starts with its node's
            holders[node] = holders.get(node, 0) + 1
        if len(holders) == 2:
            break
    assert len(holders) == 2, "the kernel never gave a socket to the second worker"
    for ws in sockets:
        await ws.send("hi")
        assert await recv(ws) == "echo:hi"
    await sockets[0].send("raise")
    assert "error" in await recv(sockets[0])

    calls, scraped = 0, {}
    for _ in range(200):
        worker, found = await call_and_scrape(server.url)
        calls += 1
        scraped[worker["pid"]] = worker["node"]
        assert requests_total(found, "pid", "GET", 200) == calls
        assert found.value("laf_http_request_duration_seconds_count", function="pid") == calls
        assert found.value("laf_websocket_connections") == len(sockets)
        messages = "laf_websocket_messages_total"
        assert found.value(messages, direction="in") == len(sockets) + 1
        assert found.value(messages, direction="out") == 2 * len(sockets) + 1  # + error frame
        errors = "laf_function_errors_total"
        assert found.value(errors, function="__websocket__", kind="error") == 1
        assert "process_cpu_seconds_total" in found.names()
        if len(scraped) == 2 and calls >= 4:
            break
    assert len(scraped) == 2, "the scrapes never reached the second worker"

    # SIGKILL one worker: its sockets drop; the supervisor starts another in its place.
    victim = next(iter(scraped))
    survivors = holders[scraped[next(pid for pid in scraped if pid != victim)]]
    os.kill(victim, signal.SIGKILL)

    async def settled() -> bool:
        try:
            async with httpx.AsyncClient(timeout=10) as fresh:
                found = await scrape(fresh, server.url)
        except httpx.TransportError:
            return False
        return (
            requests_total(found, "pid", "GET", 200) == calls
            and found.value("laf_websocket_connections") == survivors
        )

    await wait_until(settled, timeout=20)
    for ws in sockets:
        await ws.close()
    assert folder.is_dir()
    server.process.send_signal(signal.SIGTERM)
    server.process.wait(15)
    assert not folder.exists(), "the metrics folder outlived the server"


async def test_failures_of_every_trigger_are_counted(serve, functions_dir: Path) -> None:
    """Scheduled runs and queued jobs fail through the invoker like HTTP calls do."""
    write_function(
        functions_dir,
        "nightly",
        'schedule = "0 3 * * *"\n\ndef main(ctx):\n    raise RuntimeError("nightly failed")\n',
    )
    write_function(
        functions_dir,
        "job",
        "queue_attempts = 2\nqueue_backoff = 600\n\n"
        "def main(ctx):\n    raise RuntimeError('job failed')\n",
    )
    async with serve(functions_dir) as server, httpx.AsyncClient(timeout=10) as http:
        runtime = server.server.runtime
        assert await runtime.scheduler.run_now("nightly") == (ANY_ID, "failed")
        await cloud.queue.push("job", {})
        assert await runtime.jobs.drain(20) == 2
        found = await scrape(http, server.url)
        assert found.value("laf_function_errors_total", function="nightly", kind="error") == 1
        assert found.value("laf_function_errors_total", function="job", kind="error") == 2


class _AnyId(str):
    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and len(other) == 24

    __hash__ = str.__hash__


ANY_ID = _AnyId()
