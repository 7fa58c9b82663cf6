"""Every event of the WebSocket at /__websocket__, in Laf's style: one function, and
ctx.method says which event it is.

A client that connects with a token (?token=... from cloud.get_token) is that token's user;
anyone else becomes a guest with a random id. Either way the socket is bound to its user, so
an HTTP function can reach them on every device with cloud.sockets.send_to_user (see push.py).
"""

import secrets

from laf_py import FunctionContext


async def main(ctx: FunctionContext) -> None:
    socket = ctx.socket
    assert socket is not None  # always set for WebSocket events

    if ctx.method == "WebSocket:connection":
        if socket.user_id is None:
            socket.user_id = "guest-" + secrets.token_hex(4)
        socket.send({"type": "welcome", "user": socket.user_id})

    elif ctx.method == "WebSocket:message":
        socket.send({"type": "echo", "data": ctx.params["data"]})

    elif ctx.method == "WebSocket:close":
        pass  # forget here what the connection event stored, if anything
