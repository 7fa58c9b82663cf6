"""Bench: tell each client its socket id on connect; nothing else."""

from laf_py import FunctionContext


async def main(ctx: FunctionContext) -> None:
    if ctx.method == "WebSocket:connection":
        assert ctx.socket is not None
        ctx.socket.send(ctx.socket.id)
