"""The slow-consumer rule judges a backlog that does not drain, not the size of a message.

A client that is reading gets every byte of every message up to the outbound limit
(``8 x --max-send-buffer``), however big and however slowly it reads; a client that stops
reading is still dropped with 1008 "slow consumer" in bounded time (no byte of its backlog
taken for ``SEND_STALL``, or its unsent data past ``16 x --max-send-buffer``); a message over
the outbound limit is refused at the call, in the function, and nothing is sent.

Real servers on ephemeral ports, real clients: the websockets library for clients that read,
the raw client of test_limits for ones that read slowly or not at all. Nothing sleeps to wait
for a condition: ``wait_until`` polls with a deadline, and reads have timeouts. (The one
``asyncio.sleep`` is the slow reader's pace: it stands for a slow network.)
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from laf_py import cloud
from laf_py.asgi.websocket import AsgiSocketConnection
from laf_py.config import Settings
from laf_py.server import connection

from .conftest import wait_until, write_function
from .test_limits import CLOSE, PING, PONG, RawClient, raw_client

pytestmark = pytest.mark.both_servers

MIB = 1024 * 1024
KIB = 1024
SLOW = {"code": 1008, "reason": "slow consumer"}

# A numbered message: its tag in the first 4 bytes, then one byte repeated, so a message that
# arrives cut, padded or mixed with another shows.
PATTERN = """
def pattern(tag, size):
    return tag.to_bytes(4, "big") + bytes([tag % 251]) * (size - 4)
"""

# Records opens and closes; ?user= binds a user; ?push=<size> sends a message of that size
# from the connection event (so it goes out right behind the handshake answer); echoes text.
WEBSOCKET = (
    PATTERN
    + """
from laf_py import cloud

async def main(ctx):
    socket = ctx.socket
    if ctx.method == "WebSocket:connection":
        cloud.shared.setdefault("opened", []).append(socket.id)
        if "user" in ctx.query:
            socket.user_id = ctx.query["user"]
        if "push" in ctx.query:
            socket.send(pattern(7, int(ctx.query["push"])))
    elif ctx.method == "WebSocket:message":
        socket.send("echo:" + ctx.params["data"])
    else:
        cloud.shared.setdefault("closed", {}).setdefault(socket.id, []).append(dict(ctx.params))
"""
)

# ?id=&size=&count=&first=&await=1: send `count` numbered messages to one socket, awaiting
# each write (await=1) or all at once and then awaiting them.
PUSH = (
    PATTERN
    + """
from laf_py import cloud

async def main(ctx):
    q = ctx.query
    socket = cloud.sockets.get(q["id"])
    size, count, first = int(q["size"]), int(q.get("count", 1)), int(q.get("first", 0))
    tags = range(first, first + count)
    if q.get("await") == "1":
        return {"sent": [await socket.send(pattern(tag, size)) for tag in tags]}
    deliveries = [socket.send(pattern(tag, size)) for tag in tags]
    return {"sent": [await delivery for delivery in deliveries]}
"""
)

# ?id=&size=&every=: send a message of `size` bytes every `every` seconds, without waiting for
# the writes, until the socket is gone (at most 30 s); returns how many were sent.
KEEP_SENDING = """
import asyncio, time
from laf_py import cloud

async def main(ctx):
    socket = cloud.sockets.get(ctx.query["id"])
    size, every = int(ctx.query["size"]), float(ctx.query["every"])
    sent, deadline = 0, time.monotonic() + 30
    while time.monotonic() < deadline and not socket.closed:
        socket.send(bytes(size))  # not awaited: the function does not wait for the client
        sent += 1
        await asyncio.sleep(every)
    return {"sent": sent, "closed": socket.closed}
"""

# ?id=&size=&how=: one message of `size` bytes by socket.send, publish, broadcast or
# send_to_user ("u1"); a ValueError is returned as {"error": ...}, except for how=raise.
TOO_BIG = """
from laf_py import cloud

async def main(ctx):
    q = ctx.query
    socket = cloud.sockets.get(q["id"])
    data, how = bytes(int(q["size"])), q["how"]
    if how == "raise":
        socket.send(data)
        return {"sent": True}
    try:
        if how == "send":
            delivery = socket.send(data)
        elif how == "text":
            delivery = socket.send("x" * len(data))
        elif how == "publish":
            delivery = cloud.sockets.publish(data, [socket.id])
        elif how == "broadcast":
            delivery = cloud.sockets.broadcast(data)
        else:
            delivery = cloud.sockets.send_to_user("u1", data)
    except ValueError as exc:
        return {"error": str(exc)}
    return {"reached": await delivery}
"""

# The same from a plain def (a worker thread): the error is raised there, at the call.
TOO_BIG_THREAD = """
from laf_py import cloud

def main(ctx):
    socket = cloud.sockets.get(ctx.query["id"])
    try:
        return {"reached": socket.send(bytes(int(ctx.query["size"]))).result(5)}
    except ValueError as exc:
        return {"error": str(exc)}
"""


def pattern(tag: int, size: int) -> bytes:
    return tag.to_bytes(4, "big") + bytes([tag % 251]) * (size - 4)


def opened() -> list[str]:
    return list(cloud.shared.get("opened", []))


def closed() -> dict[str, list[dict[str, Any]]]:
    return dict(cloud.shared.get("closed", {}))


# Tornado's stall rule watches the bytes of a backlog leave; an ASGI app sees only whole
# messages sent, so under uvicorn the server's pings drop a client that stops reading.
STALL_RULE = pytest.mark.tornado_only("the stall rule needs the socket's byte counts")


def connection_of(socket_id: str) -> connection.SocketConnection:
    socket = cloud.sockets.get(socket_id)
    assert socket is not None, f"socket {socket_id} is gone"
    transport = socket._transport  # type: ignore[union-attr]
    assert isinstance(transport, connection.SocketConnection)
    return transport


def small_kernel_buffer(socket_id: str) -> None:
    """A small kernel send buffer on the server's side, as on a slow network: on loopback the
    kernel may take megabytes of what the client does not read, leaving the server's own
    backlog (what the rule judges) empty."""
    transport = connection_of(socket_id)
    if isinstance(transport, AsgiSocketConnection):
        return  # the ASGI server's socket is out of reach: the cap is reached a little later
    stream = transport._stream
    assert stream is not None
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * KIB)


async def read_to_eof(client: RawClient) -> None:
    """Read what the client left unread until the server's side of TCP is closed."""
    loop = asyncio.get_running_loop()
    try:
        while await asyncio.wait_for(loop.sock_recv(client.sock, 1 * MIB), 5):
            pass
    except ConnectionResetError:
        pass


async def recv(ws: Any, timeout: float = 10.0) -> Any:
    return await asyncio.wait_for(ws.recv(), timeout)


async def join(server: Any, **query: str) -> tuple[Any, str]:
    """A reading websockets client (no size limit) and its socket id."""
    url = server.ws_url + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")
    before = set(opened())
    ws = await websockets.connect(url, max_size=None)
    new = await wait_until(lambda: set(opened()) - before)
    return ws, next(iter(new))


async def still_open(ws: Any, socket_id: str) -> None:
    """The connection works both ways and the server has not closed it."""
    await ws.send("still there?")
    assert await recv(ws) == "echo:still there?"
    assert socket_id in cloud.sockets
    assert socket_id not in closed()


@pytest.fixture
def folder(functions_dir: Path) -> Path:
    write_function(functions_dir, "__websocket__", WEBSOCKET)
    write_function(functions_dir, "push", PUSH)
    write_function(functions_dir, "keep_sending", KEEP_SENDING)
    write_function(functions_dir, "too_big", TOO_BIG)
    write_function(functions_dir, "too_big_thread", TOO_BIG_THREAD)
    return functions_dir


@pytest.fixture
def quick_stall(monkeypatch: pytest.MonkeyPatch) -> float:
    """SEND_STALL of 1 s instead of 5, to keep the suite quick (the rule is the same)."""
    monkeypatch.setattr(connection, "SEND_STALL", 1.0)
    return 1.0


def test_the_limits_follow_max_send_buffer() -> None:
    settings = Settings()
    assert settings.max_send_buffer == 1 * MIB
    assert settings.max_outbound_message == 8 * MIB
    assert settings.max_send_backlog == 16 * MIB
    small = Settings(max_send_buffer=64 * KIB)
    assert (small.max_outbound_message, small.max_send_backlog) == (512 * KIB, 1 * MIB)
    assert connection.SEND_STALL == 5.0


# -- a reading client gets every byte ----------------------------------------------------------


async def test_a_5_mib_send_to_a_reading_client_arrives_whole(
    serve, folder: Path, http: httpx.AsyncClient
):
    """The issue's case, with the default settings: one socket.send of 5 MiB (five times
    --max-send-buffer) to a client that reads arrives whole, and the client stays."""
    async with serve(folder) as server:
        ws, socket_id = await join(server)
        try:
            response = await http.get(
                server.fn_url("push"), params={"id": socket_id, "size": 5 * MIB}
            )
            assert response.json() == {"sent": [1]}
            assert await recv(ws) == pattern(0, 5 * MIB)
            await still_open(ws, socket_id)
        finally:
            await ws.close()


async def test_several_big_messages_in_a_row_all_arrive(
    serve, folder: Path, http: httpx.AsyncClient
):
    """Five 5 MiB messages, each awaited, then two more sent at once without awaiting (10 MiB
    unsent at a time, within the 16 MiB cap): all seven arrive whole and in order."""
    async with serve(folder) as server:
        ws, socket_id = await join(server)
        try:
            params = {"id": socket_id, "size": 5 * MIB, "await": "1", "count": 5}
            paced = asyncio.ensure_future(http.get(server.fn_url("push"), params=params))
            got = [await recv(ws) for _ in range(5)]
            assert (await paced).json() == {"sent": [1] * 5}
            params = {"id": socket_id, "size": 5 * MIB, "count": 2, "first": 5}
            burst = asyncio.ensure_future(http.get(server.fn_url("push"), params=params))
            got += [await recv(ws) for _ in range(2)]
            assert (await burst).json() == {"sent": [1, 1]}
            for tag, message in enumerate(got):
                assert message == pattern(tag, 5 * MIB), f"message {tag} arrived damaged"
            await still_open(ws, socket_id)
        finally:
            await ws.close()


async def read_slowly(client: RawClient, count: int, rate: float) -> list[bytes]:
    """Read ``count`` data frames at ``rate`` bytes a second, answering pings as they come."""
    loop = asyncio.get_running_loop()
    buffer = bytearray(client._buffer)
    started, taken, messages = time.monotonic(), 0, []
    while len(messages) < count:
        while True:  # parse what is buffered
            if len(buffer) < 2:
                break
            length, start = buffer[1] & 0x7F, 2
            if length == 126:
                length, start = int.from_bytes(buffer[2:4], "big"), 4
            elif length == 127:
                length, start = int.from_bytes(buffer[2:10], "big"), 10
            if len(buffer) < start + length:
                break
            opcode, payload = buffer[0] & 0x0F, bytes(buffer[start : start + length])
            del buffer[: start + length]
            assert opcode != CLOSE, f"the server closed: {payload!r}"
            if opcode == PING:
                await client.send_frame(PONG, payload)
            else:
                messages.append(payload)
        if len(messages) == count:
            break
        chunk = await asyncio.wait_for(loop.sock_recv(client.sock, 64 * KIB), 10)
        if not chunk:
            raise ConnectionError("the server closed the TCP connection")
        buffer += chunk
        taken += len(chunk)
        ahead = taken / rate - (time.monotonic() - started)
        if ahead > 0:
            await asyncio.sleep(ahead)  # the pace of a slow network, not a wait
    return messages


@STALL_RULE
async def test_a_client_reading_slowly_for_longer_than_the_stall_time_keeps_its_connection(
    serve, folder: Path, http: httpx.AsyncClient, quick_stall: float
):
    """A 2 MiB message (the most, at --max-send-buffer 256k) to a client that takes it at
    1 MiB/s: its backlog is over --max-send-buffer for longer than SEND_STALL, and it
    misses ping timeouts (its ping waits behind the message), yet it is reading, so it gets
    the whole message and stays."""
    settings = {"max_send_buffer": 256 * KIB, "ping_interval": 0.4, "ping_timeout": 0.4}
    async with (
        serve(folder, **settings) as server,
        raw_client(server.server.port, rcvbuf=64 * KIB) as client,
    ):
        socket_id = (await wait_until(opened))[0]
        small_kernel_buffer(socket_id)
        watched: list[bool] = []
        request = asyncio.ensure_future(
            http.get(server.fn_url("push"), params={"id": socket_id, "size": 2 * MIB})
        )
        reading = asyncio.ensure_future(read_slowly(client, 1, rate=1 * MIB))
        while not reading.done() and socket_id not in closed():
            watched.append(connection_of(socket_id)._backlog is not None)
            await asyncio.wait([reading], timeout=0.05)
        assert socket_id not in closed(), f"dropped: {closed()}"
        assert await reading == [pattern(0, 2 * MIB)]
        # The rule watched its backlog for longer than SEND_STALL (else this tests nothing).
        assert sum(watched) * 0.05 > 1.2 * quick_stall, f"watched {sum(watched)} times"
        assert (await request).json() == {"sent": [1]}
        assert socket_id in cloud.sockets
        assert socket_id not in closed()


async def test_a_push_right_after_open_and_two_writers_at_once(
    serve, folder: Path, http: httpx.AsyncClient
):
    """5 MiB sent by the connection event goes out right behind the handshake answer and
    arrives first and whole; then two functions write 2 MiB messages to the same socket at
    once: every message arrives whole, each writer's in its order."""
    async with serve(folder) as server:
        ws, socket_id = await join(server, push=str(5 * MIB))
        try:
            assert await recv(ws) == pattern(7, 5 * MIB)
            writers = [
                asyncio.ensure_future(
                    http.get(
                        server.fn_url("push"),
                        params={"id": socket_id, "size": 2 * MIB, "count": 4, "first": first}
                        | ({"await": "1"} if first == 100 else {}),
                    )
                )
                for first in (100, 200)
            ]
            got = [await recv(ws) for _ in range(8)]
            assert [(await w).json() for w in writers] == [{"sent": [1] * 4}] * 2
            tags = [int.from_bytes(message[:4], "big") for message in got]
            assert [t for t in tags if t < 200] == [100, 101, 102, 103]
            assert [t for t in tags if t >= 200] == [200, 201, 202, 203]
            for tag, message in zip(tags, got, strict=True):
                assert message == pattern(tag, 2 * MIB), f"message {tag} arrived damaged"
            await still_open(ws, socket_id)
        finally:
            await ws.close()


# -- a client that stops reading is still dropped ----------------------------------------------


@STALL_RULE
async def test_a_backlog_that_does_not_drain_is_dropped_after_the_stall_time(
    serve, folder: Path, http: httpx.AsyncClient, quick_stall: float
):
    """2 MiB (twice --max-send-buffer, within the cap) to a client that never reads: not
    dropped for its size, but once SEND_STALL has passed with no byte taken: 1008 "slow
    consumer", its close event runs, and it is gone from cloud.sockets."""
    async with serve(folder) as server, raw_client(server.server.port, rcvbuf=4096) as client:
        socket_id = (await wait_until(opened))[0]
        small_kernel_buffer(socket_id)
        started = time.monotonic()
        # (The function awaits its send: it ends when the socket does, and reports 0.)
        response = await http.get(server.fn_url("push"), params={"id": socket_id, "size": 2 * MIB})
        assert response.json() == {"sent": [0]}
        await wait_until(lambda: socket_id in closed(), timeout=quick_stall + 5)
        elapsed = time.monotonic() - started
        assert closed()[socket_id] == [SLOW]
        assert socket_id not in cloud.sockets
        assert elapsed >= quick_stall * 0.8, f"dropped after {elapsed:.2f}s: for its size?"
        assert elapsed < quick_stall * 1.2 + 1, f"dropped only after {elapsed:.2f}s"
        await read_to_eof(client)


@STALL_RULE
async def test_a_client_that_stops_reading_while_the_server_keeps_sending_is_dropped(
    serve, folder: Path, http: httpx.AsyncClient, quick_stall: float
):
    """A function keeps sending 16 KiB every 10 ms to a client that never reads: the sends
    are no progress; within about SEND_STALL after the kernel's buffers fill (well before
    the 16 MiB cap would be reached) the client is dropped with 1008, its close event runs,
    and the function sees its sends report 0."""
    async with serve(folder) as server, raw_client(server.server.port, rcvbuf=4096) as client:
        socket_id = (await wait_until(opened))[0]
        small_kernel_buffer(socket_id)
        started = time.monotonic()
        params = {"id": socket_id, "size": 16 * KIB, "every": 0.01}
        response = await http.get(server.fn_url("keep_sending"), params=params, timeout=40)
        elapsed = time.monotonic() - started
        assert response.json()["closed"] is True
        assert elapsed < quick_stall + 4, f"dropped only after {elapsed:.2f}s"
        await wait_until(lambda: socket_id in closed())
        assert closed()[socket_id] == [SLOW]
        assert socket_id not in cloud.sockets
        await read_to_eof(client)


async def test_a_backlog_past_the_cap_is_dropped_at_once(
    serve, folder: Path, http: httpx.AsyncClient
):
    """24 messages of 1 MiB at once to a client that never reads pass the 16 MiB cap: it is
    dropped there and then, without waiting for SEND_STALL."""
    async with serve(folder) as server, raw_client(server.server.port, rcvbuf=4096):
        socket_id = (await wait_until(opened))[0]
        small_kernel_buffer(socket_id)
        started = time.monotonic()
        params = {"id": socket_id, "size": 1 * MIB, "count": 24}
        response = await http.get(server.fn_url("push"), params=params)
        assert response.json() == {"sent": [0] * 24}  # none was written out
        await wait_until(lambda: socket_id in closed())
        assert time.monotonic() - started < connection.SEND_STALL
        assert closed()[socket_id] == [SLOW]


# -- a message over the outbound limit is refused at the call ----------------------------------


@pytest.mark.parametrize("how", ["send", "text", "publish", "broadcast", "user"])
async def test_a_message_over_the_outbound_limit_raises_in_the_function(
    serve, folder: Path, http: httpx.AsyncClient, how: str
):
    """At --max-send-buffer 64k the limit is 512 KiB: a message of exactly that arrives; one
    byte more raises ValueError at the call (naming the size, the limit and the option),
    nothing is sent, and the socket stays open."""
    limit = 512 * KIB
    async with serve(folder, max_send_buffer=64 * KIB) as server:
        ws, socket_id = await join(server, user="u1")
        try:
            url = server.fn_url("too_big")
            over = await http.get(url, params={"id": socket_id, "size": limit + 1, "how": how})
            assert over.status_code == 200
            error = over.json()["error"]
            assert error.startswith(f"WebSocket message of {limit + 1} bytes is over the {limit}-")
            assert "--max-send-buffer" in error and "LAF_MAX_SEND_BUFFER" in error
            await still_open(ws, socket_id)  # nothing came before the echo

            at = await http.get(url, params={"id": socket_id, "size": limit, "how": how})
            assert at.json() == {"reached": 1}
            message = await recv(ws)
            assert len(message) == limit
            await still_open(ws, socket_id)
        finally:
            await ws.close()


async def test_an_uncaught_over_limit_error_fails_the_call_and_a_thread_sees_it_too(
    serve, folder: Path, http: httpx.AsyncClient
):
    """Not caught, the ValueError makes the HTTP call that tried a 500; a plain def (a
    worker thread) gets it at its call as well. The socket stays open through both."""
    async with serve(folder, max_send_buffer=64 * KIB) as server:
        ws, socket_id = await join(server)
        try:
            params = {"id": socket_id, "size": 512 * KIB + 1}
            failed = await http.get(server.fn_url("too_big"), params=params | {"how": "raise"})
            assert failed.status_code == 500
            threaded = await http.get(server.fn_url("too_big_thread"), params=params)
            assert "is over the 524288-byte limit" in threaded.json()["error"]
            await still_open(ws, socket_id)
        finally:
            await ws.close()
