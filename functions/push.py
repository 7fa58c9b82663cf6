"""Push a message to one WebSocket user by userID (Laf's "push" demo).

``__websocket__.py`` keeps ``userID -> socket`` in ``cloud.shared["wsMap"]``;
this function looks the user up there and sends to that socket. ``cloud.shared``
belongs to one process, so with several workers or machines the user may be
connected elsewhere: then the socket id that ``__websocket__`` also keeps in
``cloud.kv`` (under ``ws/<userID>``) finds it, and ``cloud.sockets.publish``
delivers through Redis.

* ``POST /fn/push`` with JSON ``{"userID": "<id>", "message": <any JSON>}``
  (or a form), or ``GET /fn/push?userID=<id>&message=<text>``. Body fields
  win over query fields.
* A string message arrives as a text frame, an object or array as a JSON text
  frame, a number or bool as its JSON text (``42``, ``true``).
* 200 ``{"delivered": 1}`` when sent (``0`` if the socket closed meanwhile);
  400 ``{"error": "userID and message are required", ...}`` when a field is
  missing (``null`` counts as missing, ``userID`` must be a non-empty string);
  404 ``{"error": "user <id> is not connected", ...}`` when the userID is unknown.

Try it (take the userID from the wscat greeting)::

    curl -X POST localhost:8000/fn/push -H 'content-type: application/json' \\
         -d '{"userID": "3f9c0a1b2c4d", "message": {"hello": "from HTTP"}}'
    curl 'localhost:8000/fn/push?userID=3f9c0a1b2c4d&message=hi'
"""

import json
from typing import Any

from laf_py import FunctionContext, HTTPError, cloud

methods = ["GET", "POST"]


async def main(ctx: FunctionContext) -> dict[str, int]:
    # The query string, overridden by a JSON or form body when there is one.
    body: Any = ctx.body
    fields = {**ctx.query, **(body if isinstance(body, dict) else {})}
    user_id, message = fields.get("userID"), fields.get("message")
    if not isinstance(user_id, str) or not user_id or message is None:
        raise HTTPError(400, "userID and message are required")

    if not isinstance(message, str | dict | list):
        message = json.dumps(message)

    socket = (cloud.shared.get("wsMap") or {}).get(user_id)
    if socket is not None:  # Laf's way: the Socket object, kept in this process
        return {"delivered": int(await socket.send(message))}
    socket_id = await cloud.kv.get(f"ws/{user_id}")  # on another worker or machine?
    if socket_id is None:
        raise HTTPError(404, f"user {user_id} is not connected")
    return {"delivered": await cloud.sockets.publish(message, [socket_id])}
