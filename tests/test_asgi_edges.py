"""laf_py.asgi at the edges a review found, each against a real uvicorn (or, for the log filter,
uvicorn's own formatter): a client gone during the connection event, a send awaited when the
client leaves, and uvicorn's access lines with a token in them."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import uvicorn
import uvicorn.logging

from laf_py import cloud
from laf_py.asgi import create_app
from laf_py.asgi.logs import hide_tokens_in_server_logs
from laf_py.asgi.websocket import AsgiSocketConnection

from .conftest import wait_until, write_function


@contextlib.asynccontextmanager
async def uvicorn_server(app: Any) -> AsyncIterator[tuple[uvicorn.Server, int]]:
    """``app`` under a real uvicorn on an ephemeral port, in this event loop."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    # A connection stuck by a finding is cut off after a second, so the test ends.
    config = uvicorn.Config(
        app, lifespan="on", log_config=None, access_log=False, timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    serving = asyncio.ensure_future(server.serve(sockets=[listener]))
    try:
        await wait_until(lambda: server.started or serving.done())
        if serving.done():
            serving.result()
        yield server, port
    finally:
        server.should_exit = True
        await serving
        listener.close()


async def open_websocket(
    port: int, receive_buffer: int | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw client (so it can stop reading, or vanish, whenever the test says): the
    handshake request only; the 101 is read by the caller if it wants it."""
    sock = socket.socket()
    if receive_buffer is not None:  # before connect: a small window, so the server backs up
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            "GET /__websocket__ HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    await writer.drain()
    return reader, writer


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (payload < 126 bytes)."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return struct.pack("!BB", 0x80 | opcode, 0x80 | len(payload)) + mask + masked


# -- 1. a client that leaves during the connection event ------------------------------------

GATED = """
import asyncio
from laf_py import cloud

async def main(ctx):
    if ctx.method == "WebSocket:connection":
        cloud.shared["entered"] = True
        await cloud.shared["gate"].wait()
    elif ctx.method == "WebSocket:close":
        cloud.shared["closed"] = ctx.params
"""


async def test_a_client_gone_during_the_connection_event_still_ends(tmp_path: Path) -> None:
    """Tornado: start() sees the stream closed and runs _on_stream_closed (close event, and
    Activity.end_connection). ASGI: run()'s ``await send(accept)`` raises uvicorn's
    ClientDisconnected, so neither ever happens: the socket stays accepted in cloud.sockets,
    activity.connections never goes back to 0, and every shutdown waits its whole grace."""
    functions = tmp_path / "functions"
    write_function(functions, "__websocket__", GATED)
    laf = create_app(functions, app_dir=tmp_path, reload=False)
    async with uvicorn_server(laf) as (server, port):
        cloud.shared["gate"] = asyncio.Event()
        _, writer = await open_websocket(port)
        await wait_until(lambda: cloud.shared.get("entered"))
        writer.transport.abort()  # the client vanishes while its connection event runs
        await wait_until(lambda: not server.server_state.connections)  # uvicorn saw it
        cloud.shared["gate"].set()
        await wait_until(lambda: "closed" in cloud.shared, timeout=5)
        await wait_until(lambda: laf.activity.connections == 0, timeout=5)
        assert len(laf.runtime.sockets) == 0


# -- 2. a send awaited past --max-send-buffer when the client leaves --------------------------

FLOOD = """
from laf_py import cloud

async def main(ctx):
    if ctx.method == "WebSocket:message":
        cloud.shared["sending"] = True
        chunk = "x" * 32768
        for _ in range(2000):  # 64 MB: far past what the kernel and uvicorn buffer
            sent = await ctx.socket.send(chunk)
            if sent == 0:
                break
        cloud.shared["sends_done"] = True
    elif ctx.method == "WebSocket:close":
        cloud.shared["closed"] = ctx.params
"""


async def test_an_awaited_send_is_released_when_the_client_leaves(tmp_path: Path) -> None:
    """The client stops reading, so the function's ``await socket.send(...)`` waits on a
    future in the outbox (past --max-send-buffer). The client then sends its close frame:
    the reader hears websocket.disconnect and cancels the writer (_read_messages' finally),
    but only _drop and an OSError in _write_all call _release_waiters. The future is never
    resolved: the message event never ends, so the close event never runs and
    Activity.end_connection is never reached."""
    functions = tmp_path / "functions"
    write_function(functions, "__websocket__", FLOOD)
    laf = create_app(functions, app_dir=tmp_path, reload=False, max_send_buffer=65536)
    async with uvicorn_server(laf) as (_, port):
        reader, writer = await open_websocket(port, receive_buffer=4096)
        await reader.readuntil(b"\r\n\r\n")  # the 101
        writer.write(client_frame(0x1, b"go"))
        await wait_until(lambda: cloud.shared.get("sending"))
        connection = next(iter(laf.activity._connections))
        assert isinstance(connection, AsgiSocketConnection)
        # The function waits on a send: the writer is stuck behind a client not reading.
        await wait_until(lambda: any(sent for _, _, sent in connection._outbox), timeout=10)
        writer.write(client_frame(0x8, struct.pack("!H", 1000)))  # the client closes
        await writer.drain()
        await wait_until(lambda: "sends_done" in cloud.shared, timeout=5)
        await wait_until(lambda: "closed" in cloud.shared, timeout=5)
        await wait_until(lambda: laf.activity.connections == 0, timeout=5)
        writer.transport.abort()


# -- 3. the token filter breaks uvicorn's access formatter --------------------------------


def test_an_access_line_with_a_token_still_formats_under_uvicorns_log_config(
    tmp_path: Path,
) -> None:
    """``uvicorn main:app`` logs access lines through uvicorn.logging.AccessFormatter, which
    unpacks ``record.args`` as (client, method, path, version, status). The filter replaces
    the message and sets ``args = None`` whenever the line holds a token, so formatting
    raises TypeError: logging prints '--- Logging error ---' and the line is lost."""
    hide_tokens_in_server_logs()  # as every LafApp does
    token = "secret-token-value"
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", f"/fn/hello?token={token}", "1.1", 200),
        None,
    )
    assert logging.getLogger("uvicorn.access").filter(record)
    formatter = uvicorn.logging.AccessFormatter(
        '%(client_addr)s - "%(request_line)s" %(status_code)s', use_colors=False
    )
    line = formatter.format(record)  # TypeError: cannot unpack non-iterable NoneType
    assert token not in line and "/fn/hello?token=" in line
