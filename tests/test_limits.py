"""Limits and hardening: body and message sizes, connection caps, flood and slow-consumer
protection, heartbeats, allowed origins, and how those settings are read.

Real servers on ephemeral ports and real clients (httpx, websockets, and a hand-made WebSocket
client over a raw TCP socket for what a well-behaved library will not do: stop reading, never
answer a ping). Function files record what they see in ``cloud.shared``; the tests run in the
server's event loop and read those records directly, polling with ``wait_until``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Close
from websockets.typing import Origin

from laf_py import cloud
from laf_py.config import Settings
from laf_py.core import flood
from laf_py.core.flood import FloodGuard
from laf_py.server.keepalive import Keepalive

from .conftest import run_to_exit, wait_until, write_function

pytestmark = pytest.mark.both_servers

# The WebSocket protocol is the server's: each says why it closed in its own words.
PING_TIMEOUT_REASON = {"tornado": "ping timeout", "uvicorn": "keepalive ping timeout"}
NO_CODE = {"code": None, "reason": ""}


def too_big_reason(server_kind: str, limit: int) -> str:
    if server_kind == "uvicorn":
        return f"frame exceeds limit of {limit} bytes"
    return "message too big"


MIB = 1024 * 1024
HEX24 = re.compile(r"[0-9a-f]{24}")

# An HTTP function that records every call, so a refused request can be shown not to run it.
RECORD = """
from laf_py import cloud

async def main(ctx):
    body = ctx.body if isinstance(ctx.body, bytes) else b""
    cloud.shared.setdefault("calls", []).append(len(body))
    return {"size": len(body)}
"""

# The WebSocket function: records opens, messages and closes; answers "echo:<data>" (or the
# size, for large messages).
WEBSOCKET = """
from laf_py import cloud

async def main(ctx):
    socket_id = ctx.socket.id
    if ctx.method == "WebSocket:connection":
        cloud.shared.setdefault("opened", []).append(socket_id)
    elif ctx.method == "WebSocket:message":
        data = ctx.params["data"]
        cloud.shared.setdefault("messages", []).append(socket_id)
        shown = data if isinstance(data, str) and len(data) <= 32 else f"{len(data)} bytes"
        ctx.socket.send("echo:" + shown)
    else:
        cloud.shared.setdefault("closed", {}).setdefault(socket_id, []).append(dict(ctx.params))
"""

# Broadcasts 64 KiB binary messages (numbered in their first 4 bytes) until one socket stops
# being reached, then 10 more; returns how many sockets each broadcast reached.
BLAST = """
import asyncio
from laf_py import cloud

async def main(ctx):
    reached, extra = [], None
    for i in range(int(ctx.query["max"])):
        payload = i.to_bytes(4, "big") + bytes(64 * 1024 - 4)
        reached.append(await cloud.sockets.broadcast(payload))
        if extra is None and reached[-1] < reached[0]:
            extra = 10
        elif extra is not None:
            extra -= 1
            if extra == 0:
                break
        await asyncio.sleep(0)  # let the reading clients, in this same event loop, read
    return {"reached": reached}
"""


def opened() -> list[str]:
    return list(cloud.shared.get("opened", []))


def closed() -> dict[str, list[dict[str, Any]]]:
    return dict(cloud.shared.get("closed", {}))


async def recv(ws: Any, timeout: float = 5.0) -> str | bytes:
    return await asyncio.wait_for(ws.recv(), timeout)


async def closed_with(ws: Any, timeout: float = 5.0) -> tuple[list[str | bytes], Close]:
    """Read until the server closes; return the frames read before and its close frame."""
    frames: list[str | bytes] = []
    with pytest.raises(ConnectionClosed) as info:
        while True:
            frames.append(await recv(ws, timeout))
    assert info.value.rcvd is not None, "the server sent no close frame"
    return frames, info.value.rcvd


def refused_status(info: pytest.ExceptionInfo[InvalidStatus]) -> int:
    return info.value.response.status_code


class RawClient:
    """A WebSocket client written by hand over a non-blocking TCP socket.

    After the handshake it does only what the test asks: it may never read again (a stuck or
    vanished client), or read frames without ever answering a ping.
    """

    def __init__(self, sock: socket.socket, buffered: bytes) -> None:
        self.sock = sock
        self._buffer = buffered
        self._loop = asyncio.get_running_loop()

    @classmethod
    async def connect(
        cls, port: int, *, rcvbuf: int | None = None, path: str = "/__websocket__"
    ) -> RawClient:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # a small window: the kernel absorbs less of what we never read
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, ("127.0.0.1", port))
            key = base64.b64encode(os.urandom(16)).decode()
            request = (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            )
            await loop.sock_sendall(sock, request.encode())
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await asyncio.wait_for(loop.sock_recv(sock, 4096), 5)
                assert chunk, f"connection closed during the handshake: {data!r}"
                data += chunk
        except BaseException:
            sock.close()
            raise
        head, _, rest = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(sock, rest)

    async def _read_exactly(self, n: int) -> bytes:
        while len(self._buffer) < n:
            chunk = await asyncio.wait_for(self._loop.sock_recv(self.sock, 65536), 5)
            if not chunk:
                raise ConnectionError("the server closed the TCP connection")
            self._buffer += chunk
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data

    async def read_frame(self) -> tuple[int, bytes]:
        """(opcode, payload) of the next frame from the server (never masked, never split)."""
        first, second = await self._read_exactly(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await self._read_exactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await self._read_exactly(8))
        return first & 0x0F, await self._read_exactly(length)

    async def at_eof(self) -> bool:
        """True once the server has closed the TCP connection with nothing more to read."""
        if self._buffer:
            return False
        try:
            chunk = await asyncio.wait_for(self._loop.sock_recv(self.sock, 65536), 5)
        except ConnectionResetError:
            return True
        return chunk == b""

    async def send_frame(self, opcode: int, payload: bytes) -> None:
        """One final frame, masked as a client must."""
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        assert len(payload) < 126
        await self._loop.sock_sendall(
            self.sock, bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked
        )

    def close(self) -> None:
        self.sock.close()


@contextlib.asynccontextmanager
async def raw_client(port: int, **options: Any) -> AsyncIterator[RawClient]:
    client = await RawClient.connect(port, **options)
    try:
        yield client
    finally:
        client.close()


PING, PONG, TEXT, CLOSE = 0x9, 0xA, 0x1, 0x8


# -- HTTP bodies: --max-body-size ------------------------------------------------------------


def test_default_limits_are_documented_values():
    """10 MiB bodies, 1 MiB messages and send buffers, 10000 connections, 100 msg/s."""
    settings = Settings()
    assert settings.max_body_size == 10 * MIB
    assert settings.max_message_size == 1 * MIB
    assert settings.max_send_buffer == 1 * MIB
    assert settings.max_connections == 10_000
    assert settings.max_messages_per_second == 100
    assert settings.ping_timeout <= settings.ping_interval
    assert settings.allowed_origins == ()


async def test_body_over_limit_with_content_length_is_413(serve, functions_dir: Path, http):
    """A declared body of limit+1 bytes: 413 JSON with the request id, and the function never
    runs; the connection stays usable (the body was read and dropped)."""
    write_function(functions_dir, "record", RECORD)
    async with serve(functions_dir, max_body_size=1000) as server:
        response = await http.post(server.fn_url("record"), content=b"x" * 1001)
        assert response.status_code == 413
        assert response.headers["content-type"].startswith("application/json")
        body = response.json()
        assert body["error"] == "Body larger than 1000 bytes"
        assert HEX24.fullmatch(body["request_id"])
        assert body["request_id"] == response.headers["x-request-id"]
        assert "calls" not in cloud.shared

        # A much larger upload (within what the server drains) is refused the same way.
        response = await http.post(server.fn_url("record"), content=b"x" * 60_000)
        assert response.status_code == 413
        assert "calls" not in cloud.shared


@pytest.mark.parametrize(("declared", "expect"), [(5000, "Expect: 100-continue\r\n"), (10**9, "")])
async def test_declared_length_over_limit_is_refused_before_the_body_is_sent(
    serve, functions_dir: Path, declared: int, expect: str
):
    """Only the headers are sent: the 413 comes back at once, without waiting for the body,
    for a client that waits for "100 Continue" and for a body too large to drain."""
    write_function(functions_dir, "record", RECORD)
    async with serve(functions_dir, max_body_size=1000) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.server.port)
        try:
            writer.write(
                b"POST /fn/record HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/octet-stream\r\n"
                + f"Content-Length: {declared}\r\n{expect}\r\n".encode()
            )
            await writer.drain()
            status = await asyncio.wait_for(reader.readline(), 5)
            headers = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        finally:
            writer.close()
        assert status.startswith(b"HTTP/1.1 413"), status
        length = int(re.search(rb"(?i)content-length: (\d+)", headers).group(1))  # type: ignore[union-attr]
        assert b"Body larger than 1000 bytes" in await asyncio.wait_for(
            reader.readexactly(length), 5
        )
        assert "calls" not in cloud.shared


async def _chunks(total: int, size: int = 200) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        chunk = b"y" * min(size, total - sent)
        sent += len(chunk)
        yield chunk


async def test_chunked_body_growing_past_limit_is_413(serve, functions_dir: Path, http):
    """A chunked upload (no Content-Length) that grows past the limit gets the 413 response,
    and the function never runs."""
    write_function(functions_dir, "record", RECORD)
    async with serve(functions_dir, max_body_size=1000) as server:
        response = await http.post(server.fn_url("record"), content=_chunks(2000))
        assert response.request.headers["transfer-encoding"] == "chunked"
        assert response.status_code == 413
        assert response.json()["error"] == "Body larger than 1000 bytes"
        assert "calls" not in cloud.shared


async def test_chunked_body_past_limit_is_413_for_a_blocking_client(serve, functions_dir: Path):
    """The same with httpx's blocking client (plain sockets), from a thread."""
    write_function(functions_dir, "record", RECORD)

    def post(url: str) -> httpx.Response:
        with httpx.Client(timeout=10) as client:
            return client.post(url, content=(b"y" * 200 for _ in range(10)))

    async with serve(functions_dir, max_body_size=1000) as server:
        response = await asyncio.to_thread(post, server.fn_url("record"))
        assert response.status_code == 413
        assert response.json()["error"] == "Body larger than 1000 bytes"
        assert "calls" not in cloud.shared


async def test_body_exactly_at_limit_is_accepted(serve, functions_dir: Path, http):
    """limit bytes, declared or chunked, reach the function whole."""
    write_function(functions_dir, "record", RECORD)
    headers = {"Content-Type": "application/octet-stream"}
    async with serve(functions_dir, max_body_size=1000) as server:
        declared = await http.post(server.fn_url("record"), content=b"x" * 1000, headers=headers)
        assert declared.status_code == 200, declared.text
        assert declared.json() == {"size": 1000}
        chunked = await http.post(server.fn_url("record"), content=_chunks(1000), headers=headers)
        assert chunked.status_code == 200, chunked.text
        assert chunked.json() == {"size": 1000}
        assert cloud.shared["calls"] == [1000, 1000]


async def test_server_keeps_serving_after_413(serve, functions_dir: Path):
    """After refused bodies, a new connection is served normally and health stays ok."""
    write_function(functions_dir, "record", RECORD)
    headers = {"Content-Type": "application/octet-stream"}
    async with serve(functions_dir, max_body_size=1000) as server:
        for _ in range(3):
            async with httpx.AsyncClient(timeout=10) as client:
                refused = await client.post(server.fn_url("record"), content=b"x" * 5000)
                assert refused.status_code == 413
        async with httpx.AsyncClient(timeout=10) as client:
            ok = await client.post(server.fn_url("record"), content=b"x" * 10, headers=headers)
            assert ok.status_code == 200
            assert ok.json() == {"size": 10}
            health = await client.get(f"{server.url}/_/healthz")
            assert health.status_code == 200
        assert cloud.shared["calls"] == [10]


# -- WebSocket messages: --max-message-size --------------------------------------------------


async def test_message_over_limit_closes_1009_and_runs_close_event(
    serve, functions_dir: Path, server_kind: str
):
    """limit bytes pass; limit+1 closes the connection with 1009 and the close event runs
    (with the reason the server that read the frame gave)."""
    write_function(functions_dir, "__websocket__", WEBSOCKET)
    async with serve(functions_dir, max_message_size=4096) as server:
        async with websockets.connect(server.ws_url) as ws:
            await ws.send("a" * 4095)
            assert await recv(ws) == "echo:4095 bytes"
            await ws.send(b"b" * 4096)
            assert await recv(ws) == "echo:4096 bytes"
            await ws.send("c" * 4097)
            _, close = await closed_with(ws)
        assert close.code == 1009
        socket_id = opened()[0]
        await wait_until(lambda: socket_id in closed())
        reason = too_big_reason(server_kind, 4096)
        assert closed()[socket_id] == [{"code": 1009, "reason": reason}]
        assert cloud.shared["messages"] == [socket_id, socket_id]  # the big one never ran
        await wait_until(lambda: server.server.activity.connections == 0)
        assert len(cloud.sockets) == 0


async def test_default_message_limit_is_one_mib(serve, functions_dir: Path):
    """With default settings, 1 MiB passes and 1 MiB + 1 closes with 1009."""
    write_function(functions_dir, "__websocket__", WEBSOCKET)
    async with serve(functions_dir) as server, websockets.connect(server.ws_url) as ws:
        await ws.send(b"x" * MIB)
        assert await recv(ws) == f"echo:{MIB} bytes"
        await ws.send(b"x" * (MIB + 1))
        _, close = await closed_with(ws)
        assert close.code == 1009


# -- --max-connections -----------------------------------------------------------------------


async def test_max_connections_refuses_with_503_until_one_closes(serve, functions_dir: Path):
    """Two connections allowed: the third handshake gets 503 JSON; after one closes (and the
    server's count drops) a new one is accepted."""
    write_function(functions_dir, "__websocket__", WEBSOCKET)
    async with serve(functions_dir, max_connections=2) as server:
        activity = server.server.activity
        first = await websockets.connect(server.ws_url)
        second = await websockets.connect(server.ws_url)
        try:
            with pytest.raises(InvalidStatus) as info:
                await websockets.connect(server.ws_url)
            assert refused_status(info) == 503
            body = json.loads(info.value.response.body)
            assert body["error"] == "Too many connections; try again later"
            assert HEX24.fullmatch(body["request_id"])
            assert activity.connections == 2

            await first.close()
            await wait_until(lambda: activity.connections == 1)
            async with websockets.connect(server.ws_url) as third:
                await third.send("hi")
                assert await recv(third) == "echo:hi"
                assert activity.connections == 2
            # The one still open was never disturbed.
            await second.send("still here")
            assert await recv(second) == "echo:still here"
        finally:
            await first.close()
            await second.close()


async def test_max_connections_holds_for_simultaneous_handshakes(serve, functions_dir: Path):
    """Six handshakes at once with max_connections=2: exactly two are accepted."""
    write_function(functions_dir, "__websocket__", WEBSOCKET)

    async def attempt(url: str) -> Any:
        try:
            return await websockets.connect(url)
        except InvalidStatus as exc:
            return exc.response.status_code

    async with serve(functions_dir, max_connections=2) as server:
        results = await asyncio.gather(*(attempt(server.ws_url) for _ in range(6)))
        accepted = [r for r in results if not isinstance(r, int)]
        try:
            assert sorted(r for r in results if isinstance(r, int)) == [503] * 4
            assert len(accepted) == 2
            assert server.server.activity.connections == 2
        finally:
            for ws in accepted:
                await ws.close()


# -- --max-messages-per-second ---------------------------------------------------------------

FLOOD_ERROR = "Too many messages: at most 5 per second"

# Echoes like WEBSOCKET, but "block" waits until the test opens cloud.shared["gate"], so the
# messages sent meanwhile pile up behind it, as they do behind any slow event.
GATED = WEBSOCKET.replace(
    "from laf_py import cloud",
    "import asyncio\nfrom laf_py import cloud",
).replace(
    '        ctx.socket.send("echo:" + shown)',
    """        if data == "block":
            cloud.shared["blocked"] = True
            await cloud.shared.setdefault("gate", asyncio.Event()).wait()
            del cloud.shared["gate"]
        ctx.socket.send("echo:" + shown)""",
)


async def send_behind_a_blocked_message(ws: Any, messages: list[str]) -> None:
    """Send "block", wait until its event is running, then send ``messages`` at once."""
    cloud.shared.pop("blocked", None)
    await ws.send("block")
    await wait_until(lambda: cloud.shared.get("blocked"))
    for message in messages:
        await ws.send(message)


async def test_flooding_client_gets_error_frames_then_1008(serve, functions_dir: Path):
    """Rate 5 (burst 10) counts only messages sent while an earlier one still waits: behind a
    blocked event the first waiter is free, the next ten fit the burst, the rest are refused
    at once with error frames; a client that keeps flooding is closed with 1008."""
    write_function(functions_dir, "__websocket__", GATED)
    async with (
        serve(functions_dir, max_messages_per_second=5) as server,
        websockets.connect(server.ws_url) as ws,
    ):
        await send_behind_a_blocked_message(ws, [f"m{i}" for i in range(13)])
        refusals = [json.loads(await recv(ws)) for _ in range(2)]  # before any echo
        for error in refusals:
            assert error["error"] == FLOOD_ERROR
            assert HEX24.fullmatch(error["request_id"])
        cloud.shared["gate"].set()
        replies = [await recv(ws) for _ in range(12)]
        assert replies == ["echo:block"] + [f"echo:m{i}" for i in range(11)]
        socket_id = opened()[0]
        assert cloud.shared["messages"] == [socket_id] * 12  # refused ones never ran

        with contextlib.suppress(ConnectionClosed):
            await send_behind_a_blocked_message(ws, [f"flood{i}" for i in range(40)])
        frames, close = await closed_with(ws)
        assert close.code == 1008
        assert close.reason == "too many messages"
        for frame in frames:
            assert isinstance(frame, str)
            assert json.loads(frame)["error"] == FLOOD_ERROR
        cloud.shared["gate"].set()
        await wait_until(lambda: socket_id in closed())
        assert closed()[socket_id] == [{"code": 1008, "reason": "too many messages"}]


# Replies first, then goes on working a moment: the client's next message arrives while this
# event is still running, as it does in real apps.
REPLY_THEN_WORK = """
import asyncio
from laf_py import cloud

async def main(ctx):
    if ctx.method == "WebSocket:message":
        ctx.socket.send("echo:" + ctx.params["data"])
        await asyncio.sleep(0.001)
        cloud.shared["handled"] = cloud.shared.get("handled", 0) + 1
"""


@pytest.mark.parametrize("rate", [None, 5.0])
async def test_client_that_waits_for_each_reply_is_never_refused(
    serve, functions_dir: Path, rate: float | None
):
    """10 clients, each sending its next message as soon as the reply arrives, 400 times, as
    fast as the server answers (hundreds per second each): every message is answered and none
    refused, with the default limit (100 per second) and with a limit of 5 per second."""
    write_function(functions_dir, "__websocket__", REPLY_THEN_WORK)
    settings = {} if rate is None else {"max_messages_per_second": rate}

    async def client(url: str, n: int) -> None:
        async with websockets.connect(url) as ws:
            for i in range(400):
                await ws.send(f"{n}.{i}")
                assert await recv(ws) == f"echo:{n}.{i}"

    async with serve(functions_dir, **settings) as server:
        await asyncio.gather(*(client(server.ws_url, n) for n in range(10)))
        await wait_until(lambda: cloud.shared.get("handled") == 4000)


async def test_rate_zero_turns_the_limit_off(serve, functions_dir: Path):
    """max_messages_per_second=0: 200 messages at once are all answered, nothing is closed."""
    write_function(functions_dir, "__websocket__", WEBSOCKET)
    async with (
        serve(functions_dir, max_messages_per_second=0) as server,
        websockets.connect(server.ws_url) as ws,
    ):
        for i in range(200):
            await ws.send(f"m{i}")
        replies = [await recv(ws) for _ in range(200)]
        assert replies == [f"echo:m{i}" for i in range(200)]
        await ws.send("still open")
        assert await recv(ws) == "echo:still open"
        assert closed() == {}


def test_flood_guard_refills_and_detects_persistent_floods(monkeypatch: pytest.MonkeyPatch):
    """The token bucket on a fake clock: burst of twice the rate, refill at rate, persistence
    after more than max(rate, 10) refusals within one second (allowed messages in between do
    not reset it); a new second starts the count again; rate 0 allows everything."""
    now = [1000.0]
    monkeypatch.setattr(flood.time, "monotonic", lambda: now[0])
    guard = FloodGuard(5)
    assert [guard.allows() for _ in range(11)] == [True] * 10 + [False]
    now[0] += 0.2  # one token back
    assert guard.allows()
    assert not guard.allows()
    for _ in range(8):
        assert not guard.allows()
    assert not guard.persists()  # 10 refusals in this second: not yet
    assert not guard.allows()
    assert guard.persists()  # 11
    now[0] += 1.0  # a new second: the count starts again (and 5 tokens came back)
    assert [guard.allows() for _ in range(6)] == [True] * 5 + [False]
    assert not guard.persists()
    now[0] += 10  # a quiet spell refills only up to the burst
    assert [guard.allows() for _ in range(11)] == [True] * 10 + [False]
    assert not guard.persists()

    off = FloodGuard(0)
    assert all(off.allows() for _ in range(10_000))
    assert not off.persists()


# -- slow consumers: --max-send-buffer -------------------------------------------------------


async def test_slow_consumer_is_closed_and_others_get_every_broadcast(
    serve, functions_dir: Path, http
):
    """A client that stops reading while an HTTP function broadcasts 64 KiB messages is closed
    with 1008 "slow consumer" (its close event says so); the reading clients get every
    broadcast, the server forgets the stuck socket and keeps serving."""
    write_function(functions_dir, "__websocket__", WEBSOCKET)
    write_function(functions_dir, "blast", BLAST)
    async with (
        serve(functions_dir, max_send_buffer=256 * 1024) as server,
        raw_client(server.server.port, rcvbuf=4096),  # the handshake, then it never reads
    ):
        await wait_until(lambda: len(opened()) == 1)
        slow_id = opened()[0]
        readers = [await websockets.connect(server.ws_url) for _ in range(2)]
        received: list[list[int]] = [[], []]

        async def read(ws: Any, into: list[int]) -> None:
            async for message in ws:
                into.append(int.from_bytes(message[:4], "big"))

        tasks = [
            asyncio.create_task(read(ws, into)) for ws, into in zip(readers, received, strict=True)
        ]
        try:
            await wait_until(lambda: len(cloud.sockets) == 3)
            response = await http.get(server.fn_url("blast"), params={"max": 400})
            assert response.status_code == 200
            reached = response.json()["reached"]
            assert reached[0] == 3
            assert reached[-1] == 2, "the slow consumer was never dropped"
            dropped_at = reached.index(2)
            assert reached[dropped_at:] == [2] * (len(reached) - dropped_at)

            # Every reading client got every broadcast, in order.
            expected = list(range(len(reached)))
            await wait_until(lambda: all(len(r) == len(expected) for r in received))
            assert received == [expected, expected]

            # The stuck socket is closed, forgotten, and told why.
            await wait_until(lambda: slow_id in closed(), timeout=10)
            assert closed()[slow_id] == [{"code": 1008, "reason": "slow consumer"}]
            assert len(cloud.sockets) == 2
            assert slow_id not in cloud.sockets
            assert server.server.activity.connections == 2

            # The server keeps serving: HTTP, the readers, new connections.
            again = await http.get(server.fn_url("blast"), params={"max": 1})
            assert again.json() == {"reached": [2]}
            await wait_until(lambda: all(len(r) == len(expected) + 1 for r in received))
            async with websockets.connect(server.ws_url) as late:
                await late.send("hi")
                assert await recv(late) == "echo:hi"
        finally:
            for ws in readers:
                await ws.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


# -- heartbeats: --ping-interval / --ping-timeout --------------------------------------------


async def test_client_that_never_answers_pings_is_closed(
    serve, functions_dir: Path, server_kind: str
):
    """ping 0.2 s / timeout 0.2 s: a client that neither reads nor writes after the handshake
    (so never pongs) is dropped and its close event runs with 1011 "ping timeout"; one that
    reads but never pongs sees pings, then that close frame, then the end of the stream (the
    server does not wait for its answer)."""
    write_function(functions_dir, "__websocket__", WEBSOCKET)
    async with serve(functions_dir, ping_interval=0.2, ping_timeout=0.2) as server:
        port = server.server.port
        async with raw_client(port), raw_client(port) as mute:
            await wait_until(lambda: len(opened()) == 2)
            dead_id, mute_id = opened()
            pings = 0
            while True:
                opcode, payload = await mute.read_frame()
                if opcode == PING:
                    pings += 1
                    continue
                assert opcode == CLOSE, (opcode, payload)
                break
            assert pings >= 1
            reason = PING_TIMEOUT_REASON[server_kind]
            assert payload == struct.pack("!H", 1011) + reason.encode()
            assert await mute.at_eof()  # dropped, though it never answered the close frame
            # uvicorn tells the app only that the connection ended without a closing
            # handshake (1006): the close event hears no code.
            heard = {"code": 1011, "reason": reason} if server_kind == "tornado" else NO_CODE
            await wait_until(lambda: mute_id in closed())
            assert closed()[mute_id] == [heard]
            # The one that does nothing at all is dropped too, and its close event runs.
            await wait_until(lambda: dead_id in closed())
            assert closed()[dead_id] == [heard]
            await wait_until(lambda: server.server.activity.connections == 0)
            assert len(cloud.sockets) == 0


async def test_clients_that_answer_pings_stay_connected(serve, functions_dir: Path):
    """A raw client that answers every ping with a pong sees several pings and stays open;
    so does a normal websockets client (it pongs by itself)."""
    write_function(functions_dir, "__websocket__", WEBSOCKET)
    async with (
        serve(functions_dir, ping_interval=0.2, ping_timeout=0.2) as server,
        websockets.connect(server.ws_url, ping_interval=None) as normal,
        raw_client(server.server.port) as raw,
    ):
        pings = 0
        while pings < 4:
            opcode, payload = await raw.read_frame()
            assert opcode == PING, (opcode, payload)  # never a close frame
            pings += 1
            await raw.send_frame(PONG, payload)
        # Both still open, both still served.
        await raw.send_frame(TEXT, b"raw")
        while (frame := await raw.read_frame())[0] == PING:
            await raw.send_frame(PONG, frame[1])
        assert frame == (TEXT, b"echo:raw")
        await normal.send("normal")
        assert await recv(normal) == "echo:normal"
        assert len(cloud.sockets) == 2
        assert closed() == {}


async def test_ping_timeout_longer_than_interval_is_refused_by_the_cli(functions_dir: Path):
    code, output = run_to_exit(
        "serve",
        "--functions",
        str(functions_dir),
        "--ping-interval",
        "1",
        "--ping-timeout",
        "2",
        cwd=functions_dir.parent,
    )
    assert code == 2, output
    assert "Traceback" not in output
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert "--ping-timeout" in lines[0]
    assert "--ping-interval" in lines[0]


# -- allowed origins -------------------------------------------------------------------------


async def _handshake(url: str, origin: str | None) -> int:
    """101 if the upgrade was accepted, else the refusal's status."""
    try:
        async with websockets.connect(
            url, origin=Origin(origin) if origin is not None else None
        ) as ws:
            await ws.send("hi")
            assert await recv(ws) == "echo:hi"
            return 101
    except InvalidStatus as exc:
        return int(exc.response.status_code)


async def test_default_origins_allow_only_same_origin_and_non_browsers(serve, functions_dir: Path):
    write_function(functions_dir, "__websocket__", WEBSOCKET)
    async with serve(functions_dir) as server:
        port = server.server.port
        assert await _handshake(server.ws_url, "https://evil.example") == 403
        assert await _handshake(server.ws_url, f"http://localhost:{port}") == 403
        assert await _handshake(server.ws_url, f"http://127.0.0.1:{port}") == 101
        assert await _handshake(server.ws_url, None) == 101
        assert len(closed()) == 2  # only the accepted two ever became sockets


async def test_allowed_origin_patterns(serve, functions_dir: Path):
    write_function(functions_dir, "__websocket__", WEBSOCKET)
    async with serve(functions_dir, allowed_origins=("https://*.example.com",)) as server:
        port = server.server.port
        assert await _handshake(server.ws_url, "https://app.example.com") == 101
        assert await _handshake(server.ws_url, "HTTPS://API.Example.COM") == 101
        assert await _handshake(server.ws_url, "https://example.org") == 403
        assert await _handshake(server.ws_url, "http://app.example.com") == 403
        assert await _handshake(server.ws_url, "https://app.example.com.evil.org") == 403
        assert await _handshake(server.ws_url, f"http://127.0.0.1:{port}") == 101
        assert await _handshake(server.ws_url, None) == 101


async def test_star_allows_every_origin(serve, functions_dir: Path):
    write_function(functions_dir, "__websocket__", WEBSOCKET)
    async with serve(functions_dir, allowed_origins=("*",)) as server:
        for origin in ("https://evil.example", "null", "http://anything:1234"):
            assert await _handshake(server.ws_url, origin) == 101


async def test_bad_allowed_origins_is_refused_by_the_cli(functions_dir: Path):
    code, output = run_to_exit(
        "serve",
        "--functions",
        str(functions_dir),
        "--allowed-origins",
        "nonsense",
        cwd=functions_dir.parent,
    )
    assert code == 2, output
    assert "Traceback" not in output
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert "--allowed-origins" in lines[0]
    assert "nonsense" in lines[0]


# -- reading the settings --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "field", "expected"),
    [
        ({"LAF_MAX_BODY_SIZE": "10m"}, "max_body_size", 10 * MIB),
        ({"LAF_MAX_BODY_SIZE": "512k"}, "max_body_size", 512 * 1024),
        ({"LAF_MAX_BODY_SIZE": "1048576"}, "max_body_size", MIB),
        ({"LAF_MAX_BODY_SIZE": "10MiB"}, "max_body_size", 10 * MIB),
        ({"LAF_MAX_MESSAGE_SIZE": "64k"}, "max_message_size", 64 * 1024),
        ({"LAF_MAX_SEND_BUFFER": "1g"}, "max_send_buffer", 1024 * MIB),
        ({"LAF_MAX_CONNECTIONS": "3"}, "max_connections", 3),
        ({"LAF_MAX_MESSAGES_PER_SECOND": "0"}, "max_messages_per_second", 0),
        ({"LAF_MAX_MESSAGES_PER_SECOND": "2.5"}, "max_messages_per_second", 2.5),
        ({"LAF_PING_INTERVAL": "5", "LAF_PING_TIMEOUT": "5"}, "ping_timeout", 5),
        (
            {"LAF_ALLOWED_ORIGINS": "https://a.example.com/, https://*.b.example.com"},
            "allowed_origins",
            ("https://a.example.com", "https://*.b.example.com"),
        ),
        ({"LAF_ALLOWED_ORIGINS": "*"}, "allowed_origins", ("*",)),
    ],
)
def test_limit_settings_from_the_environment(
    functions_dir: Path, env: dict[str, str], field: str, expected: Any
):
    settings = Settings.load({"functions_dir": functions_dir}, env)
    assert getattr(settings, field) == expected


def test_flags_win_over_the_environment(functions_dir: Path):
    settings = Settings.load(
        {"functions_dir": functions_dir, "max_body_size": "2k"}, {"LAF_MAX_BODY_SIZE": "1m"}
    )
    assert settings.max_body_size == 2048


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("LAF_MAX_BODY_SIZE", "0"),
        ("LAF_MAX_BODY_SIZE", "-1"),
        ("LAF_MAX_BODY_SIZE", "abc"),
        ("LAF_MAX_BODY_SIZE", "inf"),
        ("LAF_MAX_BODY_SIZE", "1e400"),
        ("LAF_MAX_MESSAGE_SIZE", "0"),
        ("LAF_MAX_SEND_BUFFER", "-5k"),
        ("LAF_MAX_CONNECTIONS", "0"),
        ("LAF_MAX_CONNECTIONS", "1.5"),
        ("LAF_MAX_MESSAGES_PER_SECOND", "-1"),
        ("LAF_MAX_MESSAGES_PER_SECOND", "inf"),
        ("LAF_PING_INTERVAL", "0"),
    ],
)
def test_bad_limit_settings_exit_2_with_one_line(functions_dir: Path, name: str, value: str):
    code, output = run_to_exit(
        "serve", "--functions", str(functions_dir), env={name: value}, cwd=functions_dir.parent
    )
    assert code == 2, output
    assert "Traceback" not in output
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert name in lines[0]
    assert repr(value) in lines[0]


async def test_limits_from_the_environment_reach_the_cli_server(cli_server, functions_dir: Path):
    """`laf-py serve` with LAF_MAX_BODY_SIZE=512k and LAF_MAX_MESSAGES_PER_SECOND=0: it starts,
    512 KiB bodies pass and one byte more is 413."""
    write_function(functions_dir, "record", RECORD)
    server = cli_server(
        "--functions",
        str(functions_dir),
        env={"LAF_MAX_BODY_SIZE": "512k", "LAF_MAX_MESSAGES_PER_SECOND": "0"},
        cwd=functions_dir.parent,
    )
    headers = {"Content-Type": "application/octet-stream"}
    async with httpx.AsyncClient(timeout=10) as client:
        ok = await client.post(
            f"{server.url}/fn/record", content=b"x" * 512 * 1024, headers=headers
        )
        assert ok.status_code == 200
        assert ok.json() == {"size": 512 * 1024}
        refused = await client.post(
            f"{server.url}/fn/record", content=b"x" * (512 * 1024 + 1), headers=headers
        )
        assert refused.status_code == 413
        assert refused.json()["error"] == f"Body larger than {512 * 1024} bytes"


class FakeConnection:
    """A Pingable that records its pings and may answer them."""

    def __init__(self, keepalive: Keepalive, answers: bool) -> None:
        self.keepalive, self.answers = keepalive, answers
        self.pings = 0
        self.timed_out = asyncio.get_running_loop().create_future()

    def write_frame(self, frame: bytes) -> Any:
        assert frame == b"\x89\x00"
        self.pings += 1
        if self.answers:
            self.keepalive.answered(self)
        return True

    def ping_timed_out(self) -> None:
        self.timed_out.set_result(self.pings)
        self.keepalive.discard(self)

    reading_paused = False


async def test_keepalive_pings_everyone_from_one_timer_and_stops_when_idle():
    keepalive = Keepalive(interval=0.02, timeout=0.01)
    quiet, talker = FakeConnection(keepalive, False), FakeConnection(keepalive, True)
    keepalive.add(quiet)
    keepalive.add(talker)
    assert await asyncio.wait_for(quiet.timed_out, 5) == 1  # dropped after its first ping
    await wait_until(lambda: talker.pings >= 3)
    assert not talker.timed_out.done()
    keepalive.discard(talker)
    assert keepalive._timers == []  # no connections, no timers
    keepalive.add(talker)  # and a new connection starts them again
    await wait_until(lambda: talker.pings >= 4)
    keepalive.stop()
