"""Presence: runs when a user's first connection opens and when their last one closes.

``ctx.method`` is ``"Presence:online"`` or ``"Presence:offline"`` and ``ctx.params`` is
``{"user_id": "<id>"}``. Only sockets bound to a user count (a token's ``uid``/``sub``, or
``cloud.sockets.bind_user``). Here every connection hears ``{"type": "presence",
"user": "<id>", "online": <bool>}``, and the last time a user was seen goes to ``cloud.kv``.

``GET /fn/online`` lists who is online.
"""

import time

from laf_py import FunctionContext, cloud


async def main(ctx: FunctionContext) -> None:
    user_id = ctx.params["user_id"]
    online = ctx.method == "Presence:online"
    cloud.sockets.broadcast({"type": "presence", "user": user_id, "online": online})
    if not online:
        await cloud.kv.set(f"last_seen/{user_id}", time.time())
