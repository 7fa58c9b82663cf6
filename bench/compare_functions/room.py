"""Bench (rooms.py): ``GET /fn/room?msg=...&room=...`` sends ``msg`` to the members of the room
(sockets join one with ``?room=`` when they connect). ``ms`` is the time the call took in the
server, the frame written to every local member."""

import time

from laf_py import FunctionContext, cloud


async def main(ctx: FunctionContext) -> dict[str, float]:
    started = time.perf_counter()
    delivery = cloud.sockets.send_to_room(ctx.query.get("room", "all"), ctx.query.get("msg", "r"))
    elapsed = time.perf_counter() - started
    return {"count": await delivery, "ms": 1000 * elapsed}
