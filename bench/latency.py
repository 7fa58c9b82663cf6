"""Push latency for bench/compare.py: one HTTP call at a time (light load), timed from sending
it until its frame reaches a WebSocket client.

The clients are raw asyncio streams, not httpx or the websockets library, so that what is
measured is the servers' time and not the client's: one keep-alive HTTP/1.1 connection, and one
WebSocket connection opened with ``?hello=1``, whose first frame is its own socket id.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from loadgen import upgrade_request


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    """The payload of the next data frame (servers never mask; pings are skipped)."""
    while True:
        first, second = await reader.readexactly(2)
        length = second & 0x7F
        if length == 126:
            length = int.from_bytes(await reader.readexactly(2), "big")
        elif length == 127:
            length = int.from_bytes(await reader.readexactly(8), "big")
        payload = await reader.readexactly(length)
        if first & 0x0F in (0x1, 0x2):
            return payload


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    length = 0
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    return int(head[9:12]), await reader.readexactly(length)


async def push_latencies(
    http_port: int, ws_port: int, ws_path: str, push_path: str, rounds: int, warmup: int = 20
) -> list[float]:
    """Seconds from each ``POST push_path?id=...`` (to ``http_port``) until the frame arrives
    at a socket of ``ws_port``."""
    host = "127.0.0.1"
    ws_reader, ws_writer = await asyncio.open_connection(host, ws_port)
    http_reader, http_writer = await asyncio.open_connection(host, http_port)
    try:
        ws_writer.write(upgrade_request(host, ws_port, f"{ws_path}?hello=1"))
        status = await ws_reader.readuntil(b"\r\n\r\n")
        if not status.startswith(b"HTTP/1.1 101"):
            raise RuntimeError(f"handshake refused: {status[:80]!r}")
        socket_id = (await read_frame(ws_reader)).decode()
        samples = []
        for i in range(warmup + rounds):
            body = str(i).encode()
            request = (
                f"POST {push_path}?id={socket_id} HTTP/1.1\r\nHost: {host}:{http_port}\r\n"
                f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode() + body
            started = time.perf_counter()
            http_writer.write(request)
            frame = await asyncio.wait_for(read_frame(ws_reader), 10)
            elapsed = time.perf_counter() - started
            code, answer = await read_response(http_reader)
            if frame != body or code != 200 or json.loads(answer).get("delivered") != 1:
                raise RuntimeError(f"push {i}: frame {frame[:40]!r}, {code} {answer[:200]!r}")
            if i >= warmup:
                samples.append(elapsed)
        return samples
    finally:
        for writer in (ws_writer, http_writer):
            writer.close()


def summary(samples: list[float]) -> dict[str, Any]:
    ordered = sorted(samples)

    def at(fraction: float) -> float:
        return round(1000 * ordered[min(len(ordered) - 1, int(fraction * len(ordered)))], 3)

    return {"rounds": len(samples), "p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": at(1.0)}
