"""Push a message to every connection of one WebSocket user, by userID (Laf's "push" demo).

``__websocket__.py`` keeps ``userID -> sockets`` in ``cloud.shared["wsMap"]``. A userID
is either random (one connection, anonymous) or the user of a token from ``/fn/login``,
who may be connected from several devices at once. This function finds them in this
order:

1. A token user: ``cloud.sockets.send_to_user`` reaches every device of theirs, on this
   worker (written directly) and on every other worker and machine (through Redis).
2. Laf's way: the ``Socket`` objects kept in ``cloud.shared["wsMap"]`` of this process.
3. ``cloud.shared`` belongs to one process, so a random userID connected to another
   worker or machine is found by the socket id that ``__websocket__`` also keeps in
   ``cloud.kv`` (under ``ws/<userID>``); ``cloud.sockets.publish`` delivers through Redis.

* ``POST /fn/push`` with JSON ``{"userID": "<id>", "message": <any JSON>}``
  (or a form), or ``GET /fn/push?userID=<id>&message=<text>``. Body fields
  win over query fields.
* A string message arrives as a text frame, an object or array as a JSON text
  frame, a number or bool as its JSON text (``42``, ``true``).
* 200 ``{"delivered": <connections reached>}`` when sent (``0`` if they closed meanwhile);
  400 ``{"error": "userID and message are required", ...}`` when a field is
  missing (``null`` counts as missing, ``userID`` must be a non-empty string);
  404 ``{"error": "user <id> is not connected", ...}`` when the userID has no connection.

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

    # 1. A token user, maybe on several devices and workers: cloud.sockets knows them all.
    #    (It writes this process's sockets too, so they are not sent to again below.)
    if await cloud.sockets.is_online(user_id):
        return {"delivered": await cloud.sockets.send_to_user(user_id, message)}

    # 2. Laf's way: the Socket objects kept in this process.
    sockets = (cloud.shared.get("wsMap") or {}).get(user_id)
    if sockets:
        sent = [socket.send(message) for socket in sockets]  # each send acts at once
        return {"delivered": sum([await delivery for delivery in sent])}

    # 3. A random userID connected to another worker or machine?
    socket_id = await cloud.kv.get(f"ws/{user_id}")
    if socket_id is None:
        raise HTTPError(404, f"user {user_id} is not connected")
    return {"delivered": await cloud.sockets.publish(message, [socket_id])}
