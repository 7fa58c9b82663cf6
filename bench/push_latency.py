"""Push latency: an HTTP call on one node until the frame arrives at a socket, same node and
across nodes joined through Redis.

    python bench/push_latency.py [--rounds 300] [--redis-url redis://127.0.0.1:6379/0]

Starts two ``laf-py serve`` processes (ports chosen by the OS) on the functions in
bench/functions, connects one WebSocket client to node B, then times ``POST /fn/push`` sent to
node B itself and to node A, one at a time (light load). Prints p50/p99 in milliseconds and
writes them to bench/results/push_latency.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import websockets

HERE = Path(__file__).resolve().parent


def start_node(redis_url: str, cluster: str, data: Path) -> tuple[subprocess.Popen[str], str]:
    env = {
        **os.environ,
        "LAF_SECRET": "bench-secret-" + "x" * 32,
        "LAF_LOG_LEVEL": "warning",
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "laf_py",
            "serve",
            "--port",
            "0",
            "--functions",
            str(HERE / "functions"),
            "--redis-url",
            redis_url,
            "--cluster",
            cluster,
            "--database-url",
            f"sqlite:///{data}",
            "--reload",
            "false",
            "--log-level",
            "info",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    assert process.stdout is not None
    for line in process.stdout:
        match = re.search(r"listening on (http://\S+)", line)
        if match:
            return process, match.group(1)
    raise RuntimeError("node did not start")


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def measure(target_url: str, ws_url: str, rounds: int) -> list[float]:
    async with websockets.connect(ws_url) as ws, httpx.AsyncClient() as http:
        socket_id = await ws.recv()
        for _ in range(20):  # warm up connections and code paths
            await http.post(
                f"{target_url}/fn/push",
                params={"id": socket_id},
                content=b"w",
                headers={"content-type": "text/plain"},
            )
            await ws.recv()
        samples = []
        for i in range(rounds):
            started = time.perf_counter()
            response = await http.post(
                f"{target_url}/fn/push",
                params={"id": socket_id},
                content=str(i).encode(),
                headers={"content-type": "text/plain"},
            )
            assert await ws.recv() == str(i)
            samples.append((time.perf_counter() - started) * 1000)
            assert response.json()["delivered"] == 1
        return samples


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    cluster = f"bench-{uuid.uuid4().hex[:8]}"
    data = HERE / "results" / f"{cluster}.db"
    data.parent.mkdir(exist_ok=True)
    node_a, url_a = start_node(args.redis_url, cluster, data)
    node_b, url_b = start_node(args.redis_url, cluster, data)
    try:
        ws_b = url_b.replace("http", "ws", 1) + "/__websocket__"
        same = await measure(url_b, ws_b, args.rounds)
        cross = await measure(url_a, ws_b, args.rounds)
    finally:
        for node in (node_a, node_b):
            node.terminate()
            node.wait()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{data}{suffix}").unlink(missing_ok=True)
    rows = {
        "same node": same,
        "cross node (Redis)": cross,
    }
    result = {}
    print(f"{'push, HTTP call -> frame received':36} {'p50 ms':>8} {'p99 ms':>8} {'mean':>8}")
    for name, samples in rows.items():
        p50, p99 = percentile(samples, 0.5), percentile(samples, 0.99)
        print(f"{name:36} {p50:8.2f} {p99:8.2f} {statistics.mean(samples):8.2f}")
        result[name] = {"p50_ms": round(p50, 3), "p99_ms": round(p99, 3), "rounds": len(samples)}
    (HERE / "results" / "push_latency.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
