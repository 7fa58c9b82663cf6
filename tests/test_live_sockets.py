"""Connection semantics under the timing users really produce: a socket is live the moment its
client sees it open, presence follows the connection events, a slow event never costs a healthy
client its connection, and every way a connection ends reaches the ``close`` event.

Real servers, real ``websockets`` clients and HTTP calls, and a hand-made client over a raw
socket for what a library will not do.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from laf_py import cloud

from .conftest import frame_matching, wait_until, write_function
from .test_limits import CLOSE, raw_client, too_big_reason

pytestmark = pytest.mark.both_servers

# The Less flow: the connection event stores the socket id with one database write before it
# greets the client, as a real app authorising a user does.
AWAITING_CONNECT = """
from laf_py import cloud

async def main(ctx):
    if ctx.method == "WebSocket:connection":
        await cloud.kv.set(f"ws/{ctx.socket.user_id}", ctx.socket.id)
        ctx.socket.send("hello:" + ctx.socket.id)
"""

# Asked right after the client saw its socket open: can the server find and reach it?
CHECK = """
from laf_py import cloud

async def main(ctx):
    user = ctx.query["user"]
    socket_id = await cloud.kv.get(f"ws/{user}")
    return {
        "online": await cloud.sockets.is_online(user),
        "found": cloud.sockets.get(socket_id) is not None,
        "to_user": await cloud.sockets.send_to_user(user, "to-user"),
        "broadcast": await cloud.sockets.broadcast("to-everyone"),
        "published": await cloud.sockets.publish("to-id", [socket_id]),
    }
"""


async def test_socket_is_live_the_moment_its_client_sees_it_open(serve, functions_dir: Path):
    """20 times: connect with a token and at once ask an HTTP function about the socket. It is
    online, findable and reached by every kind of delivery, and the greeting sent by the
    connection event arrives before anything pushed afterwards."""
    write_function(functions_dir, "__websocket__", AWAITING_CONNECT)
    write_function(functions_dir, "check", CHECK)
    async with serve(functions_dir) as server, httpx.AsyncClient(timeout=10) as http:
        for n in range(20):
            user = f"user{n}"
            token = cloud.get_token({"uid": user})
            async with websockets.connect(f"{server.ws_url}?token={token}") as ws:
                answer = (await http.get(server.fn_url("check"), params={"user": user})).json()
                assert answer == {
                    "online": True,
                    "found": True,
                    "to_user": 1,
                    "broadcast": 1,
                    "published": 1,
                }
                frames = [await asyncio.wait_for(ws.recv(), 5) for _ in range(4)]
                assert frames[0].startswith("hello:")
                assert frames[1:] == ["to-user", "to-everyone", "to-id"]


SLOW_CONNECT = """
import asyncio
from laf_py import cloud

timeout = 0.3

async def main(ctx):
    if ctx.method == "WebSocket:connection":
        ctx.socket.send("before")
        await asyncio.sleep(30)
    else:
        cloud.shared.setdefault("events", []).append((ctx.method, ctx.params))
"""


async def test_a_connection_event_past_its_time_limit_ends_the_handshake(
    serve, functions_dir: Path
):
    """The connection event is bounded by the function's timeout: the client is answered,
    gets what was sent, an error frame and a 1011 close, and the close event runs."""
    write_function(functions_dir, "__websocket__", SLOW_CONNECT)
    async with serve(functions_dir) as server:
        started = time.monotonic()
        async with websockets.connect(server.ws_url, open_timeout=10) as ws:
            assert await asyncio.wait_for(ws.recv(), 5) == "before"
            error = await asyncio.wait_for(ws.recv(), 5)
            assert "timed out" in error
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
        assert time.monotonic() - started < 5
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
        await wait_until(lambda: cloud.shared.get("events"))
        assert cloud.shared["events"][0][0] == "WebSocket:close"
        assert cloud.shared["events"][0][1]["code"] == 1011


# Every user hears who joins and leaves; the connection and close events announce it too,
# each after a database write, as apps do.
ANNOUNCING = """
from laf_py import cloud

async def main(ctx):
    user = ctx.socket.user_id
    if ctx.method == "WebSocket:connection":
        await cloud.kv.set(f"seen/{user}", "in")
        cloud.sockets.broadcast(f"joined:{user}")
    elif ctx.method == "WebSocket:close":
        await cloud.kv.set(f"seen/{user}", "out")
        cloud.sockets.broadcast(f"left:{user}")
"""

PRESENCE = """
from laf_py import cloud

async def main(ctx):
    state = "online" if ctx.method == "Presence:online" else "offline"
    cloud.sockets.broadcast(f"{state}:{ctx.params['user_id']}")
"""


async def test_presence_follows_the_connection_and_close_events(serve, functions_dir: Path):
    """An observer hears "joined" (sent by the connection event) before "online", and "left"
    (sent by the close event of the user's last socket) before "offline"."""
    write_function(functions_dir, "__websocket__", ANNOUNCING)
    write_function(functions_dir, "__presence__", PRESENCE)
    async with serve(functions_dir) as server:
        observer_token = cloud.get_token({"uid": "observer"})
        async with websockets.connect(f"{server.ws_url}?token={observer_token}") as observer:
            await frame_matching(observer, lambda f: f == "online:observer")
            for _ in range(5):
                token = cloud.get_token({"uid": "alice"})
                alice = await websockets.connect(f"{server.ws_url}?token={token}")
                heard = [await frame_matching(observer, lambda f: "alice" in f) for _ in "12"]
                assert heard == ["joined:alice", "online:alice"]
                await alice.close()
                heard = [await frame_matching(observer, lambda f: "alice" in f) for _ in "12"]
                assert heard == ["left:alice", "offline:alice"]


SLOW_MESSAGE = """
import asyncio
from laf_py import cloud

async def main(ctx):
    if ctx.method == "WebSocket:message":
        await asyncio.sleep(float(ctx.params["data"]))
        ctx.socket.send("done")
    elif ctx.method == "WebSocket:close":
        cloud.shared["closed"] = dict(ctx.params)
"""


async def test_a_pong_counts_however_long_the_event_in_flight_runs(serve, functions_dir: Path):
    """Pings every 0.2 s, 0.1 s to answer: a message event of 1.5 s (seven pings long) does
    not cost a client that answers its pings the connection."""
    write_function(functions_dir, "__websocket__", SLOW_MESSAGE)
    async with (
        serve(functions_dir, ping_interval=0.2, ping_timeout=0.1) as server,
        websockets.connect(server.ws_url, ping_interval=None) as ws,
    ):
        await ws.send("1.5")
        assert await asyncio.wait_for(ws.recv(), 10) == "done"
        await ws.send("0")
        assert await asyncio.wait_for(ws.recv(), 10) == "done"
        assert "closed" not in cloud.shared


async def test_the_close_event_hears_1009_for_a_message_too_big(
    serve, functions_dir: Path, server_kind: str
):
    """The server closes a connection for a message over --max-message-size: its close event
    says 1009, as the client was told."""
    write_function(functions_dir, "__websocket__", SLOW_MESSAGE)
    async with serve(functions_dir, max_message_size=100) as server:
        async with websockets.connect(server.ws_url) as ws:
            await ws.send("x" * 101)
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
        await wait_until(lambda: "closed" in cloud.shared)
        reason = too_big_reason(server_kind, 100)
        assert cloud.shared["closed"] == {"code": 1009, "reason": reason}


REJECT_UNLESS_TOKEN = """
from laf_py import HTTPError

async def main(ctx):
    if ctx.method == "WebSocket:connection" and ctx.user is None:
        raise HTTPError(401, "log in first")
"""


async def test_a_rejected_handshake_is_logged_with_its_close_code(
    serve, functions_dir: Path, caplog: pytest.LogCaptureFixture
):
    """The access line of a rejected connection says 4401, not 101; an accepted one, 101."""
    caplog.set_level(logging.INFO, logger="tornado.access")
    write_function(functions_dir, "__websocket__", REJECT_UNLESS_TOKEN)
    async with serve(functions_dir) as server:
        async with websockets.connect(server.ws_url + "?anonymous=1") as ws:
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
        token = cloud.get_token({"uid": "ada"})
        async with websockets.connect(f"{server.ws_url}?token={token}"):
            pass
    lines = [r.getMessage() for r in caplog.records if r.name == "tornado.access"]
    assert any(line.startswith("4401 GET /__websocket__?anonymous=1") for line in lines), lines
    assert any(line.startswith("101 GET /__websocket__?token=***") for line in lines), lines
    assert [r.levelname for r in caplog.records if "4401" in r.getMessage()] == ["WARNING"]


ECHO = """
from laf_py import cloud

async def main(ctx):
    if ctx.method == "WebSocket:message":
        ctx.socket.send(ctx.params["data"])
    elif ctx.method == "WebSocket:close":
        cloud.shared.setdefault("closes", []).append(dict(ctx.params))
"""


async def raw_close_code(port: int, frame: bytes) -> tuple[int, int | None]:
    """Send ``frame`` (raw bytes) after the handshake; return (opcode, close code) of what the
    server answers, after checking it then closes the TCP connection."""
    async with raw_client(port) as client:
        await client._loop.sock_sendall(client.sock, frame)
        opcode, payload = await client.read_frame()
        assert await client.at_eof()
    return opcode, int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None


def masked(first_byte: int, payload: bytes, mask: bytes = b"\x01\x02\x03\x04") -> bytes:
    key = (mask * (len(payload) // 4 + 1))[: len(payload)]
    body = bytes(a ^ b for a, b in zip(payload, key, strict=True))
    assert len(payload) < 126
    return bytes([first_byte, 0x80 | len(payload)]) + mask + body


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (bytes([0x81, 0x02]) + b"hi", 1002),  # not masked
        (masked(0xC1, b"hi"), 1002),  # a reserved bit
        (masked(0x83, b"hi"), 1002),  # opcode 3 is reserved
        (masked(0x09, b""), 1002),  # a fragmented ping
        (masked(0x80, b"hi"), 1002),  # a continuation with no message
        (masked(0x01, b"a") + masked(0x81, b"b"), 1002),  # a new message inside another
        (masked(0x81, b"\xff\xfe"), 1007),  # not UTF-8
        (masked(0x88, b"\x03"), 1002),  # a close payload of one byte
        (masked(0x88, b"\x03\xe8\xff"), 1007),  # a close reason that is not UTF-8
    ],
)
async def test_protocol_violations_fail_the_connection_with_the_rfc_code(
    serve, functions_dir: Path, frame: bytes, code: int
):
    """RFC 6455's MUSTs: each broken frame gets a close frame with the code the RFC names,
    the TCP connection ends, and the close event hears that code."""
    write_function(functions_dir, "__websocket__", ECHO)
    async with serve(functions_dir) as server:
        assert await raw_close_code(server.server.port, frame) == (CLOSE, code)
        await wait_until(lambda: cloud.shared.get("closes"))
        assert cloud.shared["closes"][0]["code"] == code


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535])
async def test_invalid_close_codes_from_the_client_get_1002(
    serve, functions_dir: Path, code: int, server_kind: str
):
    """A close code a client may not send is a protocol error, not a valid close."""
    write_function(functions_dir, "__websocket__", ECHO)
    async with serve(functions_dir) as server:
        frame = masked(0x88, code.to_bytes(2, "big") + b"bye")
        assert await raw_close_code(server.server.port, frame) == (CLOSE, 1002)
        await wait_until(lambda: cloud.shared.get("closes"))
        reason = f"invalid close code {code}" if server_kind == "tornado" else "invalid status code"
        assert cloud.shared["closes"] == [{"code": 1002, "reason": reason}]


@pytest.mark.tornado_only("a limit of laf-py's own frame reader; uvicorn bounds the size only")
async def test_a_message_in_too_many_fragments_is_refused(serve, functions_dir: Path):
    """100,000 one-byte fragments (a message of 100 KB, under the size limit) are refused
    with 1009 long before the last one, not assembled."""
    write_function(functions_dir, "__websocket__", ECHO)
    fragments = masked(0x01, b"a") + masked(0x00, b"a") * 99_998 + masked(0x80, b"a")
    async with serve(functions_dir) as server:
        assert await raw_close_code(server.server.port, fragments) == (CLOSE, 1009)


async def test_a_valid_close_is_echoed_and_heard_by_the_close_event(serve, functions_dir: Path):
    """A client's close with 4000 "bye": the server answers with the same code and then
    closes the TCP connection; the close event hears 4000 "bye"."""
    write_function(functions_dir, "__websocket__", ECHO)
    async with serve(functions_dir) as server:
        frame = masked(0x88, (4000).to_bytes(2, "big") + b"bye")
        assert await raw_close_code(server.server.port, frame) == (CLOSE, 4000)
        await wait_until(lambda: cloud.shared.get("closes"))
        assert cloud.shared["closes"] == [{"code": 4000, "reason": "bye"}]


@pytest.mark.tornado_only("uvicorn drops the bytes a client sends behind its upgrade request")
async def test_frames_pipelined_behind_the_handshake_are_handled(serve, functions_dir: Path):
    """A client that sends its first message together with the upgrade request (before the
    101): the message is handled after the connection event, and answered."""
    write_function(functions_dir, "__websocket__", ECHO)
    async with serve(functions_dir) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.server.port)
        request = (
            "GET /__websocket__ HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        )
        writer.write(request.encode() + masked(0x81, b"early"))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101")
        assert b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head  # RFC 6455's own example
        assert await asyncio.wait_for(reader.readexactly(7), 5) == bytes([0x81, 5]) + b"early"
        writer.close()


@pytest.mark.parametrize(
    ("change", "status"),
    [
        (("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Key: abc"), 400),
        (("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Key: " + "A" * 40), 400),
        (("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8"), 426),
        (("Upgrade: websocket", "Upgrade: h2c"), 400),
        (("Connection: Upgrade", "Connection: keep-alive"), 400),
    ],
)
async def test_malformed_upgrades_are_refused_before_any_event(
    serve, functions_dir: Path, change: tuple[str, str], status: int, server_kind: str
):
    """A handshake that is not a valid RFC 6455 upgrade gets an HTTP error, not a 101, and
    the connection event never runs. (uvicorn refuses an unsupported version itself, with a
    plain 400 instead of 426.)"""
    if server_kind == "uvicorn" and status == 426:
        status = 400
    write_function(functions_dir, "__websocket__", ECHO + "\n    cloud.shared['ran'] = True\n")
    request = (
        "GET /__websocket__ HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).replace(*change)
    async with serve(functions_dir) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.server.port)
        writer.write(request.encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        writer.close()
        assert head.split(b" ")[1] == str(status).encode(), head
        if status == 426:
            assert b"sec-websocket-version: 13" in head.lower()
        assert "ran" not in cloud.shared


@pytest.mark.tornado_only("uvicorn upgrades an HTTP/1.0 handshake: its scope says 1.1")
async def test_an_http_1_0_upgrade_is_refused_before_any_event(serve, functions_dir: Path):
    """RFC 6455 4.1: the handshake is an HTTP/1.1 request."""
    write_function(functions_dir, "__websocket__", ECHO + "\n    cloud.shared['ran'] = True\n")
    request = (
        "GET /__websocket__ HTTP/1.0\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    )
    async with serve(functions_dir) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.server.port)
        writer.write(request.encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        writer.close()
        assert head.split(b" ")[1] == b"400", head
        assert "ran" not in cloud.shared


CLOSE_WITH = """
from laf_py import cloud

async def main(ctx):
    if ctx.method == "WebSocket:message":
        try:
            ctx.socket.close(int(ctx.params["data"]), "bye")
        except ValueError as exc:
            ctx.socket.send("refused: " + str(exc))
"""


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 2999, 5000, 70000])
async def test_socket_close_refuses_codes_a_server_may_not_send(
    serve, functions_dir: Path, code: int
):
    """``socket.close(code)`` with a code RFC 6455 forbids raises ValueError in the function;
    nothing goes on the wire and the connection stays open."""
    write_function(functions_dir, "__websocket__", CLOSE_WITH)
    async with serve(functions_dir) as server, websockets.connect(server.ws_url) as ws:
        await ws.send(str(code))
        answer = await asyncio.wait_for(ws.recv(), 5)
        assert answer.startswith(f"refused: close code {code} may not be sent")
        await ws.send("4000")
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4000
