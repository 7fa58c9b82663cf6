"""Bench (compare.py): ``GET /fn/broadcast?msg=...`` sends ``msg`` to every socket."""

import time

from laf_py import FunctionContext, cloud


async def main(ctx: FunctionContext) -> dict[str, float]:
    started = time.perf_counter()  # the time in the server, for bench/rooms.py
    delivery = cloud.sockets.broadcast(ctx.query.get("msg", "broadcast"))
    elapsed = time.perf_counter() - started
    return {"count": await delivery, "ms": 1000 * elapsed}
