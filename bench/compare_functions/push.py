"""Bench (compare.py): ``POST /fn/push?id=<socket id>`` with a text body sends it to that socket,
on this node or, through Redis, on another."""

from laf_py import FunctionContext, cloud


async def main(ctx: FunctionContext) -> dict[str, int]:
    delivered = await cloud.sockets.publish(ctx.body, [ctx.query["id"]])
    return {"delivered": delivered}
