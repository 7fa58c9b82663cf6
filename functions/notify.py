"""Notify a user on every device they have connected: queue-run's ``socket.to(user).send``.

``POST /fn/notify`` with ``Authorization: Bearer <token from /fn/login>`` and
``{"user": "bob", "message": "lunch?"}`` sends
``{"type": "notification", "from": "<caller>", "message": "lunch?"}`` to each of bob's
connections and answers ``{"delivered": <connections reached>, "online": <bool>}``.

401 without a valid token; 400 without ``user`` and ``message``.

Try it::

    curl -X POST localhost:8000/fn/notify -H "authorization: Bearer $TOKEN" \\
         -H 'content-type: application/json' -d '{"user": "alice", "message": "hi"}'
"""

from typing import Any

from laf_py import FunctionContext, HTTPError, cloud

methods = ["POST"]


async def main(ctx: FunctionContext) -> dict[str, Any]:
    if ctx.user is None:
        raise HTTPError(401, "log in first: POST /fn/login, then send the token as a Bearer")
    body = ctx.body if isinstance(ctx.body, dict) else {}
    user, message = body.get("user"), body.get("message")
    if not isinstance(user, str) or not user or message is None:
        raise HTTPError(400, 'send {"user": "<name>", "message": ...}')
    sender = ctx.user.get("uid") or ctx.user.get("sub")
    notification = {"type": "notification", "from": sender, "message": message}
    delivered = await cloud.sockets.send_to_user(user, notification)
    return {"delivered": delivered, "online": await cloud.sockets.is_online(user)}
