"""Bench (compare.py): ``GET /fn/broadcast?msg=...`` sends ``msg`` to every socket."""

from laf_py import FunctionContext, cloud


async def main(ctx: FunctionContext) -> dict[str, int]:
    count = await cloud.sockets.broadcast(ctx.query.get("msg", "broadcast"))
    return {"count": count}
