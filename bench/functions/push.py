"""Bench: ``POST /fn/push?id=<socket id>`` with a text body publishes it to that socket."""

from laf_py import FunctionContext, cloud


async def main(ctx: FunctionContext) -> dict[str, int]:
    delivered = await cloud.sockets.publish(ctx.body, [ctx.query["id"]])
    return {"delivered": delivered}
