"""A greeting, and Less's "POST /hello" WebSocket demo.

``GET /fn/hello?name=Ada`` -> ``Hello, Ada!`` (``text/plain``); without ``name`` (or with an
empty one) -> ``Hello, world!``.

``POST /fn/hello`` -> reads the connection id that ``__websocket__`` saved in ``cloud.kv``
and publishes ``Hello from POST /hello`` to it: 204 when delivered, 404 when no socket is
connected.

Try it::

    curl 'localhost:8000/fn/hello?name=Ada'
    wscat -c ws://localhost:8000/__websocket__      # in another terminal
    curl -X POST localhost:8000/fn/hello             # the wscat window receives the message
"""

from laf_py import FunctionContext, HTTPError, cloud

LESS_KEY = "DEMO_SOCKET_CONNECTION_ID"  # written by __websocket__ on every connection


async def main(ctx: FunctionContext) -> str | None:
    if ctx.method != "POST":
        name = ctx.query.get("name") or "world"
        return f"Hello, {name}!"

    connection_id = await cloud.kv.get(LESS_KEY)
    delivered = 0
    if connection_id is not None:
        delivered = await cloud.sockets.publish("Hello from POST /hello", [connection_id])
    if not delivered:
        raise HTTPError(404, "no WebSocket client is connected")
    return None  # 204, as in Less
