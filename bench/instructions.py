"""Instructions per request, for bench/compare.py: a measure this shared machine cannot blur.

Throughput on a shared machine moves by a third from one minute to the next. Valgrind's
callgrind counts the instructions a server executes, which is the same from run to run whatever
else the machine does. The server runs under callgrind; after a warm-up its counters are zeroed
(``callgrind_control -z``), a fixed number of HTTP requests or echo messages is sent one at a
time, and the counters are dumped (``-d``): instructions per request. It costs a server about
50 times its normal speed, so the counts are small (1000 by default).
"""

from __future__ import annotations

import re
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

from loadgen import client_frame, upgrade_request


class Client:
    """A blocking keep-alive client: HTTP requests, or WebSocket echoes after an upgrade."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.buffer = b""

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.buffer += chunk

    def _head(self) -> tuple[str, int]:
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            self._fill()
        head = self.buffer[:end].decode("latin-1")
        self.buffer = self.buffer[end + 4 :]
        match = re.search(r"(?im)^content-length:\s*(\d+)", head)
        return head, int(match.group(1)) if match else 0

    def get(self, path: str) -> bytes:
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        head, length = self._head()
        while len(self.buffer) < length:
            self._fill()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        if not head.startswith("HTTP/1.1 200"):
            raise RuntimeError(f"GET {path}: {head.splitlines()[0]}")
        return body

    def upgrade(self, path: str) -> None:
        self.sock.sendall(upgrade_request("127.0.0.1", self.port, path))
        head, _ = self._head()
        if not head.startswith("HTTP/1.1 101"):
            raise RuntimeError(f"upgrade {path}: {head.splitlines()[0]}")

    def echo(self, payload: bytes) -> None:
        """Send one text frame (< 126 bytes: the reply is read with a one-byte length)."""
        self.sock.sendall(client_frame(0x1, payload))
        while len(self.buffer) < 2 or len(self.buffer) < 2 + (self.buffer[1] & 0x7F):
            self._fill()
        length = self.buffer[1] & 0x7F
        if self.buffer[2 : 2 + length] != payload:
            raise RuntimeError(f"echo: got {self.buffer[: 2 + length]!r}")
        self.buffer = self.buffer[2 + length :]

    def close(self) -> None:
        self.sock.close()


def counted(pid: int, dump_prefix: Path, run: Callable[[], None]) -> int:
    """Instructions the callgrind-run process ``pid`` executes during ``run()``."""
    subprocess.run(["callgrind_control", "-z", str(pid)], capture_output=True, check=True)
    before = set(dump_prefix.parent.glob(f"{dump_prefix.name}*"))
    run()
    subprocess.run(["callgrind_control", "-d", str(pid)], capture_output=True, check=True)
    dumps = set(dump_prefix.parent.glob(f"{dump_prefix.name}*")) - before
    if len(dumps) != 1:
        raise RuntimeError(f"expected one new callgrind dump, found {sorted(dumps)}")
    match = re.search(r"(?m)^summary:\s*(\d+)", dumps.pop().read_text())
    if match is None:
        raise RuntimeError("no summary line in the callgrind dump")
    return int(match.group(1))


def per_http_request(pid: int, dump_prefix: Path, port: int, path: str, count: int) -> float:
    client = Client(port)
    try:
        for _ in range(200):  # warm-up: code paths, caches, the loop's first allocations
            client.get(path)
        total = counted(pid, dump_prefix, lambda: [client.get(path) for _ in range(count)])
    finally:
        client.close()
    return total / count


def per_echo(pid: int, dump_prefix: Path, port: int, path: str, count: int) -> float:
    client = Client(port)
    payload = b"x" * 64
    try:
        client.upgrade(path)
        for _ in range(200):
            client.echo(payload)
        total = counted(pid, dump_prefix, lambda: [client.echo(payload) for _ in range(count)])
    finally:
        client.close()
    return total / count
