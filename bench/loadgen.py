"""The load generator of bench/compare.py: worker processes with raw-socket WebSocket clients.

Every worker runs one asyncio loop and obeys commands sent over a pipe by the main process
(``Pool``): open N connections, run an echo load, wait for a broadcast, close everything, run an
HTTP load. The clients are deliberately minimal — an ``asyncio.Protocol`` that writes a canned
handshake, pre-masked frames (one fixed masking key; servers do not check it) and parses only
frame headers — so that a Python client costs much less CPU per message than a Python server,
and the server, not the generator, is what saturates. The same generator drives every server;
for a Socket.IO server (``open``'s ``protocol="socketio"``) the same client also does the
Engine.IO/Socket.IO handshake, answers pings, and sends and counts ``42[...]`` events
(``SocketIOClient``).

All times are ``time.monotonic()`` (CLOCK_MONOTONIC: one clock for every process of the machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import signal
import time
import traceback
from collections import Counter
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

monotonic = time.monotonic
MASK = b"\x37\xfa\x21\x3d"
HANDSHAKES_IN_FLIGHT = 32  # per worker; the servers' listen backlogs are 100-128


class HandshakeError(Exception):
    pass


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (FIN set)."""
    n = len(payload)
    if n < 126:
        header = bytes([0x80 | opcode, 0x80 | n])
    elif n < 1 << 16:
        header = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        header = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
    masked = bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))
    return header + MASK + masked


def upgrade_request(host: str, port: int, path: str) -> bytes:
    """A canned WebSocket handshake request (servers do not check the key's randomness)."""
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


CLOSE_FRAME = client_frame(0x8, (1000).to_bytes(2, "big"))


class WSClient(asyncio.Protocol):
    """One WebSocket connection; ``on_message(client)`` runs for every data frame received."""

    def __init__(self, handshake: bytes, loop: asyncio.AbstractEventLoop) -> None:
        self.handshake = handshake
        self.buffer = bytearray()
        self.upgraded = False
        self.closing = False
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.on_message: Callable[[WSClient], None] | None = None
        self.transport: asyncio.Transport | None = None
        self.sent_at = 0.0
        self.got = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.handshake)

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                line = bytes(buf[: buf.find(b"\r\n")]).decode("latin-1")
                if not self.opened.done():
                    self.opened.set_exception(HandshakeError(line))
                self.abort()
                return
            del buf[: end + 4]
            self.upgraded = True
            self.on_upgraded()
        while len(buf) >= 2:
            n, pos = buf[1] & 0x7F, 2
            if n == 126:
                if len(buf) < 4:
                    return
                n, pos = int.from_bytes(buf[2:4], "big"), 4
            elif n == 127:
                if len(buf) < 10:
                    return
                n, pos = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < pos + n:
                return
            opcode = buf[0] & 0x0F
            if opcode == 0x9:  # ping -> pong
                self.write(client_frame(0xA, bytes(buf[pos : pos + n])))
            elif opcode == 0x8:  # close: answer it; the server then closes the TCP connection
                self.close()
            elif opcode != 0xA:
                self.on_data(buf, pos, n)
            del buf[: pos + n]

    def on_upgraded(self) -> None:
        self.opened.set_result(None)

    def on_data(self, buf: bytearray, pos: int, n: int) -> None:
        """A data frame whose payload is ``buf[pos : pos + n]``."""
        if self.on_message is not None:
            self.on_message(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(HandshakeError(f"connection lost: {exc!r}"))
        if not self.closed.done():
            self.closed.set_result(None)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self.write(CLOSE_FRAME)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


# Socket.IO v5 over Engine.IO v4's WebSocket transport, the least a client must do: the server
# opens with an Engine.IO "0{...}" open packet; the client joins the main namespace with "40"
# and is in once the server answers "40{"sid":...}"; events are "42[name, data]"; the server's
# Engine.IO pings "2" must be answered "3" (or it drops the connection after pingTimeout).
SOCKETIO_PATH = "/socket.io/?EIO=4&transport=websocket"
SOCKETIO_JOIN = client_frame(0x1, b"40")
SOCKETIO_PONG = client_frame(0x1, b"3")


class SocketIOClient(WSClient):
    """A ``WSClient`` that speaks Socket.IO: ``opened`` once it has joined the namespace, and
    ``on_message`` runs for every event (``42...``) only, not for the protocol's own packets."""

    def on_upgraded(self) -> None:
        pass  # opened on the namespace's CONNECT answer

    def on_data(self, buf: bytearray, pos: int, n: int) -> None:
        kind = buf[pos : pos + 2] if n >= 2 else buf[pos : pos + 1]
        if kind == b"42":
            if self.on_message is not None:
                self.on_message(self)
        elif kind == b"2":
            self.write(SOCKETIO_PONG)
        elif kind[:1] == b"0":
            self.write(SOCKETIO_JOIN)
        elif kind == b"40" and not self.opened.done():
            self.opened.set_result(None)
        elif kind == b"44" and not self.opened.done():
            self.opened.set_exception(HandshakeError(bytes(buf[pos : pos + n]).decode()))
            self.abort()


def message_frame(protocol: str, payload: bytes) -> bytes:
    """The client frame that carries ``payload`` as one message: a text frame, or for
    ``socketio`` an ``echo`` event (``42["echo","<payload>"]``; the payload is ASCII)."""
    if protocol == "socketio":
        payload = b'42["echo","' + payload + b'"]'
    return client_frame(0x1, payload)


CLIENTS: dict[str, type[WSClient]] = {"ws": WSClient, "socketio": SocketIOClient}


class HTTPClient(asyncio.Protocol):
    """A keep-alive HTTP/1.1 client in a closed loop: GET, read the response, GET again."""

    def __init__(self, request: bytes, on_response: Callable[[HTTPClient], None]) -> None:
        self.request, self.on_response = request, on_response
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.sent_at = 0.0
        self.statuses: Counter[int] = Counter()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def send(self) -> None:
        assert self.transport is not None
        self.sent_at = monotonic()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        while (end := buf.find(b"\r\n\r\n")) >= 0:
            head = bytes(buf[:end]).decode("latin-1").lower()
            length, chunked = 0, False
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name == "content-length":
                    length = int(value)
                elif name == "transfer-encoding":
                    chunked = "chunked" in value
            if chunked:
                body_end = chunked_end(buf, end + 4)
                if body_end is None:
                    return
                length = body_end - end - 4
            if len(buf) < end + 4 + length:
                return
            self.statuses[int(head[9:12])] += 1
            del buf[: end + 4 + length]
            self.on_response(self)


def chunked_end(buf: bytearray, start: int) -> int | None:
    """Where a chunked body that begins at ``start`` ends (no trailers), or None if not yet."""
    at = start
    while (line_end := buf.find(b"\r\n", at)) >= 0:
        size = int(bytes(buf[at:line_end]).split(b";")[0], 16)
        if size == 0:
            return line_end + 4 if len(buf) >= line_end + 4 else None
        at = line_end + 2 + size + 2
    return None


# -- the worker process ------------------------------------------------------------------------


class Worker:
    def __init__(self, index: int, pipe: Connection) -> None:
        self.index, self.pipe = index, pipe
        self.clients: list[WSClient] = []
        self.protocol = "ws"  # of the open clients: "ws" or "socketio"
        self.commands: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self.pipe.fileno(), self._read_command)
        while True:
            name, *args = await self.commands.get()
            if name == "quit":
                break
            try:
                reply = await getattr(self, f"do_{name}")(*args)
            except Exception:
                reply = ("error", self.index, traceback.format_exc())
            self.pipe.send(reply)
        for client in self.clients:
            client.abort()

    def _read_command(self) -> None:
        try:
            self.commands.put_nowait(self.pipe.recv())
        except (EOFError, OSError):  # the main process went away
            asyncio.get_running_loop().remove_reader(self.pipe.fileno())
            self.commands.put_nowait(("quit",))

    async def do_open(
        self, host: str, port: int, path: str, count: int, protocol: str = "ws"
    ) -> tuple[Any, ...]:
        loop = asyncio.get_running_loop()
        handshake = upgrade_request(host, port, path)
        client_class = CLIENTS[protocol]
        self.protocol = protocol
        errors: Counter[str] = Counter()
        gate = asyncio.Semaphore(HANDSHAKES_IN_FLIGHT)
        started = monotonic()

        async def one() -> bool:
            async with gate:
                for _ in range(3):
                    try:
                        _, client = await asyncio.wait_for(
                            loop.create_connection(
                                lambda: client_class(handshake, loop), host, port
                            ),
                            10,
                        )
                        await asyncio.wait_for(client.opened, 10)
                    except (OSError, TimeoutError, HandshakeError) as exc:
                        errors[f"{type(exc).__name__}: {str(exc)[:60]}"] += 1
                        await asyncio.sleep(0.2)
                        continue
                    self.clients.append(client)
                    return True
                return False

        opened = sum(await asyncio.gather(*(one() for _ in range(count))))
        return ("opened", opened, dict(errors), monotonic() - started)

    async def do_close(self) -> tuple[Any, ...]:
        clients, self.clients = self.clients, []
        for client in clients:
            client.on_message = None
            client.close()
        pending = [c.closed for c in clients if not c.closed.done()]
        if pending:
            await asyncio.wait(pending, timeout=10)
        aborted = 0
        for client in clients:
            if not client.closed.done():
                aborted += 1
                client.abort()
        return ("closed", len(clients), aborted)

    async def do_echo(self, size: int, start_at: float, warm: float, duration: float) -> Any:
        """Closed loop on every open connection: send ``size`` bytes, wait for the echo, again.

        Counts the echoes sent and received inside [start_at + warm, start_at + warm + duration].
        """
        loop = asyncio.get_running_loop()
        frame = message_frame(self.protocol, b"x" * size)
        begin, end = start_at + warm, start_at + warm + duration
        latencies: list[float] = []
        finished = loop.create_future()
        idle = [0]

        def on_message(client: WSClient) -> None:
            now = monotonic()
            if client.sent_at >= begin and now <= end:
                latencies.append(now - client.sent_at)
            if now < end:
                client.sent_at = now
                client.transport.write(frame)  # type: ignore[union-attr]
            else:
                client.on_message = None
                idle[0] += 1
                if idle[0] == len(self.clients) and not finished.done():
                    finished.set_result(None)

        await asyncio.sleep(max(0.0, start_at - monotonic()))
        for client in self.clients:
            client.on_message = on_message
            client.sent_at = monotonic()
            client.write(frame)
        await asyncio.wait([finished], timeout=max(0.0, end - monotonic()) + 10)
        return ("echo", len(latencies), latencies, len(self.clients) - idle[0])

    async def do_arm(self) -> tuple[Any, ...]:
        """Wait for the next data frame on every connection; report when the last one came."""
        remaining = [len(self.clients)]

        def on_message(client: WSClient) -> None:
            if not client.got:
                client.got = True
                remaining[0] -= 1
                if remaining[0] == 0:
                    self.pipe.send(("received", monotonic(), len(self.clients)))

        for client in self.clients:
            client.got = False
            client.on_message = on_message
        if not self.clients:
            loop = asyncio.get_running_loop()
            loop.call_soon(self.pipe.send, ("received", monotonic(), 0))
        return ("armed", len(self.clients))

    async def do_missing(self) -> tuple[Any, ...]:
        return ("missing", sum(not c.got for c in self.clients))

    async def do_http(
        self, host: str, port: int, path: str, count: int, start_at: float, duration: float
    ) -> tuple[Any, ...]:
        """A fallback for wrk: ``count`` keep-alive connections in a closed loop."""
        loop = asyncio.get_running_loop()
        request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
        end = start_at + duration
        latencies: list[float] = []

        def on_response(client: HTTPClient) -> None:
            now = monotonic()
            if client.sent_at >= start_at and now <= end:
                latencies.append(now - client.sent_at)
            if now < end:
                client.send()

        clients = []
        for _ in range(count):
            _, client = await loop.create_connection(
                lambda: HTTPClient(request, on_response), host, port
            )
            clients.append(client)
        await asyncio.sleep(max(0.0, start_at - 0.5 - monotonic()))
        for client in clients:  # a short warm-up before start_at
            client.send()
        await asyncio.sleep(max(0.0, end - monotonic()) + 0.5)
        statuses: Counter[int] = sum((c.statuses for c in clients), Counter())
        for client in clients:
            assert client.transport is not None
            client.transport.abort()
        return ("http", len(latencies), latencies, dict(statuses))


def worker_main(index: int, pipe: Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the main process stops us
    asyncio.run(Worker(index, pipe).run())


# -- the main process's side -------------------------------------------------------------------


class Pool:
    """``size`` worker processes; ``call`` sends one command to each and collects the replies."""

    def __init__(self, size: int) -> None:
        ctx = mp.get_context("spawn")
        self.pipes: list[Connection] = []
        self.processes: list[Any] = []
        for index in range(size):
            mine, theirs = ctx.Pipe()
            process = ctx.Process(
                target=worker_main, args=(index, theirs), daemon=True, name=f"loadgen-{index}"
            )
            process.start()
            theirs.close()
            self.pipes.append(mine)
            self.processes.append(process)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def send(self, commands: list[tuple[Any, ...]]) -> None:
        for pipe, command in zip(self.pipes, commands, strict=True):
            pipe.send(command)

    def receive(self, kind: str, timeout: float, alive: Callable[[], None]) -> list[Any]:
        """One reply of ``kind`` from every worker; raises on an error or a dead process."""
        replies: list[Any] = [None] * len(self.pipes)
        deadline = monotonic() + timeout
        while any(r is None for r in replies):
            if monotonic() > deadline:
                got = sum(r is not None for r in replies)
                raise TimeoutError(f"load generator: {kind}: {got}/{len(replies)} replied")
            alive()
            for index, pipe in enumerate(self.pipes):
                if replies[index] is None and pipe.poll(0.05):
                    reply = pipe.recv()
                    if reply[0] == "error":
                        raise RuntimeError(f"load generator {reply[1]} failed:\n{reply[2]}")
                    if reply[0] == kind:
                        replies[index] = reply
            for process in self.processes:
                if process.exitcode is not None:
                    raise RuntimeError(f"{process.name} exited with code {process.exitcode}")
        return replies

    def call(
        self, commands: list[tuple[Any, ...]], kind: str, timeout: float, alive: Callable[[], None]
    ) -> list[Any]:
        self.send(commands)
        return self.receive(kind, timeout, alive)

    def stop(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send(("quit",))
        for process in self.processes:
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join()


def share(total: int, parts: int, index: int) -> int:
    return total // parts + (index < total % parts)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))
