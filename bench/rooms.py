"""send_to_room against broadcast, same server, same sockets, same run.

    python bench/rooms.py [--connections 5000] [--rounds 15] [--clients 2] [--quick]

Starts ``laf-py serve`` on bench/compare_functions (as compare.py does) and opens
``--connections`` WebSockets with ``?room=all``, so every socket is in room ``all``: a
``send_to_room("all", ...)`` and a ``broadcast(...)`` then reach exactly the same sockets.
Each round makes one of each, the order alternating, through an HTTP call
(``/fn/room``, ``/fn/broadcast``), and measures

- server ms: the time the call took in the server (``time.perf_counter`` around it in the
  function: the frame encoded and written to every socket);
- received ms: from sending the HTTP call until the last socket has the frame.

Prints the medians over the rounds (after one warm-up round) and the median of the per-round
ratios room / broadcast. A benchmark, not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from compare import LAF_PY, Bench, Server, http_get, raise_fd_limit  # noqa: E402
from loadgen import Pool, share  # noqa: E402

monotonic = time.monotonic
PATHS = {"broadcast": "/fn/broadcast", "room": "/fn/room?room=all"}


def one(server: Server, bench: Bench, kind: str, tag: str, count: int) -> tuple[float, float]:
    """One delivery of ``kind``: (server ms, ms until every socket had it)."""
    pool = bench.pool
    pool.call([("arm",)] * bench.size, "armed", 30, server.alive)
    path = PATHS[kind]
    t0 = monotonic()
    status, body = http_get(server.port, f"{path}{'&' if '?' in path else '?'}msg={tag}")
    if status != 200:
        raise RuntimeError(f"{kind}: {status} {body[:200]!r}")
    reply = json.loads(body)
    if reply["count"] != count:
        raise RuntimeError(f"{kind} reached {reply['count']} of {count}")
    replies = pool.receive("received", 60, server.alive)
    return float(reply["ms"]), 1000 * (max(r[1] for r in replies) - t0)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--clients", type=int, default=2, help="generator processes")
    parser.add_argument("--quick", action="store_true", help="50 sockets, 3 rounds")
    parser.add_argument("--laf-event-loop", default="auto")
    args = parser.parse_args()
    if args.quick:
        args.connections, args.rounds = 50, 3
    args.laf_log_level, args.baseline_loop = "warning", "asyncio"  # for compare.Server
    raise_fd_limit(args.connections * 2 + 1000)

    pool = Pool(args.clients)
    bench = Bench(pool, args)
    times: dict[str, list[tuple[float, float]]] = {"broadcast": [], "room": []}
    try:
        with tempfile.TemporaryDirectory() as tmp, Server(LAF_PY, args, Path(tmp)) as server:
            commands = [
                ("open", "127.0.0.1", server.port, "/__websocket__?room=all", share_of)
                for share_of in (share(args.connections, bench.size, i) for i in range(bench.size))
            ]
            replies = pool.call(commands, "opened", 60 + args.connections / 50, server.alive)
            opened = sum(r[1] for r in replies)
            if opened != args.connections:
                raise RuntimeError(f"opened {opened} of {args.connections}")
            for round_ in range(args.rounds + 1):  # round 0 is a warm-up
                order = ("broadcast", "room") if round_ % 2 else ("room", "broadcast")
                for kind in order:
                    measured = one(server, bench, kind, f"{kind}{round_}", args.connections)
                    if round_:
                        times[kind].append(measured)
                    time.sleep(0.2)
            bench.close(server)
    finally:
        pool.stop()

    def median(kind: str, index: int) -> float:
        return statistics.median(t[index] for t in times[kind])

    def ratio(index: int) -> float:
        pairs = zip(times["room"], times["broadcast"], strict=True)
        return statistics.median(r[index] / b[index] for r, b in pairs)

    print(f"{args.connections} sockets, all in one room; medians of {args.rounds} rounds")
    print(f"{'':24}{'broadcast':>12}{'send_to_room':>14}{'room / broadcast':>18}")
    for index, label in enumerate(("server ms", "all received ms")):
        b, r = median("broadcast", index), median("room", index)
        print(f"{label:24}{b:12.2f}{r:14.2f}{ratio(index):18.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
