"""How a connection reads: straight from the socket when it can, through Tornado's buffer when
it holds something (frames sent with the handshake, or read while paused), and never out of
order or past the pause when many messages wait."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path
from typing import Any

from tornado.ioloop import IOLoop

from laf_py import cloud
from laf_py.server.connection import MAX_WAITING, SocketConnection

from .conftest import wait_until, write_function

ECHO = """
import asyncio
from laf_py import cloud

async def main(ctx):
    if ctx.method != "WebSocket:message":
        return
    data = ctx.params["data"]
    if data == "block":
        cloud.shared["blocked"] = True
        await cloud.shared.setdefault("gate", asyncio.Event()).wait()
    ctx.socket.send(data)
"""


def client_frame(payload: bytes) -> bytes:
    """One masked, final text frame (payload under 64 KiB)."""
    mask = os.urandom(4)
    length = len(payload)
    header = (
        bytes([0x81, 0x80 | length])
        if length < 126
        else bytes([0x81, 0xFE, *length.to_bytes(2, "big")])
    )
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def upgrade_request(port: int) -> bytes:
    return (
        f"GET /__websocket__ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


class RawClient:
    """A blocking client on a plain socket, used from a thread (asyncio.to_thread)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buffer = b""

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        assert chunk, "the server closed the connection"
        self.buffer += chunk

    def head(self) -> str:
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        return head.decode("latin-1")

    def text(self) -> str:
        """One unmasked text frame from the server."""
        while len(self.buffer) < 2:
            self._fill()
        length, start = self.buffer[1] & 0x7F, 2
        if length == 126:
            while len(self.buffer) < 4:
                self._fill()
            length, start = int.from_bytes(self.buffer[2:4], "big"), 4
        while len(self.buffer) < start + length:
            self._fill()
        assert self.buffer[0] == 0x81, self.buffer[:2]
        payload, self.buffer = self.buffer[start : start + length], self.buffer[start + length :]
        return payload.decode()

    def close(self) -> None:
        self.sock.close()


def port_of(server: Any) -> int:
    return int(server.url.rsplit(":", 1)[1])


def connection_of(server: Any) -> SocketConnection:
    (connected,) = list(server.server.runtime.sockets)
    transport = connected._transport
    assert isinstance(transport, SocketConnection)
    return transport


async def test_frames_sent_with_the_handshake_are_handled_first_and_in_order(
    serve, functions_dir: Path
) -> None:
    """Frames in the same packet as the upgrade request wait in Tornado's buffer; they are
    read from there, in order, before the connection reads straight from its socket."""
    write_function(functions_dir, "__websocket__", ECHO)
    async with serve(functions_dir, max_messages_per_second=0) as server:
        client = await asyncio.to_thread(RawClient, port_of(server))
        try:
            first = [client_frame(f"m{i}".encode()) for i in range(3)]
            await asyncio.to_thread(
                client.sock.sendall, upgrade_request(client.port) + b"".join(first)
            )
            head = await asyncio.to_thread(client.head)
            assert head.startswith("HTTP/1.1 101")
            assert [await asyncio.to_thread(client.text) for _ in range(3)] == ["m0", "m1", "m2"]
            # ... and then straight from the socket
            for i in range(3, 6):
                await asyncio.to_thread(client.sock.sendall, client_frame(f"m{i}".encode()))
                assert await asyncio.to_thread(client.text) == f"m{i}"
        finally:
            client.close()


async def test_a_paused_reader_stops_reading_then_answers_everything_in_order(
    serve, functions_dir: Path
) -> None:
    """Behind a blocked message, a flood of 300 (rate limit off) pauses reading: the server
    stops listening with at most one chunk in Tornado's buffer. Opened, every message is
    answered in order, and reading goes on straight from the socket."""
    write_function(functions_dir, "__websocket__", ECHO)
    async with serve(functions_dir, max_messages_per_second=0) as server:
        client = await asyncio.to_thread(RawClient, port_of(server))
        try:
            await asyncio.to_thread(client.sock.sendall, upgrade_request(client.port))
            assert (await asyncio.to_thread(client.head)).startswith("HTTP/1.1 101")
            await asyncio.to_thread(client.sock.sendall, client_frame(b"block"))
            await wait_until(lambda: cloud.shared.get("blocked"))
            connection = connection_of(server)
            stream = connection._stream
            assert stream is not None
            padding = "x" * 1000  # 300 messages of 1 KiB: several chunks of 64 KiB
            flood = [f"{i}:{padding}" for i in range(300)]
            sending = asyncio.create_task(
                asyncio.to_thread(
                    client.sock.sendall, b"".join(client_frame(m.encode()) for m in flood)
                )
            )
            # Paused: one chunk more read into Tornado's buffer, and then no more listening.
            await wait_until(
                lambda: (
                    connection.reading_paused
                    and stream._read_buffer_size > 0
                    and not (stream._state or 0) & IOLoop.READ
                )
            )
            handled = connection.socket.messages_in
            assert MAX_WAITING < handled < 300  # the rest waits in the kernel
            cloud.shared["gate"].set()
            assert await asyncio.to_thread(client.text) == "block"
            replies = [await asyncio.to_thread(client.text) for _ in flood]
            assert replies == flood
            await sending
            await asyncio.to_thread(client.sock.sendall, client_frame(b"after"))
            assert await asyncio.to_thread(client.text) == "after"
            assert not connection.reading_paused
            assert stream._read_buffer_size == 0
        finally:
            client.close()
