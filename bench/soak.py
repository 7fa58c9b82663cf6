"""Soak: thousands of WebSocket connections with churn and traffic for minutes, on one server.

    python bench/soak.py [--connections 3000] [--duration 180] [--churn-per-second 50]
                         [--message-rate 200] [--broadcast-every 5] [--clients 4]

One ``laf-py serve`` on bench/soak_functions (its own SQLite, a port chosen by the OS), and
``--clients`` processes that hold the connections, churn them (half closed cleanly, half
aborted), send messages and check every echo, while this process calls ``/fn/broadcast`` and
samples the server's RSS and file descriptors. The server is stopped with SIGTERM at the end.
Prints a table, writes bench/results/soak.json; exits 1 when something was lost or failed.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import multiprocessing as mp
import os
import queue
import random
import re
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

HERE = Path(__file__).resolve().parent
ECHO_TIMEOUT = 10.0  # an echo not received by then is lost
SAMPLE_EVERY = 10.0
HANDSHAKES = 25  # opening handshakes in flight per client process (the listen backlog is 128)
# "--log-level info", not warning: "listening on" is an info line (access lines are dropped).
SERVE = [sys.executable, "-m", "laf_py", "serve", "--host", "127.0.0.1", "--port", "0"]
SERVE += ["--reload", "false", "--log-level", "info", "--functions", str(HERE / "soak_functions")]
monotonic = time.monotonic  # CLOCK_MONOTONIC: one clock for every process of the machine

# -- client processes ----------------------------------------------------------------------


@dataclass(eq=False)
class Conn:
    ws: ClientConnection
    sent: int = 0
    churned: bool = False
    pending: set[str] = field(default_factory=set)


class Client:
    """One client process's share of the load, on its own event loop."""

    def __init__(self, index: int, args: Any, ws_url: str) -> None:
        self.index, self.ws_url, self.duration = index, ws_url, args.duration
        self.connections = share(args.connections, args.clients, index)
        self.churn = share(args.churn_per_second, args.clients, index)
        self.rate = args.message_rate / args.clients
        self.open: dict[Conn, None] = {}  # an ordered set
        self.pending: dict[str, tuple[float, Conn, int]] = {}  # id -> (sent at, conn, index)
        self.lost_ids: set[str] = set()
        self.stopping = False
        self.stats: Counter[str] = Counter()
        self.broadcasts: Counter[int] = Counter()  # broadcast seq -> frames received
        self.churn_times: list[float] = []
        self.latencies: list[float] = []
        self.handshakes = asyncio.Semaphore(HANDSHAKES)
        self.tasks: set[asyncio.Task[Any]] = set()

    async def run(self, go: Any, start_at: Any, shutdown: Any, report: Callable[..., None]) -> None:
        holders = [asyncio.create_task(self.hold()) for _ in range(self.connections)]
        while self.stats["opened"] < self.connections:
            await asyncio.sleep(0.1)
        report(("ready", self.index, len(self.open)))
        await wait_event(go, 600)
        start = start_at.value
        end = start + self.duration
        await asyncio.gather(self.send_loop(start, end), self.churn_loop(start, end))
        while monotonic() < end + ECHO_TIMEOUT and (self.pending or monotonic() < end + 2):
            self.sweep(monotonic() - ECHO_TIMEOUT)
            await asyncio.sleep(0.1)
        self.sweep(float("inf"))
        report(("drained", self.index, len(self.open)))
        await wait_event(shutdown, 120)
        self.stopping = True
        report(("stopping", self.index))
        await asyncio.wait(holders, timeout=20)
        result = {"stats": self.stats, "broadcasts": self.broadcasts}
        report(("stats", result | {"churn_times": self.churn_times, "latencies": self.latencies}))

    async def hold(self) -> None:
        """Keep one connection open: open it again whenever it closes, until stopping."""
        while (conn := await self.connect()) is not None:
            try:
                async for raw in conn.ws:
                    self.on_frame(conn, json.loads(raw))
            except ConnectionClosed:
                pass
            self.settle(conn)

    async def connect(self) -> Conn | None:
        while not self.stopping:
            try:
                async with self.handshakes:
                    ws = await connect(self.ws_url, open_timeout=10, compression=None)
            except (OSError, TimeoutError, WebSocketException) as exc:
                self.stats["connect_errors"] += 1
                self.stats[f"connect error: {type(exc).__name__}"] += 1
                await asyncio.sleep(0.5)
                continue
            self.open[conn := Conn(ws)] = None
            self.stats["opened"] += 1
            return conn
        return None

    def on_frame(self, conn: Conn, frame: dict[str, Any]) -> None:
        if frame.get("type") == "broadcast":
            self.broadcasts[frame["seq"]] += 1
        elif "echo" not in frame:
            self.stats["unknown_frames"] += 1
        elif entry := self.pending.pop(frame["echo"], None):
            sent_at, owner, index = entry
            owner.pending.discard(frame["echo"])
            self.stats["echoed"] += 1
            self.stats["out_of_order"] += owner is not conn or frame["seq"] != index
            self.latencies.append(monotonic() - sent_at)
        else:
            self.stats["late_echoes" if frame["echo"] in self.lost_ids else "unknown_frames"] += 1

    def settle(self, conn: Conn) -> None:
        """A connection closed: by the churn, by the server's shutdown, or unexpectedly."""
        del self.open[conn]
        if conn.churned:
            self.stats["dropped_by_churn"] += len(conn.pending)
        elif self.stopping:
            self.stats[f"shutdown close {conn.ws.close_code}"] += 1
        else:
            self.stats["unexpected_closes"] += 1
            self.stats[f"unexpected close {conn.ws.close_code}"] += 1
            self.stats["lost"] += len(conn.pending)
            self.lost_ids.update(conn.pending)
        for msg_id in conn.pending:
            del self.pending[msg_id]

    async def send_loop(self, start: float, end: float) -> None:
        attempted = 0
        while (now := monotonic()) < end:
            due = int((now - start) * self.rate) - attempted
            live = [c for c in self.open if not c.churned]
            for conn in random.choices(live, k=due) if due > 0 and live else ():
                conn.sent += 1
                self.stats["sent"] += 1
                msg_id = f"{self.index}:{self.stats['sent']}"
                self.pending[msg_id] = (monotonic(), conn, conn.sent)
                conn.pending.add(msg_id)
                self.spawn(conn.ws.send(msg_id))
            attempted += max(due, 0)
            self.sweep(now - ECHO_TIMEOUT)
            await asyncio.sleep(0.02)

    async def churn_loop(self, start: float, end: float) -> None:
        tick = 1
        while start + tick < end:
            await asyncio.sleep(start + tick - monotonic())
            tick += 1
            live = [c for c in self.open if not c.churned]
            for conn in random.sample(live, min(self.churn, len(live))):
                conn.churned = True
                self.churn_times.append(monotonic())
                self.stats["churned"] += 1
                if self.stats["churned"] % 2:
                    self.stats["churned_clean"] += 1
                    self.spawn(conn.ws.close())
                else:
                    self.stats["churned_aborted"] += 1
                    conn.ws.transport.abort()

    def sweep(self, older_than: float) -> None:
        """Count as lost every echo still owed for a message sent before ``older_than``."""
        while self.pending:
            msg_id, (sent_at, conn, _) = next(iter(self.pending.items()))
            if sent_at > older_than:
                return
            del self.pending[msg_id]
            conn.pending.discard(msg_id)
            self.lost_ids.add(msg_id)
            self.stats["lost"] += 1

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        self.tasks.add(task := asyncio.create_task(coro))
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        exc = None if task.cancelled() else task.exception()
        if exc is not None and not isinstance(exc, ConnectionClosed):
            self.stats[f"send error: {type(exc).__name__}"] += 1


async def wait_event(event: Any, limit: float) -> None:
    """Wait for a multiprocessing event; give up after ``limit`` s or if the parent is gone."""
    parent, deadline = os.getppid(), monotonic() + limit
    while not await asyncio.to_thread(event.wait, 0.5):
        if os.getppid() != parent or monotonic() > deadline:
            raise RuntimeError("the soak's main process went away")


def client_main(
    index: int, args: Any, url: str, go: Any, start_at: Any, shutdown: Any, results: Any
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the main process stops us
    try:
        client = Client(index, args, url.replace("http", "ws", 1) + "/__websocket__")
        asyncio.run(client.run(go, start_at, shutdown, results.put))
    except BaseException:
        results.put(("error", index, traceback.format_exc()))


# -- the server ----------------------------------------------------------------------------


class ServerOutput(threading.Thread):
    """Drains the server's output so its pipe never fills; keeps what is not an access line."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        super().__init__(daemon=True)
        self.process = process
        self.url: queue.Queue[str | None] = queue.Queue()
        self.warnings = 0
        self.lines: list[str] = []

    def run(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if match := re.search(r"listening on (http://\S+)", line):
                self.url.put(match.group(1))
            if " INFO    tornado.access:" not in line and len(self.lines) < 200:
                self.lines.append(line.rstrip())
            self.warnings += bool(re.search(r" (WARNING|ERROR|CRITICAL) |Traceback", line))
        self.url.put(None)


def start_server(data: Path, fd_limit: int) -> tuple[subprocess.Popen[str], ServerOutput, str]:
    process = subprocess.Popen(
        [*SERVE, "--database-url", f"sqlite:///{data}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "LAF_SECRET": "soak-secret-" + "x" * 32},
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit)),
        start_new_session=True,  # Ctrl-C reaches only this script, which stops the server
    )
    output = ServerOutput(process)
    output.start()
    url = output.url.get(timeout=60)
    if url is None:
        raise RuntimeError("the server did not start:\n" + "\n".join(output.lines))
    return process, output, url


def stop_server(process: subprocess.Popen[str]) -> tuple[int, float]:
    """SIGTERM, then SIGKILL after 15 s: the exit code and how long it took."""
    started = monotonic()
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode, monotonic() - started


def sample(pid: int, since: float) -> dict[str, float]:
    rss_kib = re.findall(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())[0]
    ticks = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[11:13]  # utime stime
    return {
        "t": round(monotonic() - since, 1),
        "rss_mib": round(int(rss_kib) / 1024, 1),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "cpu_s": sum(map(int, ticks)) / os.sysconf("SC_CLK_TCK"),
    }


# -- the main process ----------------------------------------------------------------------


def raise_fd_limit(connections: int) -> int:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    limit = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    if limit < connections + 256:
        sys.exit(
            f"soak: the open-files hard limit is {limit}; {connections} connections need at "
            f"least {connections + 256} (raise `ulimit -Hn` or ask for fewer --connections)"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    return limit


def collect(results: Any, kind: str, count: int, timeout: float, watch: list[Any]) -> list[Any]:
    """``count`` messages of ``kind`` from the clients, failing fast if anything died."""
    got: list[Any] = []
    deadline = monotonic() + timeout
    while len(got) < count:
        if monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for the clients ({kind}: {len(got)}/{count})")
        try:
            message = results.get(timeout=0.5)
        except queue.Empty:
            check_alive(watch)
            continue
        if message[0] == "error":
            raise RuntimeError(f"client {message[1]} failed:\n{message[2]}")
        got += [message] if message[0] == kind else []
    return got


def check_alive(watch: list[Any]) -> None:
    """The server must not exit; a client may exit only cleanly (after its last report)."""
    for proc in watch:
        if isinstance(proc, subprocess.Popen) and proc.poll() is not None:
            raise RuntimeError(f"the server exited early with code {proc.returncode}")
        if isinstance(proc, mp.process.BaseProcess) and proc.exitcode not in (None, 0):
            raise RuntimeError(f"{proc.name} exited with code {proc.exitcode}")


def share(total: float, parts: int, index: int) -> int:
    return int(total // parts + (index < total % parts))


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--connections", type=int, default=3000)
    parser.add_argument("--duration", type=float, default=180)
    parser.add_argument("--churn-per-second", type=int, default=50)
    parser.add_argument("--message-rate", type=float, default=200)
    parser.add_argument("--broadcast-every", type=float, default=5)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    fd_limit = raise_fd_limit(args.connections)
    ctx = mp.get_context("spawn")
    results, go, shutdown, start_at = ctx.Queue(), ctx.Event(), ctx.Event(), ctx.Value("d", 0.0)
    clients: list[Any] = []
    server: subprocess.Popen[str] | None = None
    finished = False
    with tempfile.TemporaryDirectory(prefix="laf-soak-") as tmp:
        try:
            server, output, url = start_server(Path(tmp) / "soak.db", fd_limit)
            events = (go, start_at, shutdown, results)
            clients = [
                ctx.Process(target=client_main, args=(i, args, url, *events), daemon=True)
                for i in range(args.clients)
            ]
            for client in clients:
                client.start()
            watch = [server, *clients]
            began = monotonic()
            ready = collect(results, "ready", args.clients, max(60, args.connections / 20), watch)
            print(f"{sum(m[2] for m in ready)} connections open in {monotonic() - began:.1f} s")
            start_at.value = start = monotonic() + 0.5
            samples = [sample(server.pid, start)]
            go.set()
            calls = drive(url, server.pid, start, args, samples, watch)
            drained = collect(results, "drained", args.clients, ECHO_TIMEOUT + 30, watch)
            samples.append(sample(server.pid, start))
            shutdown.set()
            collect(results, "stopping", args.clients, 30, watch)
            stopped = stop_server(server)
            stats = [m[1] for m in collect(results, "stats", args.clients, 60, clients)]
            finished = True
        finally:
            shutdown.set()
            if server is not None:
                stop_server(server)
            for client in clients:  # after their report they exit on their own
                client.join(5 if finished else 0)
                if client.is_alive():
                    client.kill()
                    client.join()
    held = (args.connections, sum(m[2] for m in ready), sum(m[2] for m in drained))
    return report(args, held, samples, calls, stats, stopped, output)


def drive(
    url: str, pid: int, start: float, args: Any, samples: list[Any], watch: list[Any]
) -> list[dict[str, Any]]:
    """Until the deadline: call the broadcast function, sample the server, watch the processes."""
    end = start + args.duration
    calls: list[dict[str, Any]] = []
    next_broadcast, next_sample = start + args.broadcast_every, start + SAMPLE_EVERY
    with httpx.Client(base_url=url, timeout=10) as http:
        while (now := monotonic()) < end:
            check_alive(watch)
            if now >= next_sample:
                samples.append(s := sample(pid, start))
                print(f"t={s['t']:6.1f}s  rss {s['rss_mib']} MiB  fds {s['fds']}", flush=True)
                next_sample += SAMPLE_EVERY
            if now >= next_broadcast and end - now > 1:
                call: dict[str, Any] = {"seq": len(calls) + 1, "at": now, "count": None}
                try:
                    response = http.post("/fn/broadcast", params={"seq": call["seq"]})
                    call["count"] = response.raise_for_status().json()["count"]
                except httpx.HTTPError as exc:
                    call["error"] = repr(exc)
                calls.append(call | {"done": monotonic()})
                next_broadcast += args.broadcast_every
            time.sleep(0.05)
    return calls


def report(
    args: Any,
    held: tuple[int, ...],
    samples: list[Any],
    calls: list[Any],
    stats: list[Any],
    stopped: tuple[int, float],
    output: ServerOutput,
) -> int:
    total: Counter[str] = sum((Counter(s["stats"]) for s in stats), Counter())
    received: Counter[int] = sum((Counter(s["broadcasts"]) for s in stats), Counter())
    churn_times = sorted(t for s in stats for t in s["churn_times"])
    latencies = sorted(ms * 1000 for s in stats for ms in s["latencies"]) or [0.0]
    done = [c for c in calls if c["count"] is not None]
    expected, got = sum(c["count"] for c in done), sum(received[c["seq"]] for c in done)
    unexplained = 0  # frames missing beyond the sockets the churn closed around that broadcast
    for c in done:
        near = bisect.bisect(churn_times, c["done"] + 1) - bisect.bisect(churn_times, c["at"] - 0.1)
        unexplained += max(0, c["count"] - received[c["seq"]] - near)
    first, last = samples[0], samples[-1]
    rss_max = max(s["rss_mib"] for s in samples)
    cpu = (last["cpu_s"] - first["cpu_s"]) / max(last["t"] - first["t"], 1e-9) * 100
    oddities = (total["late_echoes"], total["out_of_order"], total["unknown_frames"])
    rows: dict[str, Any] = {
        "connections (requested / held at start / at end)": held,
        "duration s / client processes": (args.duration, args.clients),
        "messages sent / echoed": (total["sent"], total["echoed"]),
        "lost (no echo within 10 s)": total["lost"],
        "late echoes / out of order / unknown frames": oddities,
        "echo owed when the churn closed its socket": total["dropped_by_churn"],
        "echo latency p50 / p99 / max ms": tuple(
            round(latencies[int(f * (len(latencies) - 1))], 1) for f in (0.5, 0.99, 1.0)
        ),
        "churned (clean / aborted)": (total["churned_clean"], total["churned_aborted"]),
        "connect errors / unexpected closes": (total["connect_errors"], total["unexpected_closes"]),
        "broadcasts sent / failed": (len(calls), len(calls) - len(done)),
        "broadcast frames expected (server) / received": (expected, got),
        "missing frames not explained by churn": unexplained,
        "server RSS start / end / max MiB": (first["rss_mib"], last["rss_mib"], rss_max),
        "server RSS growth MiB": round(last["rss_mib"] - first["rss_mib"], 1),
        "server fds start / end": (first["fds"], last["fds"]),
        "server CPU % (average)": round(cpu, 1),
        "server exit code after SIGTERM / shutdown s": (stopped[0], round(stopped[1], 2)),
        "server log warnings and errors": output.warnings,
    }
    rows |= {k: v for k, v in sorted(total.items()) if " " in k}  # error kinds and close codes
    for name, value in rows.items():
        text = " / ".join(map(str, value)) if isinstance(value, tuple) else str(value)
        print(f"{name:52} {text}")
    for line in output.lines[:20]:
        print("  server:", line)
    (HERE / "results").mkdir(exist_ok=True)
    result = {"rows": rows, "samples": samples, "broadcasts": calls, "server_log": output.lines}
    (HERE / "results" / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    bad = total["lost"] or total["unexpected_closes"] or unexplained or len(done) < len(calls)
    return 1 if bad or stopped[0] != 0 else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit("soak: interrupted; the server and the clients were stopped")
