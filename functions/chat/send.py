"""Post a chat message from HTTP to every WebSocket connection.

``POST /fn/chat/send`` with JSON ``{"text": "hi"}`` sends the JSON text frame
``{"type": "chat", "from": "http", "text": "hi"}`` to every open socket (the
same shape ``__websocket__.py`` uses for chat) and returns
``{"delivered": <number of sockets reached>}``.
400 ``{"error": "text (a string) is required", ...}`` when ``text`` is missing or
not a string; other methods -> 405.

Try it (with a couple of ``wscat -c ws://localhost:8000/__websocket__`` open)::

    curl -X POST localhost:8000/fn/chat/send -H 'content-type: application/json' \\
         -d '{"text": "hello everyone"}'
"""

from laf_py import FunctionContext, HTTPError, cloud

methods = ["POST"]


async def main(ctx: FunctionContext) -> dict[str, int]:
    text = ctx.body.get("text") if isinstance(ctx.body, dict) else None
    if not isinstance(text, str):
        raise HTTPError(400, "text (a string) is required")
    delivered = await cloud.sockets.broadcast({"type": "chat", "from": "http", "text": text})
    return {"delivered": delivered}
