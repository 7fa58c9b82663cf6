"""POST /fn/push {"user": "<id>", "message": ...} sends the message to every connection of
that user and answers {"delivered": <connections reached>}; 404 when the user has none."""

from typing import Any

from laf_py import FunctionContext, HTTPError, cloud

methods = ["POST"]


async def main(ctx: FunctionContext) -> dict[str, Any]:
    body = ctx.body if isinstance(ctx.body, dict) else {}
    user, message = body.get("user"), body.get("message")
    if not isinstance(user, str) or not user or message is None:
        raise HTTPError(400, 'send {"user": "<id>", "message": ...}')
    delivered = await cloud.sockets.send_to_user(user, {"type": "push", "message": message})
    if not delivered:
        raise HTTPError(404, f"user {user} is not connected")
    return {"delivered": delivered}
