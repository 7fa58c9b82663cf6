"""Post a system message from HTTP to the members of one chat room.

``POST /fn/chat/system`` with JSON ``{"room": "python", "text": "maintenance at 5"}``
sends the JSON text frame ``{"type": "chat", "from": "system", "room": "python",
"text": "maintenance at 5"}`` to every socket in the room, on every node (sockets join
rooms with ``{"type": "join", "room": ...}``, see ``__websocket__.py``), and returns
``{"delivered": <number of sockets reached>, "members": <room members, every node>}``.
400 when ``room`` is not a non-empty string or ``text`` not a string; other methods -> 405.

Try it (with a ``wscat`` that sent ``{"type": "join", "room": "python"}``)::

    curl -X POST localhost:8000/fn/chat/system -H 'content-type: application/json' \\
         -d '{"room": "python", "text": "maintenance at 5"}'
"""

from typing import Any

from laf_py import FunctionContext, HTTPError, cloud

methods = ["POST"]


async def main(ctx: FunctionContext) -> dict[str, Any]:
    body = ctx.body if isinstance(ctx.body, dict) else {}
    room, text = body.get("room"), body.get("text")
    if not isinstance(room, str) or not room:
        raise HTTPError(400, "room (a non-empty string) is required")
    if not isinstance(text, str):
        raise HTTPError(400, "text (a string) is required")
    message = {"type": "chat", "from": "system", "room": room, "text": text}
    delivered = await cloud.sockets.send_to_room(room, message)
    return {"delivered": delivered, "members": len(await cloud.sockets.room_members(room))}
