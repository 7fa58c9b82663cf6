"""``/__websocket__`` end to end: a real server, real ``websockets`` clients, real HTTP calls.

Function files record what they see in ``cloud.shared``; the test runs in the server's process
and event loop, so it reads those records directly (polling with ``wait_until``, never sleeping).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Close

from laf_py import Socket, cloud

from .conftest import EXAMPLES, wait_until, write_function

pytestmark = pytest.mark.both_servers

HEX24 = re.compile(r"[0-9a-f]{24}")
HEX12 = re.compile(r"[0-9a-f]{12}")

# Records every event with what ctx holds; answers "ready" on connect and "got" per message.
RECORDER = """
from laf_py import cloud

async def main(ctx):
    cloud.shared.setdefault("events", []).append({
        "method": ctx.method,
        "params": dict(ctx.params),
        "custom": ctx.headers.get("x-custom"),
        "query": dict(ctx.query),
        "user": ctx.user,
        "body": ctx.body,
        "function_name": ctx.function_name,
        "request_id": ctx.request_id,
        "socket": ctx.socket,
    })
    if ctx.method == "WebSocket:connection":
        ctx.socket.send(ctx.socket.id)
    elif ctx.method == "WebSocket:message":
        ctx.socket.send("got")
"""


async def recv(ws: Any, timeout: float = 5.0) -> str | bytes:
    return await asyncio.wait_for(ws.recv(), timeout)


async def recv_json(ws: Any) -> Any:
    frame = await recv(ws)
    assert isinstance(frame, str), f"expected a text frame, got {frame!r}"
    return json.loads(frame)


async def closed_with(ws: Any) -> Close:
    """Read until the server closes the connection; return the close frame it sent."""
    with pytest.raises(ConnectionClosed) as info:
        while True:
            await recv(ws)
    assert info.value.rcvd is not None, "the server sent no close frame"
    return info.value.rcvd


def events(method: str | None = None) -> list[dict[str, Any]]:
    recorded = cloud.shared.get("events", [])
    return [e for e in recorded if method is None or e["method"] == method]


def closes() -> list[dict[str, Any]]:
    return events("WebSocket:close")


# -- the endpoint ----------------------------------------------------------------------------


async def test_handshake_refused_404_without_websocket_function(serve, functions_dir: Path):
    """No functions/__websocket__.py: the upgrade is refused with 404."""
    write_function(functions_dir, "hello", "def main(ctx):\n    return 'hi'\n")
    async with serve(functions_dir) as server:
        with pytest.raises(InvalidStatus) as info:
            await websockets.connect(server.ws_url)
        assert info.value.response.status_code == 404
        error = json.loads(info.value.response.body)["error"]
        assert str(functions_dir.resolve() / "__websocket__.py") in error


async def test_handshake_refused_500_when_websocket_function_is_broken(serve, functions_dir: Path):
    """A __websocket__.py with a syntax error: the upgrade is refused with 500."""
    write_function(functions_dir, "__websocket__", "async def main(ctx:\n    pass\n")
    async with serve(functions_dir) as server:
        with pytest.raises(InvalidStatus) as info:
            await websockets.connect(server.ws_url)
        assert info.value.response.status_code == 500
        # The error names the file in the folder actually served, not "functions/".
        error = json.loads(info.value.response.body)["error"]
        assert str(functions_dir.resolve() / "__websocket__.py") in error


# -- ctx -------------------------------------------------------------------------------------


async def _one_full_connection(server: Any) -> str:
    """Connect with a header and a query, send text and binary, close; return the socket id."""
    async with websockets.connect(
        server.ws_url + "?room=a", additional_headers={"X-Custom": "abc"}
    ) as ws:
        socket_id = await recv(ws)
        await ws.send("hello")
        assert await recv(ws) == "got"
        await ws.send(b"\x00\xff")
        assert await recv(ws) == "got"
        await ws.close(1000, "done")
    await wait_until(closes)
    assert isinstance(socket_id, str)
    return socket_id


async def test_ctx_has_handshake_headers_and_query_on_every_event(serve, functions_dir: Path):
    """headers and query of the handshake are on connection, message and close."""
    write_function(functions_dir, "__websocket__", RECORDER)
    async with serve(functions_dir) as server:
        await _one_full_connection(server)
        recorded = events()
    assert [e["method"] for e in recorded] == [
        "WebSocket:connection",
        "WebSocket:message",
        "WebSocket:message",
        "WebSocket:close",
    ]
    for event in recorded:
        assert event["custom"] == "abc"
        assert event["query"] == {"room": "a"}


async def test_ctx_user_body_and_function_name_on_every_event(serve, functions_dir: Path):
    """Without a token: user None, body None, function_name "__websocket__"."""
    write_function(functions_dir, "__websocket__", RECORDER)
    async with serve(functions_dir) as server:
        await _one_full_connection(server)
        recorded = events()
    assert len(recorded) == 4
    for event in recorded:
        assert event["user"] is None
        assert event["body"] is None
        assert event["function_name"] == "__websocket__"


async def test_ctx_request_id_is_fresh_per_event(serve, functions_dir: Path):
    """Each event gets its own 24-hex request id."""
    write_function(functions_dir, "__websocket__", RECORDER)
    async with serve(functions_dir) as server:
        await _one_full_connection(server)
        ids = [e["request_id"] for e in events()]
    assert len(ids) == 4
    assert all(HEX24.fullmatch(i) for i in ids)
    assert len(set(ids)) == 4


async def test_ctx_socket_is_the_same_on_every_event(serve, functions_dir: Path):
    """One connection: the same Socket object and id on every event, the id the client saw."""
    write_function(functions_dir, "__websocket__", RECORDER)
    async with serve(functions_dir) as server:
        socket_id = await _one_full_connection(server)
        sockets = [e["socket"] for e in events()]
    assert len(sockets) == 4
    assert isinstance(sockets[0], Socket)
    assert all(s is sockets[0] for s in sockets)
    assert sockets[0].id == socket_id


async def test_ctx_socket_ids_differ_between_connections(serve, functions_dir: Path):
    """Two connections have two different socket ids."""
    write_function(functions_dir, "__websocket__", RECORDER)
    async with (
        serve(functions_dir) as server,
        websockets.connect(server.ws_url) as a,
        websockets.connect(server.ws_url) as b,
    ):
        id_a, id_b = await recv(a), await recv(b)
    assert id_a != id_b
    assert id_a and id_b


async def test_ctx_params_per_event(serve, functions_dir: Path):
    """connection {}, text/binary message data + is_binary, close code and reason."""
    write_function(functions_dir, "__websocket__", RECORDER)
    async with serve(functions_dir) as server:
        await _one_full_connection(server)
        params = [e["params"] for e in events()]
    assert params == [
        {},
        {"data": "hello", "is_binary": False},
        {"data": b"\x00\xff", "is_binary": True},
        {"code": 1000, "reason": "done"},
    ]


# -- ordering --------------------------------------------------------------------------------

ORDERED = """
import asyncio
from laf_py import cloud

async def main(ctx):
    log = cloud.shared.setdefault("order", [])
    if ctx.method == "WebSocket:connection":
        await asyncio.sleep(0.2)
        log.append("connection")
    elif ctx.method == "WebSocket:message":
        data = ctx.params["data"]
        load = cloud.shared.setdefault("load", {"active": 0, "max": 0})
        load["active"] += 1
        load["max"] = max(load["max"], load["active"])
        log.append("start:" + data)
        await asyncio.sleep(0.3 if data == "slow" else 0.03)
        log.append("end:" + data)
        load["active"] -= 1
        ctx.socket.send("done:" + data)
    else:
        log.append("close")
"""


async def test_connection_event_finishes_before_first_message(serve, functions_dir: Path):
    """A message sent right after the handshake waits for the slow connection event."""
    write_function(functions_dir, "__websocket__", ORDERED)
    async with serve(functions_dir) as server, websockets.connect(server.ws_url) as ws:
        await ws.send("1")
        assert await recv(ws) == "done:1"
        assert cloud.shared["order"] == ["connection", "start:1", "end:1"]


async def test_messages_are_handled_in_order_without_overlap(serve, functions_dir: Path):
    """Messages sent back to back run one at a time, in order."""
    write_function(functions_dir, "__websocket__", ORDERED)
    async with serve(functions_dir) as server, websockets.connect(server.ws_url) as ws:
        for n in "1234":
            await ws.send(n)
        assert [await recv(ws) for _ in range(4)] == ["done:1", "done:2", "done:3", "done:4"]
        assert cloud.shared["order"][1:] == [
            part for n in "1234" for part in (f"start:{n}", f"end:{n}")
        ]
        assert cloud.shared["load"]["max"] == 1


TASK_BOUND = """
import asyncio
from laf_py import cloud

async def main(ctx):
    if ctx.method != "WebSocket:message":
        return
    data = ctx.params["data"]
    before = asyncio.current_task()
    # A timeout begun before the event's first wait must belong to the task that goes on
    # with it: were the event's first step run in one task and the rest in another, this
    # would cancel the wrong one, or never fire.
    async with asyncio.timeout(0.2 if data == "late" else 5):
        await asyncio.sleep(1 if data == "late" else 0.01)
    cloud.shared.setdefault("same_task", []).append(asyncio.current_task() is before)
    ctx.socket.send("done:" + data)
"""


async def test_an_event_that_waits_stays_in_its_own_task(serve, functions_dir: Path):
    """Messages whose events wait (an awaited sleep inside asyncio.timeout), sent back to
    back: each event runs to its end in the task it began in, in order, and a timeout in one
    fails that call only (its error frame), while the connection goes on."""
    write_function(functions_dir, "__websocket__", TASK_BOUND)
    async with serve(functions_dir) as server, websockets.connect(server.ws_url) as ws:
        for n in ("1", "2", "late", "3"):
            await ws.send(n)
        answers = [await recv(ws) for _ in range(4)]
        assert answers[:2] == ["done:1", "done:2"]
        assert json.loads(answers[2])["error"]  # the late one timed out: its error frame
        assert answers[3] == "done:3"
        assert cloud.shared["same_task"] == [True, True, True]
        await ws.send("4")
        assert await recv(ws) == "done:4"


async def test_close_waits_for_message_in_flight(serve, functions_dir: Path):
    """The client closes during a slow message: close runs after it, exactly once."""
    write_function(functions_dir, "__websocket__", ORDERED)
    async with serve(functions_dir) as server:
        async with websockets.connect(server.ws_url) as ws:
            await ws.send("slow")
        await wait_until(lambda: "close" in cloud.shared.get("order", []))
        order = cloud.shared["order"]
    assert order == ["connection", "start:slow", "end:slow", "close"]


async def test_close_after_vanishing_waits_for_message_in_flight(serve, functions_dir: Path):
    """The client drops TCP during a slow message: close runs after it, exactly once."""
    write_function(functions_dir, "__websocket__", ORDERED)
    async with serve(functions_dir) as server:
        ws = await websockets.connect(server.ws_url)
        await ws.send("slow")
        await wait_until(lambda: "start:slow" in cloud.shared.get("order", []))
        ws.transport.abort()
        await wait_until(lambda: "close" in cloud.shared.get("order", []))
        order = cloud.shared["order"]
    assert order == ["connection", "start:slow", "end:slow", "close"]


SLOW_CONNECT = """
import asyncio
from laf_py import HTTPError, cloud

async def main(ctx):
    log = cloud.shared.setdefault("order", [])
    if ctx.method == "WebSocket:connection":
        log.append("connection:start")
        await asyncio.sleep(0.3)
        log.append("connection:end")
        if ctx.query.get("reject"):
            raise HTTPError(401, "no token")
    else:
        log.append(ctx.method)
"""


async def test_close_after_vanishing_waits_for_connection_in_flight(serve, functions_dir: Path):
    """The client drops TCP during a slow connection event: close runs after it, once."""
    write_function(functions_dir, "__websocket__", SLOW_CONNECT)
    async with serve(functions_dir) as server:
        ws = await websockets.connect(server.ws_url)
        await wait_until(lambda: "connection:start" in cloud.shared.get("order", []))
        ws.transport.abort()
        await wait_until(lambda: "WebSocket:close" in cloud.shared.get("order", []))
        shared = cloud.shared
    assert shared["order"] == ["connection:start", "connection:end", "WebSocket:close"]


async def test_vanished_then_rejected_connection_gets_its_close_event(serve, functions_dir: Path):
    """The client drops TCP during a connection event that then rejects: the close event
    still runs (its connection event ran and may have stored something), with the rejection."""
    write_function(
        functions_dir,
        "__websocket__",
        SLOW_CONNECT.replace("log.append(ctx.method)", "log.append((ctx.method, ctx.params))"),
    )
    async with serve(functions_dir) as server:
        ws = await websockets.connect(server.ws_url + "?reject=1")
        await wait_until(lambda: "connection:start" in cloud.shared.get("order", []))
        ws.transport.abort()
        await wait_until(lambda: len(cloud.shared.get("order", [])) == 3)
        shared = cloud.shared
    assert shared["order"] == [
        "connection:start",
        "connection:end",
        ("WebSocket:close", {"code": 4401, "reason": "no token"}),
    ]


async def test_shutdown_waits_for_connection_in_flight_then_closes(serve, functions_dir: Path):
    """Shutting down during a slow connection event: it finishes, then close runs once."""
    write_function(functions_dir, "__websocket__", SLOW_CONNECT)
    async with serve(functions_dir) as server:
        ws = await websockets.connect(server.ws_url)
        await wait_until(lambda: "connection:start" in cloud.shared.get("order", []))
        shared = cloud.shared
    assert shared["order"] == ["connection:start", "connection:end", "WebSocket:close"]
    close = await closed_with(ws)
    assert (close.code, close.reason) == (1001, "server shutting down")


async def test_shutdown_waits_for_message_in_flight_then_closes(serve, functions_dir: Path):
    """Shutting down during a slow message: it finishes, then close runs once."""
    write_function(functions_dir, "__websocket__", ORDERED)
    async with serve(functions_dir) as server:
        ws = await websockets.connect(server.ws_url)
        await ws.send("slow")
        await wait_until(lambda: "start:slow" in cloud.shared.get("order", []))
        shared = cloud.shared
    assert shared["order"] == ["connection", "start:slow", "end:slow", "close"]
    close = await closed_with(ws)
    assert (close.code, close.reason) == (1001, "server shutting down")


# -- close, exactly once ---------------------------------------------------------------------

CLOSER = RECORDER.replace(
    'ctx.socket.send("got")',
    'ctx.socket.close(4000, "bye") if ctx.params["data"] == "bye" else ctx.socket.send("got")',
)


async def test_close_event_once_on_client_close(serve, functions_dir: Path):
    """Client closes with 1000 "done": one close event with that code and reason."""
    write_function(functions_dir, "__websocket__", RECORDER)
    async with serve(functions_dir) as server:
        async with websockets.connect(server.ws_url) as ws:
            await recv(ws)
            await ws.close(1000, "done")
        await wait_until(closes)
        shared = cloud.shared
    assert [e["params"] for e in shared["events"] if e["method"] == "WebSocket:close"] == [
        {"code": 1000, "reason": "done"}
    ]


async def test_close_event_once_when_client_vanishes(serve, functions_dir: Path):
    """The TCP connection drops without a close frame: one close event, code None."""
    write_function(functions_dir, "__websocket__", RECORDER)
    async with serve(functions_dir) as server:
        ws = await websockets.connect(server.ws_url)
        await recv(ws)
        ws.transport.abort()
        await wait_until(closes)
        shared = cloud.shared
    assert [e["params"] for e in shared["events"] if e["method"] == "WebSocket:close"] == [
        {"code": None, "reason": ""}
    ]


async def test_server_close_reaches_client_and_runs_close_once(serve, functions_dir: Path):
    """ctx.socket.close(4000, "bye"): the client sees 4000 "bye"; one close event runs."""
    write_function(functions_dir, "__websocket__", CLOSER)
    async with serve(functions_dir) as server:
        async with websockets.connect(server.ws_url) as ws:
            await recv(ws)
            await ws.send("bye")
            close = await closed_with(ws)
        await wait_until(closes)
        shared = cloud.shared
    assert (close.code, close.reason) == (4000, "bye")
    assert [e["method"] for e in shared["events"]].count("WebSocket:close") == 1


async def test_shutdown_closes_sockets_with_1001_and_runs_close(serve, functions_dir: Path):
    """Leaving serve closes open sockets with 1001 and runs each close event once."""
    write_function(functions_dir, "__websocket__", RECORDER)
    async with serve(functions_dir) as server:
        first = await websockets.connect(server.ws_url)
        second = await websockets.connect(server.ws_url)
        await recv(first)
        await recv(second)
        shared = cloud.shared
    for ws in (first, second):
        close = await closed_with(ws)
        assert (close.code, close.reason) == (1001, "server shutting down")
    closed = [e["socket"] for e in shared["events"] if e["method"] == "WebSocket:close"]
    assert len(closed) == 2
    assert len({s.id for s in closed}) == 2


# -- rejecting -------------------------------------------------------------------------------

REJECTING = """
from laf_py import HTTPError, cloud

async def main(ctx):
    cloud.shared.setdefault("events", []).append(
        {"method": ctx.method, "socket": ctx.socket}
    )
    if ctx.method == "WebSocket:connection":
        status = int(ctx.query.get("status", "0"))
        if status:
            raise HTTPError(status, ctx.query.get("reason"))
        if ctx.query.get("crash"):
            raise ValueError("connection crashed")
        ctx.socket.send("welcome")
    elif ctx.method == "WebSocket:message":
        ctx.socket.send("got")
"""


@pytest.mark.parametrize(
    ("status", "reason", "code"), [(401, "no token", 4401), (403, "forbidden", 4403)]
)
async def test_http_error_in_connection_rejects_with_4000_plus_status(
    serve, functions_dir: Path, status: int, reason: str, code: int
):
    """HTTPError(status, msg) in the connection event → close 4000+status with msg."""
    write_function(functions_dir, "__websocket__", REJECTING)
    async with serve(functions_dir) as server:
        url = f"{server.ws_url}?status={status}&reason={reason.replace(' ', '+')}"
        async with websockets.connect(url) as ws:
            close = await closed_with(ws)
    assert (close.code, close.reason) == (code, reason)


async def test_long_rejection_reason_is_cut_to_fit_a_close_frame(serve, functions_dir: Path):
    """A reason over 123 bytes reaches the client cut to fit, on a character boundary."""
    write_function(functions_dir, "__websocket__", REJECTING)
    reason = "é" * 100  # 200 bytes of UTF-8
    async with (
        serve(functions_dir) as server,
        websockets.connect(f"{server.ws_url}?status=403&reason={reason}") as ws,
    ):
        close = await closed_with(ws)
    assert close.code == 4403
    assert reason.startswith(close.reason)
    assert 0 < len(close.reason.encode()) <= 123


async def test_rejected_connection_gets_a_close_event_with_the_rejection(
    serve, functions_dir: Path
):
    """A connection event that rejects is followed by a close event with the rejection's
    code and reason, so whatever the connection event stored can be cleaned up."""
    write_function(
        functions_dir,
        "__websocket__",
        REJECTING.replace(
            '{"method": ctx.method, "socket": ctx.socket}',
            '{"method": ctx.method, "socket": ctx.socket, "params": dict(ctx.params)}',
        ),
    )
    async with serve(functions_dir) as server:
        async with websockets.connect(server.ws_url + "?status=401&reason=no+token") as ws:
            await closed_with(ws)
        await wait_until(lambda: len(cloud.shared["events"]) == 2)
        shared = cloud.shared
    assert [(e["method"], e["params"]) for e in shared["events"]] == [
        ("WebSocket:connection", {}),
        ("WebSocket:close", {"code": 4401, "reason": "no token"}),
    ]


async def test_rejected_socket_is_not_in_cloud_sockets(serve, functions_dir: Path):
    """After a rejection the socket is not registered and sends to it report 0."""
    write_function(functions_dir, "__websocket__", REJECTING)
    async with serve(functions_dir) as server:
        async with websockets.connect(server.ws_url + "?status=403") as ws:
            await closed_with(ws)
        rejected = cloud.shared["events"][0]["socket"]
        assert cloud.sockets.get(rejected.id) is None
        assert rejected not in list(cloud.sockets)
        assert len(cloud.sockets) == 0
        assert await rejected.send("late") == 0


async def test_interceptor_without_next_rejects_with_4403(serve, functions_dir: Path):
    """An interceptor that returns without calling next → close 4403 "Forbidden"."""
    write_function(functions_dir, "__websocket__", REJECTING)
    write_function(
        functions_dir,
        "__interceptor__",
        """
        async def main(ctx, next):
            return "no"
        """,
    )
    async with serve(functions_dir) as server:
        async with websockets.connect(server.ws_url) as ws:
            close = await closed_with(ws)
        shared = cloud.shared
    assert (close.code, close.reason) == (4403, "Forbidden")
    assert "events" not in shared  # __websocket__ never ran, not even for close


async def test_interceptor_raising_http_error_rejects_connection(serve, functions_dir: Path):
    """An interceptor raising HTTPError(401, msg) → close 4401 with msg."""
    write_function(functions_dir, "__websocket__", REJECTING)
    write_function(
        functions_dir,
        "__interceptor__",
        """
        from laf_py import HTTPError

        async def main(ctx, next):
            raise HTTPError(401, "who are you")
        """,
    )
    async with serve(functions_dir) as server, websockets.connect(server.ws_url) as ws:
        close = await closed_with(ws)
    assert (close.code, close.reason) == (4401, "who are you")


async def test_interceptor_calling_next_admits_and_skips_messages(serve, functions_dir: Path):
    """An interceptor that calls next lets the connection in; messages bypass it."""
    write_function(functions_dir, "__websocket__", REJECTING)
    write_function(
        functions_dir,
        "__interceptor__",
        """
        from laf_py import cloud

        async def main(ctx, next):
            cloud.shared.setdefault("intercepted", []).append(ctx.method)
            return await next(ctx)
        """,
    )
    async with serve(functions_dir) as server, websockets.connect(server.ws_url) as ws:
        assert await recv(ws) == "welcome"
        await ws.send("hi")
        assert await recv(ws) == "got"
        await ws.send("again")
        assert await recv(ws) == "got"
        assert cloud.shared["intercepted"] == ["WebSocket:connection"]


async def test_crash_in_connection_sends_error_frame_then_1011(serve, functions_dir: Path):
    """Any other exception in connection → error frame, then close 1011."""
    write_function(functions_dir, "__websocket__", REJECTING)
    async with serve(functions_dir) as server:
        async with websockets.connect(server.ws_url + "?crash=1") as ws:
            error = await recv_json(ws)
            close = await closed_with(ws)
        shared = cloud.shared
    assert error["error"] == "Internal Server Error"
    assert HEX24.fullmatch(error["request_id"])
    assert close.code == 1011
    # the connection event ran, so its close event follows
    assert [e["method"] for e in shared["events"]] == ["WebSocket:connection", "WebSocket:close"]


# -- errors in message events ----------------------------------------------------------------

FAILING = """
import asyncio
from laf_py import HTTPError

timeout = 0.2

async def main(ctx):
    if ctx.method == "WebSocket:connection":
        ctx.socket.send(ctx.socket.id)
    elif ctx.method == "WebSocket:message":
        data = ctx.params["data"]
        if data == "crash":
            1 / 0
        if data == "bad":
            raise HTTPError(400, "bad input")
        if data == "slow":
            await asyncio.sleep(30)
        ctx.socket.send("ok:" + data)
"""


async def test_message_exception_sends_error_frame_and_stays_open(serve, functions_dir: Path):
    """An exception in message → {"error": "Internal Server Error", request_id}; still open."""
    write_function(functions_dir, "__websocket__", FAILING)
    async with serve(functions_dir) as server, websockets.connect(server.ws_url) as ws:
        await recv(ws)
        await ws.send("crash")
        error = await recv_json(ws)
        assert set(error) == {"error", "request_id"}
        assert error["error"] == "Internal Server Error"
        assert HEX24.fullmatch(error["request_id"])
        await ws.send("next")
        assert await recv(ws) == "ok:next"


async def test_message_exception_is_logged_with_details(
    serve, functions_dir: Path, caplog: pytest.LogCaptureFixture
):
    """The log names the function, socket id, request id, and has the traceback."""
    caplog.set_level(logging.INFO, logger="laf_py")
    write_function(functions_dir, "__websocket__", FAILING)
    async with serve(functions_dir) as server, websockets.connect(server.ws_url) as ws:
        socket_id = await recv(ws)
        await ws.send("crash")
        request_id = (await recv_json(ws))["request_id"]
    assert isinstance(socket_id, str)
    records = [
        r
        for r in caplog.records
        if r.name == "laf_py" and request_id in r.getMessage() and r.exc_info
    ]
    assert len(records) == 1
    message = records[0].getMessage()
    assert "__websocket__" in message
    assert socket_id in message
    assert "ZeroDivisionError" in caplog.text
    assert "Traceback" in caplog.text


async def test_message_http_error_sends_its_message(serve, functions_dir: Path):
    """HTTPError(400, "bad input") in message → {"error": "bad input", request_id}."""
    write_function(functions_dir, "__websocket__", FAILING)
    async with serve(functions_dir) as server, websockets.connect(server.ws_url) as ws:
        await recv(ws)
        await ws.send("bad")
        error = await recv_json(ws)
        assert error["error"] == "bad input"
        assert HEX24.fullmatch(error["request_id"])
        await ws.send("next")
        assert await recv(ws) == "ok:next"


async def test_message_timeout_sends_error_frame_and_next_works(serve, functions_dir: Path):
    """A message past the module timeout → a timed-out error frame; the next one works."""
    write_function(functions_dir, "__websocket__", FAILING)
    async with serve(functions_dir) as server, websockets.connect(server.ws_url) as ws:
        await recv(ws)
        await ws.send("slow")
        error = await recv_json(ws)
        assert error["error"] == "Function '__websocket__' timed out after 0.2s"
        assert HEX24.fullmatch(error["request_id"])
        await ws.send("next")
        assert await recv(ws) == "ok:next"


async def test_error_frames_can_be_turned_off(serve, functions_dir: Path):
    """websocket_error_frames=False: a failing message sends nothing back."""
    write_function(functions_dir, "__websocket__", FAILING)
    async with (
        serve(functions_dir, websocket_error_frames=False) as server,
        websockets.connect(server.ws_url) as ws,
    ):
        await recv(ws)
        await ws.send("crash")
        await ws.send("after")
        assert await recv(ws) == "ok:after"


# -- Socket.send -----------------------------------------------------------------------------

SENDER = """
from laf_py import cloud

async def main(ctx):
    if ctx.method == "WebSocket:connection":
        cloud.shared["kept"] = ctx.socket
        ctx.socket.send("ready")
    elif ctx.method == "WebSocket:message":
        what = ctx.params["data"]
        if isinstance(what, bytes):
            ctx.socket.send(what)
        elif what == "text":
            ctx.socket.send("plain text")
        elif what == "bytes":
            ctx.socket.send(b"\\x00\\x01\\xff")
        elif what == "dict":
            ctx.socket.send({"a": 1, "b": [True, None]})
        elif what == "list":
            ctx.socket.send([1, "two"])
        elif what == "await":
            count = await ctx.socket.send("awaited")
            ctx.socket.send({"count": count})
        elif what == "set":
            ctx.socket.send({"tags": {object()}})
        elif what.startswith("echo"):
            ctx.socket.send(what)
        ctx.socket.send("end")
    else:
        cloud.shared["sent_on_close"] = await ctx.socket.send("too late")
        cloud.shared["closed"] = True
"""

LATE_SEND = """
from laf_py import cloud

async def main(ctx):
    socket = cloud.shared["kept"]
    socket.send("not awaited")
    return {"count": await socket.send("awaited"), "closed": socket.closed}
"""


@pytest.mark.parametrize(
    ("what", "expected"),
    [
        ("text", "plain text"),
        ("bytes", b"\x00\x01\xff"),
        ("dict", '{"a":1,"b":[true,null]}'),
        ("list", '[1,"two"]'),
    ],
)
async def test_send_maps_types_to_frames(serve, functions_dir: Path, what: str, expected: Any):
    """str → text, bytes → binary, dict/list → JSON text; no await needed."""
    write_function(functions_dir, "__websocket__", SENDER)
    async with serve(functions_dir) as server, websockets.connect(server.ws_url) as ws:
        assert await recv(ws) == "ready"
        await ws.send(what)
        frame = await recv(ws)
        assert type(frame) is type(expected)
        if isinstance(expected, str) and expected[0] in "[{":
            assert json.loads(frame) == json.loads(expected)
        else:
            assert frame == expected
        assert await recv(ws) == "end"


@pytest.mark.parametrize("size", [125, 126, 300, 65535, 65536, 200_000])
async def test_send_encodes_frames_of_every_length(serve, functions_dir: Path, size: int):
    """Text and binary frames of 7-bit, 16-bit and 64-bit lengths arrive intact."""
    write_function(functions_dir, "__websocket__", SENDER)
    text = "echo" + "é" * ((size - 4) // 2) + "x" * ((size - 4) % 2)
    binary = bytes(range(256)) * (size // 256) + bytes(size % 256)
    async with serve(functions_dir) as server, websockets.connect(server.ws_url) as ws:
        await recv(ws)
        await ws.send(text)
        assert await recv(ws) == text
        assert await recv(ws) == "end"
        await ws.send(binary)
        assert await recv(ws) == binary
        assert await recv(ws) == "end"


async def test_awaited_send_reports_one(serve, functions_dir: Path):
    """await ctx.socket.send(x) → 1 once written."""
    write_function(functions_dir, "__websocket__", SENDER)
    async with serve(functions_dir) as server, websockets.connect(server.ws_url) as ws:
        await recv(ws)
        await ws.send("await")
        assert await recv(ws) == "awaited"
        assert await recv_json(ws) == {"count": 1}


async def test_send_of_unsupported_type_raises_type_error(
    serve, functions_dir: Path, caplog: pytest.LogCaptureFixture
):
    """Sending what JSON cannot hold raises TypeError in the function: an error frame back."""
    caplog.set_level(logging.INFO, logger="laf_py")
    write_function(functions_dir, "__websocket__", SENDER)
    async with serve(functions_dir) as server, websockets.connect(server.ws_url) as ws:
        await recv(ws)
        await ws.send("set")
        error = await recv_json(ws)
        assert error["error"] == "Internal Server Error"
        await ws.send("text")
        assert await recv(ws) == "plain text"
    assert "TypeError" in caplog.text


async def test_send_on_closed_socket_returns_zero(serve, functions_dir: Path, http):
    """A Socket kept after its connection closed: send is a no-op that reports 0."""
    write_function(functions_dir, "__websocket__", SENDER)
    write_function(functions_dir, "late", LATE_SEND)
    async with serve(functions_dir) as server:
        async with websockets.connect(server.ws_url) as ws:
            await recv(ws)
        await wait_until(lambda: cloud.shared.get("closed"))
        response = await http.post(server.fn_url("late"))
    assert response.status_code == 200
    assert response.json() == {"count": 0, "closed": True}


async def test_send_in_close_event_returns_zero(
    serve, functions_dir: Path, caplog: pytest.LogCaptureFixture
):
    """Sending from the close event (the socket is gone) reports 0 and logs no error."""
    caplog.set_level(logging.INFO, logger="laf_py")
    write_function(functions_dir, "__websocket__", SENDER)
    async with serve(functions_dir) as server:
        async with websockets.connect(server.ws_url) as ws:
            await recv(ws)
        await wait_until(lambda: cloud.shared.get("closed"))
        assert cloud.shared["sent_on_close"] == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# -- plain def __websocket__ -----------------------------------------------------------------

SYNC = """
import threading
from laf_py import cloud

def main(ctx):
    if ctx.method == "WebSocket:connection":
        ctx.socket.send("ready")
    elif ctx.method == "WebSocket:message":
        off_loop = threading.current_thread() is not threading.main_thread()
        ctx.socket.send(f"thread:{off_loop}")
        count = ctx.socket.send("waited").result(timeout=5)
        ctx.socket.send({"count": count})
        cloud.sockets.broadcast("to everyone")
"""


async def test_plain_def_websocket_sends_from_thread(serve, functions_dir: Path):
    """A plain def main runs in a thread; send works without await and .result() is 1."""
    write_function(functions_dir, "__websocket__", SYNC)
    async with serve(functions_dir) as server, websockets.connect(server.ws_url) as ws:
        assert await recv(ws) == "ready"
        await ws.send("go")
        assert await recv(ws) == "thread:True"
        assert await recv(ws) == "waited"
        assert await recv_json(ws) == {"count": 1}
        assert await recv(ws) == "to everyone"


async def test_plain_def_websocket_broadcast_reaches_others(serve, functions_dir: Path):
    """cloud.sockets.broadcast from the thread reaches the other connections too."""
    write_function(functions_dir, "__websocket__", SYNC)
    async with (
        serve(functions_dir) as server,
        websockets.connect(server.ws_url) as a,
        websockets.connect(server.ws_url) as b,
    ):
        assert await recv(a) == "ready"
        assert await recv(b) == "ready"
        await a.send("go")
        assert await recv(b) == "to everyone"


# -- the Laf pattern: a socket kept in cloud.shared, pushed to from HTTP ----------------------

LAF_WS = """
from laf_py import cloud

async def main(ctx):
    ws_map = cloud.shared.get("wsMap")
    if ws_map is None:
        ws_map = {}
        cloud.shared.set("wsMap", ws_map)
    user = ctx.query["user"]
    if ctx.method == "WebSocket:connection":
        ws_map[user] = ctx.socket
        ctx.socket.send("hello " + user)
    elif ctx.method == "WebSocket:close":
        ws_map.pop(user, None)
"""

LAF_PUSH = """
from laf_py import cloud

async def main(ctx):
    socket = cloud.shared.get("wsMap").get(ctx.body["user"])
    return {"delivered": await socket.send(ctx.body["message"])}
"""


async def test_laf_pattern_http_function_pushes_to_stored_socket(
    serve, functions_dir: Path, http: httpx.AsyncClient
):
    """An HTTP function finds the Socket in cloud.shared["wsMap"] and sends to it."""
    write_function(functions_dir, "__websocket__", LAF_WS)
    write_function(functions_dir, "push_to", LAF_PUSH)
    async with (
        serve(functions_dir) as server,
        websockets.connect(server.ws_url + "?user=bob") as ws,
    ):
        assert await recv(ws) == "hello bob"
        response = await http.post(
            server.fn_url("push_to"), json={"user": "bob", "message": "Message test"}
        )
        assert response.status_code == 200
        assert response.json() == {"delivered": 1}
        assert await recv(ws) == "Message test"


# -- the example functions (functions/ of the repository) -------------------------------------

CONNECTED = "Connection established, your userID is: "
RECEIVED = "Server has received the message event, your userID is: "


async def _greeted(ws: Any) -> str:
    greeting = await recv(ws)
    assert isinstance(greeting, str) and greeting.startswith(CONNECTED)
    user_id = greeting.removeprefix(CONNECTED)
    assert HEX12.fullmatch(user_id)
    return user_id


async def test_example_greets_each_client_with_a_user_id(serve):
    """Each client gets "Connection established, your userID is: <12 hex>", ids differ."""
    async with (
        serve(EXAMPLES) as server,
        websockets.connect(server.ws_url) as a,
        websockets.connect(server.ws_url) as b,
    ):
        id_a, id_b = await _greeted(a), await _greeted(b)
        assert id_a != id_b
        assert set(cloud.shared["wsMap"]) == {id_a, id_b}


async def test_example_echoes_text(serve):
    """Text "hi" → the received notice, then {"echo": "hi"}."""
    async with serve(EXAMPLES) as server, websockets.connect(server.ws_url) as ws:
        user_id = await _greeted(ws)
        await ws.send("hi")
        assert await recv(ws) == RECEIVED + user_id
        assert await recv_json(ws) == {"echo": "hi"}


async def test_example_echoes_binary(serve):
    """A binary frame → the received notice, then the same bytes back."""
    async with serve(EXAMPLES) as server, websockets.connect(server.ws_url) as ws:
        user_id = await _greeted(ws)
        await ws.send(b"\x00\x01binary\xff")
        assert await recv(ws) == RECEIVED + user_id
        assert await recv(ws) == b"\x00\x01binary\xff"


async def test_example_chat_reaches_the_other_client(serve):
    """Chat from A reaches B as {"type": "chat", "from": A, ...}; A gets an ack of 1."""
    async with (
        serve(EXAMPLES) as server,
        websockets.connect(server.ws_url) as a,
        websockets.connect(server.ws_url) as b,
    ):
        id_a = await _greeted(a)
        await _greeted(b)
        await a.send(json.dumps({"type": "chat", "text": "yo"}))
        assert await recv_json(b) == {"type": "chat", "from": id_a, "text": "yo"}
        assert await recv_json(a) == {"type": "ack", "delivered": 1}


async def test_example_push_from_http(serve, http: httpx.AsyncClient):
    """POST /fn/push {"userID", "message"} → {"delivered": 1}; the client gets the message."""
    async with serve(EXAMPLES) as server, websockets.connect(server.ws_url) as ws:
        user_id = await _greeted(ws)
        response = await http.post(
            server.fn_url("push"), json={"userID": user_id, "message": "hello"}
        )
        assert response.status_code == 200
        assert response.json() == {"delivered": 1}
        assert await recv(ws) == "hello"


async def test_example_chat_send_from_http_reaches_everyone(serve, http: httpx.AsyncClient):
    """POST /fn/chat/send {"text": "x"} → every client receives the chat frame."""
    async with (
        serve(EXAMPLES) as server,
        websockets.connect(server.ws_url) as a,
        websockets.connect(server.ws_url) as b,
    ):
        await _greeted(a)
        await _greeted(b)
        response = await http.post(server.fn_url("chat/send"), json={"text": "x"})
        assert response.status_code == 200
        assert response.json() == {"delivered": 2}
        for ws in (a, b):
            assert await recv_json(ws) == {"type": "chat", "from": "http", "text": "x"}


async def test_example_forgets_user_after_close(serve):
    """After a client closes, wsMap no longer holds its userID; the other stays."""
    async with serve(EXAMPLES) as server, websockets.connect(server.ws_url) as stays:
        kept = await _greeted(stays)
        async with websockets.connect(server.ws_url) as leaves:
            gone = await _greeted(leaves)
        await wait_until(lambda: gone not in cloud.shared["wsMap"])
        assert kept in cloud.shared["wsMap"]
