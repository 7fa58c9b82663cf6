"""Soak: echo every message with the number of messages this connection has sent so far."""

from laf_py import FunctionContext


async def main(ctx: FunctionContext) -> None:
    if ctx.method == "WebSocket:message":
        assert ctx.socket is not None
        seq = ctx.socket.state["seq"] = ctx.socket.state.get("seq", 0) + 1
        ctx.socket.send({"seq": seq, "echo": ctx.params["data"]})
