"""Bench (compare.py): send every message back to the socket it came from."""

from laf_py import FunctionContext


async def main(ctx: FunctionContext) -> None:
    if ctx.method == "WebSocket:message":
        assert ctx.socket is not None
        ctx.socket.send(ctx.params["data"])
