"""Soak: ``POST /fn/broadcast?seq=N`` sends a small frame to every socket; returns the count."""

from laf_py import FunctionContext, cloud


async def main(ctx: FunctionContext) -> dict[str, int]:
    seq = int(ctx.query.get("seq", "0"))
    count = await cloud.sockets.broadcast({"type": "broadcast", "seq": seq})
    return {"count": count}
