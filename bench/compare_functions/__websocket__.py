"""Bench (compare.py): send every message back to the socket it came from. A connection opened
with ``?hello=1`` (the push phases) is first sent its own id; one opened with ``?room=<name>``
(bench/rooms.py) joins that room."""

from laf_py import FunctionContext, cloud


async def main(ctx: FunctionContext) -> None:
    assert ctx.socket is not None
    if ctx.method == "WebSocket:message":
        ctx.socket.send(ctx.params["data"])
    elif ctx.method == "WebSocket:connection":
        if "hello" in ctx.query:
            ctx.socket.send(ctx.socket.id)
        if "room" in ctx.query:  # bench/rooms.py
            cloud.sockets.join(ctx.socket, ctx.query["room"])
