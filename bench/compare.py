"""laf-py against what users would pick instead, same run, same generator: plain Tornado, the
websockets library, FastAPI and Starlette on uvicorn, python-socketio.

    python bench/compare.py [--quick] [--rounds 3] [--duration 5] [--clients 2]
                            [--only echo,http,static,stream,broadcast,memory,churn]
                            [--servers tornado,websockets,fastapi,starlette,socketio,laf-py]
                            [--metrics-off]

Starts the servers and drives them with bench/loadgen.py:

- tornado, websockets: bench/baselines/tornado_app.py and websockets_app.py;
- fastapi, starlette: bench/baselines/fastapi_app.py and starlette_app.py, each on uvicorn with
  its defaults (uvloop, httptools, the websockets library's protocol), as their docs teach;
- socketio: bench/baselines/socketio_app.py, python-socketio's ``AsyncServer`` as an ASGI app
  on uvicorn. It speaks Socket.IO, so the generator speaks it too (Engine.IO v4 handshake and
  pings, ``42["echo", ...]`` events); it has echo, broadcast, memory and churn, no HTTP phases;
- laf-py: ``laf-py serve`` on bench/compare_functions (Tornado);
- laf-py-uvicorn, laf-py-granian (only when named in ``--servers``): the same laf-py with
  ``--server uvicorn``, and laf-py's ASGI app under granian
  (``granian --interface asgi --factory laf_py.asgi:app_from_environment``, the same settings
  as ``LAF_*`` variables; CPU, memory and sockets are read off granian's worker process).

``--servers`` picks them (default: all but the two opt-in ones; with ``--quick``: tornado,
websockets and laf-py, so that the smoke test stays short). The machine is shared and its speed
moves, so the loaded phases run in ``--rounds`` rounds: in each round every server takes the
phase in turn (the order rotates), the table shows medians, and each ratio is the median of the
ratios measured within one round: laf-py/<baseline> for every baseline that ran, and for
laf-py-uvicorn and laf-py-granian, <that>/laf-py and <that>/starlette.

- echo: ``--echo-connections`` WebSockets (50) in a closed loop, 64 B text messages, for
  ``--duration`` s after a warm-up: echo round trips per second, p50/p99 latency;
- http: ``GET /hello`` (``/fn/hello`` on laf-py: an ``async def`` returning the small dict
  ``{"message": "Hello, world!"}``, which every baseline answers too, as JSON) with wrk
  (``-t1 -c50``) when it is installed, else with the Python generator: requests per second,
  p50/p99. Not run on websockets, which is not an HTTP framework, nor on socketio;
- static: ``GET /file.txt``, a 10 KiB file of the app's ``public/`` folder on laf-py (started with
  ``--app-dir``), Tornado's own ``StaticFileHandler`` and Starlette's ``StaticFiles`` on the same
  file in the baselines; measured as http is;
- stream: ``GET /stream`` (``/fn/stream`` on laf-py), a chunked response of 10 chunks of 1 KiB,
  each written and flushed (laf-py: a function's async generator; Tornado: a handler that
  ``write``s and ``await``s ``flush()`` ten times; FastAPI, Starlette: a ``StreamingResponse``
  of an async generator); measured as http is, each request reading the whole stream;
- broadcast: ``--broadcast-connections`` sockets (5000), one HTTP call that broadcasts a short
  text frame (FastAPI, Starlette: an ``await send_text`` per socket, as their docs' broadcast;
  socketio: one ``emit`` of an event), time from sending that call until every socket has the
  frame; the median of ``--broadcast-rounds`` broadcasts after one warm-up;
- memory (a fresh server, once): RSS before and after opening ``--idle-connections`` (9000)
  idle sockets, per connection;
- churn (the same fresh server, after memory): ``--churn-rounds`` (10) rounds of opening and
  closing ``--churn-connections`` (5000) sockets; RSS after each round.

For every load it samples the CPU time (utime + stime from /proc) of the server and of the
generator processes over the measured window, to show which one saturates. laf-py runs with
``--reload false --max-messages-per-second 0 --max-connections 20000 --log-level warning``
(at the default ``info`` level it writes an access line per HTTP call, which the plain Tornado
app does not; ``--laf-log-level info`` measures that) and on its default event loop, uvloop; the
Tornado and websockets baselines run on asyncio's own loop as written, or on uvloop with
``--baseline-loop uvloop`` (which shows what laf-py's own code costs, loop for loop); the uvicorn
ones on uvicorn's default loop, uvloop, either way. Prints a table of absolute numbers and the
ratios and writes bench/results/compare.json (every round included).
``--metrics-off`` adds laf-py started with ``--metrics false`` to the same rounds, and a column
"metrics on/off" (laf-py / that, median of the per-round ratios): what counting for
``GET /_/metrics`` costs. ``--quick`` is a tiny load for the smoke test. Benchmarks, not tests:
nothing here asserts a speed."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import http.client
import importlib.metadata
import json
import os
import platform
import queue
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import instructions  # noqa: E402
import latency  # noqa: E402
from loadgen import SOCKETIO_PATH, Pool, cpu_seconds, fd_count, rss_kib, share  # noqa: E402

monotonic = time.monotonic
PHASES = (
    "echo",
    "http",
    "static",
    "stream",
    "push",
    "broadcast",
    "memory",
    "churn",
    "instructions",
    "cluster",
)
SERVER_NAMES = (
    "tornado",
    "websockets",
    "fastapi",
    "starlette",
    "socketio",
    "laf-py",
    "laf-py-uvicorn",
    "laf-py-granian",
)
# the laf-py/<baseline> ratio columns, in this order, for those present
BASELINES = ("tornado", "websockets", "fastapi", "starlette", "socketio")
# laf-py on another server: not run unless named in --servers
OPT_IN = ("laf-py-uvicorn", "laf-py-granian")
DEFAULT_SERVERS = tuple(name for name in SERVER_NAMES if name not in OPT_IN)
QUICK_SERVERS = ("tornado", "websockets", "laf-py")  # --quick: the smoke test stays short

# -- the servers -------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    ws_path: str
    hello_path: str | None
    broadcast_path: str
    push_path: str | None
    static_path: str | None = None
    stream_path: str | None = None
    # how the load generator speaks on ws_path: "ws" (plain WebSocket messages) or "socketio"
    protocol: str = "ws"
    # how it is started: "script" (bench/baselines/<name>_app.py), "laf-py" (laf-py serve,
    # plus laf_args) or "granian" (laf-py's ASGI app under granian, settings as LAF_* vars)
    launcher: str = "script"
    laf_args: tuple[str, ...] = ()


LAF_PATHS = ("/__websocket__", "/fn/hello", "/fn/broadcast", "/fn/push", "/file.txt", "/fn/stream")
UVICORN_PATHS = ("/echo", "/hello", "/broadcast", "/push", "/file.txt", "/stream")
TARGETS = [
    Target("tornado", "/echo", "/hello", "/broadcast", "/push", "/file.txt", "/stream"),
    Target("websockets", "/", None, "/broadcast", None),
    Target("fastapi", *UVICORN_PATHS),
    Target("starlette", *UVICORN_PATHS),
    Target("socketio", SOCKETIO_PATH, None, "/broadcast", None, protocol="socketio"),
    Target("laf-py", *LAF_PATHS, launcher="laf-py"),
    Target("laf-py-uvicorn", *LAF_PATHS, launcher="laf-py", laf_args=("--server", "uvicorn")),
    Target("laf-py-granian", *LAF_PATHS, launcher="granian"),
]
# GET /hello everywhere: {"message": "Hello, world!"}, with or without a space after the colon.
HELLO = re.compile(rb'\{"message": ?"Hello, world!"\}')
STATIC_BODY = b"0123456789abcde\n" * 640  # 10 KiB: public/file.txt
STREAM_BODY = b"0123456789abcde\n" * 64 * 10  # 10 chunks of 1 KiB (compare_functions/stream.py)
LAF_PY = next(t for t in TARGETS if t.name == "laf-py")
# --metrics-off: laf-py once more, started with --metrics false, measured in the same rounds;
# the table's last column is laf-py / this (what counting for GET /_/metrics costs).
METRICS_OFF = dataclasses.replace(
    LAF_PY, name="laf-py-metrics-off", laf_args=("--metrics", "false")
)


class ServerOutput(threading.Thread):
    """Drains the server's output so its pipe never fills; keeps the first lines."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        super().__init__(daemon=True)
        self.process = process
        self.url: queue.Queue[str | None] = queue.Queue()
        self.lines: list[str] = []
        self.warnings = 0

    def run(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if match := re.search(r"listening on (http://\S+)", line):
                self.url.put(match.group(1))
            if " tornado.access:" not in line and len(self.lines) < 100:
                self.lines.append(line.rstrip())
            self.warnings += bool(re.search(r"WARNING|ERROR|CRITICAL|Traceback", line))
        self.url.put(None)


def static_app(tmp: Path) -> Path:
    """The app folder laf-py is started on (``--app-dir``): only ``public/file.txt``, the
    file that the Tornado baseline serves too."""
    public = tmp / "app" / "public"
    if not public.is_dir():
        public.mkdir(parents=True)
        (public / "file.txt").write_bytes(STATIC_BODY)
    return public.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """One server process: started with its output drained by a thread, always stopped."""

    def __init__(
        self,
        target: Target,
        args: Any,
        tmp: Path,
        extra: tuple[str, ...] = (),
        label: str = "",
        prefix: tuple[str, ...] = (),
    ) -> None:
        self.target = target
        self.port = 0
        self._worker_pid: int | None = None
        # Under valgrind, imports alone take ~30 s, and minutes on a loaded machine.
        self.start_timeout = 300.0 if prefix else 60.0
        env = {**os.environ, "LAF_SECRET": "compare-secret-" + "x" * 32}
        if target.launcher != "script":
            self.port = free_port()  # at --log-level warning it prints no "listening on" line
            settings = laf_settings(args, tmp, label)
            settings += [*extra, *target.laf_args]
        if target.launcher == "laf-py":
            command = [sys.executable, "-m", "laf_py", "serve", "--host", "127.0.0.1"]
            command += ["--port", str(self.port), *settings]
            command += ["--event-loop", args.laf_event_loop]
        elif target.launcher == "granian":
            # granian's own defaults (its event loop, one worker process, no access log); the
            # settings reach laf-py as the LAF_<OPTION> variables it reads for every option
            command = [str(Path(sys.executable).with_name("granian")), "--interface", "asgi"]
            command += ["--host", "127.0.0.1", "--port", str(self.port)]
            command += ["--log-level", "warning", "--factory", "laf_py.asgi:app_from_environment"]
            env.update(as_environment(settings))
        else:
            script = HERE / "baselines" / f"{target.name}_app.py"
            command = [sys.executable, str(script), "--port", "0"]
            if target.static_path is not None:
                command += ["--static-dir", str(static_app(tmp) / "public")]
            if args.baseline_loop == "uvloop":
                command.append("--uvloop")
        self.process = subprocess.Popen(
            [*prefix, *command],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,  # Ctrl-C reaches only this script, which stops the server
        )
        self.output = ServerOutput(self.process)
        self.output.start()

    def __enter__(self) -> Server:
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_ready(self) -> None:
        if self.port == 0:
            try:
                url = self.output.url.get(timeout=self.start_timeout)
            except queue.Empty:
                url = None
            if url is None:
                raise RuntimeError(f"{self.target.name} did not start:\n" + self.log())
            self.port = int(url.rsplit(":", 1)[1])
            return
        deadline = monotonic() + self.start_timeout
        while monotonic() < deadline:
            self.alive()
            try:
                if http_get(self.port, "/_/healthz")[0] == 200:
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.target.name} did not answer /_/healthz:\n" + self.log())

    def alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(
                f"{self.target.name} exited with code {self.process.returncode}:\n" + self.log()
            )

    def log(self) -> str:
        return "\n".join(self.output.lines[-30:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.output.join(5)

    @property
    def pid(self) -> int:
        """The process that serves: granian's worker, the started process otherwise."""
        if self.target.launcher != "granian":
            return self.process.pid
        if self._worker_pid is None:
            path = f"/proc/{self.process.pid}/task/{self.process.pid}/children"
            with open(path) as f:
                children = [int(pid) for pid in f.read().split()]
            if len(children) != 1:
                raise RuntimeError(f"granian has {len(children)} worker processes, not 1")
            self._worker_pid = children[0]
        return self._worker_pid


def laf_settings(args: Any, tmp: Path, label: str) -> list[str]:
    """laf-py's settings in the bench, as command-line flags and their values."""
    return [
        *("--functions", str(HERE / "compare_functions")),
        *("--app-dir", str(static_app(tmp))),  # serves <app>/public at /
        *("--reload", "false", "--log-level", args.laf_log_level),
        *("--max-messages-per-second", "0", "--max-connections", "20000"),
        *("--database-url", f"sqlite:///{tmp / f'compare{label}.db'}"),
    ]


def as_environment(settings: list[str]) -> dict[str, str]:
    """``["--max-connections", "20000", ...]`` -> ``{"LAF_MAX_CONNECTIONS": "20000", ...}``
    (laf_py/options.py: every option's variable is LAF_ and its flag in capitals)."""
    flags, values = settings[::2], settings[1::2]
    return {
        "LAF_" + f.removeprefix("--").upper().replace("-", "_"): v
        for f, v in zip(flags, values, strict=True)
    }


def http_get(port: int, path: str) -> tuple[int, bytes]:
    """One GET on a new connection (the same trigger cost for every server)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


# -- measuring ---------------------------------------------------------------------------------


class CPU:
    """CPU time of the server and of the generator processes between ``start`` and ``stop``."""

    def __init__(self, server_pid: int, generator_pids: list[int]) -> None:
        self.server_pid, self.generator_pids = server_pid, generator_pids
        self.wall = self.server = 0.0
        self.generators = [0.0] * len(generator_pids)

        self.machine = 0.0

    def start(self) -> None:
        self._t0 = monotonic()
        self._m0 = machine_busy_seconds()
        self._s0 = cpu_seconds(self.server_pid)
        self._g0 = [cpu_seconds(pid) for pid in self.generator_pids]

    def stop(self) -> None:
        self.wall += monotonic() - self._t0
        self.server += cpu_seconds(self.server_pid) - self._s0
        for i, pid in enumerate(self.generator_pids):
            self.generators[i] += cpu_seconds(pid) - self._g0[i]
        self.machine += machine_busy_seconds() - self._m0

    def result(self) -> dict[str, Any]:
        wall = max(self.wall, 1e-9)
        other = max(0.0, self.machine - self.server - sum(self.generators))
        return {
            "server_cpu_pct": round(100 * self.server / wall, 1),
            "generator_cpu_pct": round(100 * sum(self.generators) / wall, 1),
            "generator_cpu_pct_per_process": [round(100 * g / wall, 1) for g in self.generators],
            # everything else on the machine (this script, other users' work): noise if high
            "other_cpu_pct": round(100 * other / wall, 1),
        }


def machine_busy_seconds() -> float:
    """CPU time of the whole machine, all cores, not idle (from /proc/stat)."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait


def percentile_ms(samples: list[float], fraction: float) -> float | None:
    if not samples:
        return None
    ordered = sorted(samples)
    return round(1000 * ordered[min(len(ordered) - 1, int(fraction * len(ordered)))], 3)


def sleep_until(when: float) -> None:
    time.sleep(max(0.0, when - monotonic()))


class Bench:
    def __init__(self, pool: Pool, args: Any) -> None:
        self.pool, self.args, self.size = pool, args, len(pool.pids)
        # WARNING/ERROR lines in server logs
        self.warnings = dict.fromkeys((*SERVER_NAMES, METRICS_OFF.name), 0)

    def open(self, server: Server, count: int) -> dict[str, Any]:
        commands = [
            (
                "open",
                "127.0.0.1",
                server.port,
                server.target.ws_path,
                share(count, self.size, i),
                server.target.protocol,
            )
            for i in range(self.size)
        ]
        replies = self.pool.call(commands, "opened", 60 + count / 50, server.alive)
        errors: dict[str, int] = {}
        for reply in replies:
            for kind, n in reply[2].items():
                errors[kind] = errors.get(kind, 0) + n
        opened = sum(r[1] for r in replies)
        if opened < count:
            raise RuntimeError(f"opened {opened} of {count} connections; errors: {errors}")
        return {"opened": opened, "seconds": round(max(r[3] for r in replies), 2)}

    def close(self, server: Server) -> int:
        replies = self.pool.call([("close",)] * self.size, "closed", 60, server.alive)
        return sum(r[2] for r in replies)  # aborted: no close handshake within 10 s

    def echo(self, server: Server) -> dict[str, Any]:
        args = self.args
        self.open(server, args.echo_connections)
        try:
            start_at = monotonic() + 0.3
            command = ("echo", args.payload, start_at, args.warmup, args.duration)
            self.pool.send([command] * self.size)
            cpu = CPU(server.pid, self.pool.pids)
            sleep_until(start_at + args.warmup)
            cpu.start()
            sleep_until(start_at + args.warmup + args.duration)
            cpu.stop()
            replies = self.pool.receive("echo", args.duration + args.warmup + 30, server.alive)
        finally:
            self.close(server)
        latencies = [s for r in replies for s in r[2]]
        return {
            "connections": args.echo_connections,
            "payload_bytes": args.payload,
            "duration_s": args.duration,
            "msgs_per_s": round(len(latencies) / args.duration, 1),
            "p50_ms": percentile_ms(latencies, 0.5),
            "p99_ms": percentile_ms(latencies, 0.99),
            "unanswered_at_end": sum(r[3] for r in replies),
            **cpu.result(),
        }

    def http(self, server: Server) -> dict[str, Any] | None:
        return self.get_load(server, server.target.hello_path, HELLO)

    def static(self, server: Server) -> dict[str, Any] | None:
        return self.get_load(server, server.target.static_path, STATIC_BODY)

    def stream(self, server: Server) -> dict[str, Any] | None:
        return self.get_load(server, server.target.stream_path, STREAM_BODY)

    def get_load(
        self, server: Server, path: str | None, expected: bytes | re.Pattern[bytes]
    ) -> dict[str, Any] | None:
        """``GET path`` in a closed loop (wrk, else the Python generator), once it is seen to
        answer ``expected``."""
        if path is None:
            return None
        status, body = http_get(server.port, path)
        if status != 200 or not (
            expected.fullmatch(body) if isinstance(expected, re.Pattern) else body == expected
        ):
            raise RuntimeError(f"GET {path}: {status} {body[:100]!r}")
        wrk = shutil.which("wrk")
        if wrk and not self.args.python_http:
            return self.http_wrk(server, wrk, path)
        return self.http_python(server, path)

    def http_wrk(self, server: Server, wrk: str, path: str) -> dict[str, Any]:
        args = self.args
        url = f"http://127.0.0.1:{server.port}{path}"
        seconds = max(1, round(args.duration))
        base = [wrk, "-t1", f"-c{args.http_connections}", "--latency"]
        subprocess.run([*base, "-d1s", url], capture_output=True, timeout=60, check=True)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        s0, t0, m0 = cpu_seconds(server.pid), monotonic(), machine_busy_seconds()
        done = subprocess.run(
            [*base, f"-d{seconds}s", url], capture_output=True, text=True, timeout=seconds + 60
        )
        wall, server_cpu = monotonic() - t0, cpu_seconds(server.pid) - s0
        machine = machine_busy_seconds() - m0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            raise RuntimeError(f"wrk failed: {done.stdout}{done.stderr}")
        out = done.stdout
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
        wrk_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        errors = re.search(r"Socket errors:.*|Non-2xx.*", out)
        return {
            "generator": "wrk -t1",
            "connections": args.http_connections,
            "duration_s": seconds,
            "requests_per_s": rps,
            "p50_ms": wrk_latency(out, "50%"),
            "p99_ms": wrk_latency(out, "99%"),
            "errors": errors.group(0) if errors else None,
            "server_cpu_pct": round(100 * server_cpu / wall, 1),
            "generator_cpu_pct": round(100 * wrk_cpu / wall, 1),
            "generator_cpu_pct_per_process": [round(100 * wrk_cpu / wall, 1)],
            "other_cpu_pct": round(100 * max(0.0, machine - server_cpu - wrk_cpu) / wall, 1),
        }

    def http_python(self, server: Server, path: str) -> dict[str, Any]:
        args = self.args
        start_at = monotonic() + 1.0 + args.warmup
        commands = [
            (
                "http",
                "127.0.0.1",
                server.port,
                path,
                share(args.http_connections, self.size, i),
                start_at,
                args.duration,
            )
            for i in range(self.size)
        ]
        self.pool.send(commands)
        cpu = CPU(server.pid, self.pool.pids)
        sleep_until(start_at)
        cpu.start()
        sleep_until(start_at + args.duration)
        cpu.stop()
        replies = self.pool.receive("http", args.duration + 30, server.alive)
        latencies = [s for r in replies for s in r[2]]
        statuses: dict[str, int] = {}
        for reply in replies:
            for status, n in reply[3].items():
                statuses[str(status)] = statuses.get(str(status), 0) + n
        return {
            "generator": f"python, {self.size} processes",
            "connections": args.http_connections,
            "duration_s": args.duration,
            "requests_per_s": round(len(latencies) / args.duration, 1),
            "p50_ms": percentile_ms(latencies, 0.5),
            "p99_ms": percentile_ms(latencies, 0.99),
            "errors": None if set(statuses) == {"200"} else statuses,
            **cpu.result(),
        }

    def broadcast(self, server: Server, spread: tuple[Server, ...] = ()) -> dict[str, Any]:
        """Broadcast through an HTTP call to ``server``, to sockets opened on it, or shared
        evenly between the ``spread`` servers (the nodes of a cluster)."""
        args = self.args
        count = args.broadcast_connections
        holders = spread or (server,)
        opened = {"seconds": 0.0}
        for index, holder in enumerate(holders):
            share_of = share(count, len(holders), index)
            opened["seconds"] += self.open(holder, share_of)["seconds"]
        cpu = CPU(server.pid, self.pool.pids)
        times, calls = [], []
        try:
            for round_ in range(args.broadcast_rounds + 1):  # round 0 is a warm-up
                self.pool.call([("arm",)] * self.size, "armed", 30, server.alive)
                cpu.start()
                t0 = monotonic()
                status, body = http_get(
                    server.port, f"{server.target.broadcast_path}?msg=b{round_}"
                )
                returned = monotonic() - t0
                if status != 200 or json.loads(body)["count"] != count:
                    raise RuntimeError(f"broadcast call: {status} {body[:200]!r}")
                try:
                    replies = self.pool.receive("received", 60, server.alive)
                except TimeoutError:
                    missing = self.pool.call(
                        [("missing",)] * self.size, "missing", 30, server.alive
                    )
                    raise RuntimeError(
                        f"broadcast round {round_}: {sum(r[1] for r in missing)} sockets "
                        "never received the frame"
                    ) from None
                cpu.stop()
                if round_:
                    times.append(max(r[1] for r in replies) - t0)
                    calls.append(returned)
                time.sleep(0.3)
        finally:
            self.close(server)
        return {
            "connections": count,
            "rounds": args.broadcast_rounds,
            "open_seconds": opened["seconds"],
            "median_ms": round(1000 * statistics.median(times), 1),
            "min_ms": round(1000 * min(times), 1),
            "max_ms": round(1000 * max(times), 1),
            "http_returned_median_ms": round(1000 * statistics.median(calls), 1),
            **cpu.result(),
        }

    def push(self, server: Server, node: Server | None = None) -> dict[str, Any] | None:
        """Push latency at light load: ``--push-rounds`` HTTP calls to ``server``, one at a
        time, each until its frame reaches a socket on ``node`` (default: the same server)."""
        path = server.target.push_path
        if path is None:
            return None
        node = node or server
        samples = asyncio.run(
            latency.push_latencies(
                server.port, node.port, node.target.ws_path, path, self.args.push_rounds
            )
        )
        return latency.summary(samples)

    def memory(self, server: Server) -> dict[str, Any]:
        args = self.args
        self.open(server, min(100, args.idle_connections))  # warm up the code paths
        self.close(server)
        wait_fds(server, None)
        time.sleep(0.5)
        rss0, fds0 = rss_kib(server.pid), fd_count(server.pid)
        opened = self.open(server, args.idle_connections)
        time.sleep(2)
        rss1 = rss_kib(server.pid)
        aborted = self.close(server)
        wait_fds(server, fds0)
        return {
            "connections": args.idle_connections,
            "open_seconds": opened["seconds"],
            "rss_before_mib": round(rss0 / 1024, 1),
            "rss_with_connections_mib": round(rss1 / 1024, 1),
            "kib_per_connection": round((rss1 - rss0) / args.idle_connections, 2),
            "aborted_closes": aborted,
        }

    def churn(self, server: Server) -> dict[str, Any]:
        args = self.args
        fds0 = fd_count(server.pid)
        rss_start = rss_kib(server.pid)
        rounds, aborted, started = [], 0, monotonic()
        for _ in range(args.churn_rounds):
            self.open(server, args.churn_connections)
            aborted += self.close(server)
            wait_fds(server, fds0)
            time.sleep(0.2)
            rounds.append(round(rss_kib(server.pid) / 1024, 1))
        return {
            "connections": args.churn_connections,
            "rounds": args.churn_rounds,
            "seconds": round(monotonic() - started, 1),
            "rss_before_mib": round(rss_start / 1024, 1),
            "rss_after_each_round_mib": rounds,
            "rss_first_round_mib": rounds[0],
            "rss_last_round_mib": rounds[-1],
            "growth_after_first_round_mib": round(rounds[-1] - rounds[0], 1),
            "last_round_over_lowest_mib": round(rounds[-1] - min(rounds), 1),
            "aborted_closes": aborted,
            "fds_before_after": [fds0, fd_count(server.pid)],
        }


def wait_fds(server: Server, target: int | None, limit: float = 20) -> None:
    """Until the server has closed the sockets the clients closed (or ``limit`` s)."""
    deadline, last = monotonic() + limit, -1
    while monotonic() < deadline:
        now = fd_count(server.pid)
        if (target is not None and now <= target) or (target is None and now == last):
            return
        last = now
        time.sleep(0.2)


def wrk_latency(out: str, label: str) -> float | None:
    match = re.search(rf"^\s*{re.escape(label)}\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
    if not match:
        return None
    return round(float(match.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[match.group(2)], 3)


# -- the run -----------------------------------------------------------------------------------


LOADED_PHASES = ("echo", "http", "static", "stream", "push", "broadcast")
FRESH_PHASES = ("memory", "churn")


def attempt(label: str, step: Callable[[], Any]) -> Any:
    """The step's result, or ``{"error": ...}``, so that the other measurements still run."""
    try:
        return step()
    except Exception as exc:
        print(f"  {label} failed: {exc}", flush=True)
        return {"error": f"{type(exc).__name__}: {exc}"[:2000]}


def run_step(server: Server, name: str, step: Callable[[Server], Any]) -> Any:
    result = attempt(f"{server.target.name}: {name}", lambda: step(server))
    if isinstance(result, dict) and "error" in result:
        server.alive()  # a server that died ends the run rather than fail every later step
    return result


def run_loaded(
    targets: list[Target], bench: Bench, phases: list[str], args: Any, tmp: Path
) -> dict[str, dict[str, list[Any]]]:
    """Echo, HTTP and broadcast, in ``--rounds`` rounds. Every server is started at once (an
    idle one costs nothing); each round runs each phase on every server in turn, the order
    rotated between rounds, so a busy moment of the shared machine falls on all of them."""
    steps = {
        "echo": bench.echo,
        "http": bench.http,
        "static": bench.static,
        "stream": bench.stream,
        "push": bench.push,
        "broadcast": bench.broadcast,
    }
    todo = [name for name in LOADED_PHASES if name in phases]
    rounds: dict[str, dict[str, list[Any]]] = {t.name: {p: [] for p in todo} for t in targets}
    if not todo:
        return rounds
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(Server(target, args, tmp)) for target in targets]
        for number in range(args.rounds):
            shift = number % len(servers)
            order = servers[shift:] + servers[:shift]
            for name in todo:
                for server in order:
                    print(f"  round {number + 1}: {server.target.name} {name} ...", flush=True)
                    rounds[server.target.name][name].append(run_step(server, name, steps[name]))
        for server in servers:
            bench.warnings[server.target.name] += server.output.warnings
    return rounds


def run_fresh(target: Target, bench: Bench, phases: list[str], args: Any, tmp: Path) -> Any:
    """Memory, then churn, on a server that has seen no load yet."""
    steps = {"memory": bench.memory, "churn": bench.churn}
    results: dict[str, Any] = {}
    todo = [name for name in FRESH_PHASES if name in phases]
    if todo:
        with Server(target, args, tmp) as server:
            for name in todo:
                print(f"  {target.name}: {name} ...", flush=True)
                results[name] = run_step(server, name, steps[name])
            bench.warnings[target.name] += server.output.warnings
    return results


def run_cluster(bench: Bench, args: Any, tmp: Path) -> Any:
    """Two laf-py nodes joined through Redis: push from an HTTP call on node A to a socket on
    node B, and a broadcast from node A to sockets shared between both; ``--rounds`` rounds."""
    where = urlsplit(args.redis_url)
    try:
        socket.create_connection((where.hostname, where.port or 6379), timeout=2).close()
    except OSError as exc:
        return {"error": f"Redis is not reachable at {args.redis_url} ({exc}); see --redis-url"}
    extra = ("--redis-url", args.redis_url, "--cluster", f"compare-{os.urandom(4).hex()}")
    rounds = []
    with (
        Server(LAF_PY, args, tmp, extra, label="-a") as node_a,
        Server(LAF_PY, args, tmp, extra, label="-b") as node_b,
    ):
        for number in range(args.rounds):
            print(f"  round {number + 1}: laf-py cluster ...", flush=True)
            push = run_step(node_a, "cluster push", lambda a: bench.push(a, node=node_b))
            broadcast = run_step(
                node_a, "cluster broadcast", lambda a: bench.broadcast(a, (node_a, node_b))
            )
            if "error" in push or "error" in broadcast:
                rounds.append({"error": push.get("error") or broadcast.get("error")})
                continue
            rounds.append(
                {
                    **{f"push_{key}": value for key, value in push.items()},
                    **{f"broadcast_{key}": value for key, value in broadcast.items()},
                }
            )
        bench.warnings["laf-py"] += node_a.output.warnings + node_b.output.warnings
    return summarize(rounds)


def run_instructions(target: Target, args: Any, tmp: Path) -> Any:
    """Instructions per HTTP hello and per echo message, counted by callgrind (see
    bench/instructions.py): the one measure here that the machine's load does not move."""
    if target.protocol != "ws" or target.launcher == "granian":
        return None  # bench/instructions.py speaks plain WebSocket to one process
    if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
        return {"error": "valgrind is not installed (apt-get install valgrind)"}
    out = tmp / f"cg-{target.name}"
    prefix = ("valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p")
    with Server(target, args, tmp, label="-cg", prefix=prefix) as server:
        dump_prefix = tmp / f"cg-{target.name}.{server.pid}"
        result: dict[str, Any] = {"count": args.instruction_count}
        if target.hello_path is not None:
            result["per_http_request"] = round(
                instructions.per_http_request(
                    server.pid, dump_prefix, server.port, target.hello_path, args.instruction_count
                )
            )
        result["per_echo"] = round(
            instructions.per_echo(
                server.pid, dump_prefix, server.port, target.ws_path, args.instruction_count
            )
        )
    return result


def summarize(rounds: list[Any]) -> Any:
    """One phase's rounds → the median of each number, every round kept under "per_round"."""
    if not rounds or any(r is None for r in rounds):
        return None
    if errors := [r["error"] for r in rounds if "error" in r]:
        return {"error": errors[0], "per_round": rounds}
    summary: dict[str, Any] = {}
    for key, first in rounds[0].items():
        values = [r.get(key) for r in rounds]
        numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        if len(numbers) == len(values) and len(values) > 1:
            summary[key] = round(statistics.median(numbers), 2)
        else:
            summary[key] = first
    summary["per_round"] = rounds
    return summary


ROWS: list[tuple[str, str, str, bool]] = [
    # label, phase, key, ratio shown
    ("echo round trips/s", "echo", "msgs_per_s", True),
    ("echo p50 ms", "echo", "p50_ms", True),
    ("echo p99 ms", "echo", "p99_ms", True),
    ("  server CPU %", "echo", "server_cpu_pct", False),
    ("  generator CPU % (all processes)", "echo", "generator_cpu_pct", False),
    ("  rest of the machine CPU %", "echo", "other_cpu_pct", False),
    ("HTTP hello requests/s", "http", "requests_per_s", True),
    ("HTTP p50 ms", "http", "p50_ms", True),
    ("HTTP p99 ms", "http", "p99_ms", True),
    ("  server CPU %", "http", "server_cpu_pct", False),
    ("  generator CPU %", "http", "generator_cpu_pct", False),
    ("  rest of the machine CPU %", "http", "other_cpu_pct", False),
    ("static 10 KiB file requests/s", "static", "requests_per_s", True),
    ("static p50 ms", "static", "p50_ms", True),
    ("static p99 ms", "static", "p99_ms", True),
    ("  server CPU %", "static", "server_cpu_pct", False),
    ("  generator CPU %", "static", "generator_cpu_pct", False),
    ("  rest of the machine CPU %", "static", "other_cpu_pct", False),
    ("stream 10 x 1 KiB requests/s", "stream", "requests_per_s", True),
    ("stream p50 ms", "stream", "p50_ms", True),
    ("stream p99 ms", "stream", "p99_ms", True),
    ("  server CPU %", "stream", "server_cpu_pct", False),
    ("  generator CPU %", "stream", "generator_cpu_pct", False),
    ("  rest of the machine CPU %", "stream", "other_cpu_pct", False),
    ("push, HTTP call -> frame p50 ms", "push", "p50_ms", True),
    ("push, HTTP call -> frame p99 ms", "push", "p99_ms", True),
    ("broadcast: all received ms (median)", "broadcast", "median_ms", True),
    ("broadcast: HTTP call returned ms", "broadcast", "http_returned_median_ms", True),
    ("  server CPU % (during rounds)", "broadcast", "server_cpu_pct", False),
    ("  generator CPU % (during rounds)", "broadcast", "generator_cpu_pct", False),
    ("  rest of the machine CPU %", "broadcast", "other_cpu_pct", False),
    ("idle memory KiB per connection", "memory", "kib_per_connection", True),
    ("churn: RSS after round 1 MiB", "churn", "rss_first_round_mib", True),
    ("churn: RSS after last round MiB", "churn", "rss_last_round_mib", True),
    ("churn: last round - lowest round MiB", "churn", "last_round_over_lowest_mib", False),
    ("instructions per HTTP hello", "instructions", "per_http_request", True),
    ("instructions per echo message", "instructions", "per_echo", True),
    ("2 nodes+Redis: push A->B p50 ms", "cluster", "push_p50_ms", False),
    ("2 nodes+Redis: push A->B p99 ms", "cluster", "push_p99_ms", False),
    ("2 nodes+Redis: broadcast received ms", "cluster", "broadcast_median_ms", False),
    ("2 nodes+Redis: broadcast returned ms", "cluster", "broadcast_http_returned_median_ms", False),
]


def ratio_pairs(names: list[str]) -> list[tuple[str, str]]:
    """(numerator, denominator) of each ratio column, for the servers that ran: laf-py against
    every baseline; laf-py on another server against laf-py and against Starlette (both on
    uvicorn's stack for laf-py-uvicorn: what issue 16 compares); laf-py against itself with
    metrics off."""
    pairs = [("laf-py", base) for base in BASELINES if "laf-py" in names and base in names]
    for variant in OPT_IN:
        if variant in names:
            pairs += [(variant, base) for base in ("laf-py", "starlette") if base in names]
    if "laf-py" in names and METRICS_OFF.name in names:
        pairs.append(("laf-py", METRICS_OFF.name))
    return pairs


def ratio_label(pair: tuple[str, str]) -> str:
    return "metrics on/off" if pair[1] == METRICS_OFF.name else f"{pair[0]}/{pair[1]}"


def build_table(results: dict[str, Any], phases: list[str]) -> dict[str, Any]:
    """Absolute numbers are medians over the rounds; a ratio is the median of the ratios
    within each round, so a server is only ever compared with one measured beside it."""
    shown = [name for name in SERVER_NAMES if name in results]
    pairs = ratio_pairs(list(results))
    columns = ["metric", *shown, *(ratio_label(pair) for pair in pairs)]
    rows: list[list[Any]] = []
    ratios: dict[str, dict[str, float]] = {ratio_label(pair): {} for pair in pairs}
    for label, phase, key, with_ratio in ROWS:
        if phase not in phases:
            continue
        row = [label, *((results[name].get(phase) or {}).get(key) for name in shown)]
        for pair in pairs:
            ratio = None
            if with_ratio:
                ours, theirs = ((results[name].get(phase) or {}) for name in pair)
                # metrics on/off: three digits, it is a cost of a few percent at most
                digits = 3 if pair[1] == METRICS_OFF.name else 2
                ratio = median_ratio(ours, theirs, key, digits)
                if ratio is not None:
                    ratios[ratio_label(pair)][f"{phase}.{key}"] = ratio
            row.append(ratio)
        rows.append(row)
    return {"columns": columns, "rows": rows, "ratios": ratios}


def median_ratio(
    laf: dict[str, Any], base: dict[str, Any], key: str, digits: int = 2
) -> float | None:
    pairs = zip(laf.get("per_round", [laf]), base.get("per_round", [base]), strict=False)
    found = []
    for ours, theirs in pairs:
        a, b = ours.get(key), theirs.get(key)
        if isinstance(a, int | float) and isinstance(b, int | float) and b:
            found.append(a / b)
    return round(statistics.median(found), digits) if found else None


def print_table(table: dict[str, Any], args: Any) -> None:
    def cell(value: Any, digits: int = 2) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:,.{digits}f}" if abs(value) < 100 else f"{value:,.0f}"
        return f"{value:,}" if isinstance(value, int) else str(value)

    header = table["columns"]
    widths = [38, *(max(11, len(h) + 2) for h in header[1:])]
    print()
    print(
        f"medians of {args.rounds} rounds; laf-py on {args.laf_event_loop} event loop, "
        f"tornado and websockets on {args.baseline_loop}, the uvicorn apps on uvicorn's "
        f"{'uvloop' if args.baseline_loop == 'uvloop' else 'default (auto: uvloop)'}; "
        f"{args.echo_connections} echo connections x {args.payload} B, {args.duration} s; "
        f"broadcast to {args.broadcast_connections}; idle {args.idle_connections}; "
        f"churn {args.churn_rounds} x {args.churn_connections}; "
        f"{args.clients} generator processes"
    )
    print(
        "".join(
            f"{h:<{w}}" if i == 0 else f"{h:>{w}}"
            for i, (h, w) in enumerate(zip(header, widths, strict=True))
        )
    )
    for row in table["rows"]:
        cells = [cell(v, 3 if header[i] == "metrics on/off" else 2) for i, v in enumerate(row)]
        print(
            "".join(
                f"{c:<{w}}" if i == 0 else f"{c:>{w}}"
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
        )


def raise_fd_limit(needed: int) -> int:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))  # inherited by every child
    if limit < needed:
        sys.exit(f"compare: the open-files hard limit is {limit}; this run needs about {needed}")
    return limit


# what the servers run on (versions in the report; None: not installed)
BENCH_PACKAGES = (
    "tornado",
    "websockets",
    "uvloop",
    "fastapi",
    "starlette",
    "uvicorn",
    "httptools",
    "python-socketio",
    "python-engineio",
    "granian",
)


def installed(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, Any]:
    root = HERE.parent
    git = ["git", "-C", str(root)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run([*git, "status", "--short", "laf_py"], capture_output=True, text=True)
    wrk = shutil.which("wrk")
    wrk_version = None
    if wrk:
        out = subprocess.run([wrk, "-v"], capture_output=True, text=True)
        wrk_version = (out.stdout + out.stderr).split("\n")[0].strip()
    return {
        "python": platform.python_version(),
        **{name: installed(name) for name in BENCH_PACKAGES},
        "wrk": wrk_version,
        "cpus": os.cpu_count(),
        "laf_py_commit": head.stdout.strip(),
        "laf_py_uncommitted_changes": bool(dirty.stdout.strip()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny loads (the smoke test)")
    parser.add_argument("--duration", type=float, default=5, help="seconds per echo/HTTP load")
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds of echo, HTTP and broadcast (medians)"
    )
    parser.add_argument(
        "--only",
        help=f"comma-separated phases (default: all; --quick skips instructions): "
        f"{','.join(PHASES)}",
    )
    parser.add_argument(
        "--servers",
        help=f"comma-separated, of {','.join(SERVER_NAMES)} (default: "
        f"{','.join(DEFAULT_SERVERS)}; with --quick: {','.join(QUICK_SERVERS)})",
    )
    parser.add_argument(
        "--metrics-off",
        action="store_true",
        help="also run laf-py with --metrics false in the same rounds (column metrics on/off)",
    )
    parser.add_argument("--clients", type=int, default=2, help="generator processes")
    parser.add_argument("--echo-connections", type=int, default=50)
    parser.add_argument("--payload", type=int, default=64)
    parser.add_argument("--http-connections", type=int, default=50)
    parser.add_argument("--python-http", action="store_true", help="do not use wrk")
    parser.add_argument("--broadcast-connections", type=int, default=5000)
    parser.add_argument("--broadcast-rounds", type=int, default=5)
    parser.add_argument("--idle-connections", type=int, default=9000)
    parser.add_argument("--churn-connections", type=int, default=5000)
    parser.add_argument("--churn-rounds", type=int, default=10)
    parser.add_argument("--push-rounds", type=int, default=300)
    parser.add_argument(
        "--instruction-count", type=int, default=1000, help="requests/echoes under callgrind"
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="for cluster")
    parser.add_argument("--laf-log-level", default="warning")
    parser.add_argument(
        "--laf-event-loop", default="auto", help="laf-py's --event-loop (auto: uvloop)"
    )
    parser.add_argument(
        "--baseline-loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="event loop of the Tornado and websockets apps (default asyncio, as written); "
        "the uvicorn apps run on uvicorn's default loop, uvloop when installed, either way",
    )
    parser.add_argument("--output", type=Path, default=HERE / "results" / "compare.json")
    args = parser.parse_args()
    args.warmup = 1.0
    if args.quick:
        args.duration, args.warmup, args.rounds = 1.0, 0.3, 1
        args.echo_connections = args.http_connections = 4
        args.broadcast_connections, args.broadcast_rounds = 50, 2
        args.idle_connections, args.churn_connections, args.churn_rounds = 100, 50, 3
        args.push_rounds, args.instruction_count = 20, 20
    if args.only is None:  # callgrind's start-up alone is ~20 s a server: not for --quick
        args.only = ",".join(p for p in PHASES if not (args.quick and p == "instructions"))
    phases = [p for p in args.only.split(",") if p]
    if args.servers is None:
        args.servers = ",".join(QUICK_SERVERS if args.quick else DEFAULT_SERVERS)
    names = [name for name in args.servers.split(",") if name]
    if unknown := set(names) - set(SERVER_NAMES):
        parser.error(f"unknown servers: {', '.join(sorted(unknown))}")
    servers = [t for t in TARGETS if t.name in names]
    if args.metrics_off:
        servers.append(METRICS_OFF)
    if unknown := set(phases) - set(PHASES):
        parser.error(f"unknown phases: {', '.join(sorted(unknown))}")
    peak = max(args.idle_connections, args.broadcast_connections, args.churn_connections)
    raise_fd_limit(peak + 1000)
    meta = {"args": {k: str(v) for k, v in vars(args).items()}, **versions()}
    results: dict[str, Any] = {target.name: {} for target in servers}
    pool = Pool(args.clients)
    try:
        bench = Bench(pool, args)
        with tempfile.TemporaryDirectory(prefix="laf-compare-") as tmp:
            rounds = run_loaded(servers, bench, phases, args, Path(tmp))
            for target in servers:
                results[target.name] = {
                    name: summarize(values) for name, values in rounds[target.name].items()
                }
                results[target.name].update(run_fresh(target, bench, phases, args, Path(tmp)))
                if "instructions" in phases:
                    print(f"  {target.name}: instructions (callgrind) ...", flush=True)
                    results[target.name]["instructions"] = attempt(
                        f"{target.name}: instructions",
                        lambda: run_instructions(target, args, Path(tmp)),  # noqa: B023
                    )
            if "cluster" in phases and LAF_PY in servers:
                print("laf-py cluster (Redis) ...", flush=True)
                results["laf-py"]["cluster"] = run_cluster(bench, args, Path(tmp))
            for target in servers:
                results[target.name]["server_log_warnings"] = bench.warnings[target.name]
    finally:
        pool.stop()
    table = build_table(results, phases)
    print_table(table, args)
    report = {
        "meta": meta,
        "results": results,
        "ratios": table["ratios"],
        "table": {"columns": table["columns"], "rows": table["rows"]},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten to {args.output}")
    failed = [
        f"{name}.{phase}"
        for name, phases_ in results.items()
        for phase, value in phases_.items()
        if isinstance(value, dict) and "error" in value
    ]
    if failed:
        print("failed: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit("compare: interrupted; the servers and the generator were stopped")
