"""Every minute, the server's time to the sockets in the "clock" room (scheduled function).

Sockets join with ``{"type": "join", "room": "clock"}`` (see ``__websocket__.py``) and get
``{"type": "clock", "time": "2026-12-02T14:05:00+00:00"}`` at the top of each minute, once
per minute for the whole deployment however many nodes run. ``POST /fn/clock`` sends one
now (the same code, from HTTP) and answers ``{"delivered": <sockets reached>}``.
"""

from datetime import UTC, datetime
from typing import Any

from laf_py import FunctionContext, cloud

schedule = "* * * * *"  # every minute, UTC
methods = ["POST"]


async def main(ctx: FunctionContext) -> dict[str, Any]:
    now = ctx.params.get("scheduled_at") or datetime.now(UTC)
    message = {"type": "clock", "time": now.isoformat(timespec="seconds")}
    return {"delivered": await cloud.sockets.send_to_room("clock", message)}
