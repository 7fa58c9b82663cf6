"""The slow half of ``export.py``: runs each queued export, then tells its user on every
device ``{"type": "export_ready", "url": ...}``. Queue only: every HTTP method gets 405."""

import asyncio
from typing import Any

from laf_py import FunctionContext, cloud

methods: list[str] = []
timeout = 30


async def main(ctx: FunctionContext) -> dict[str, Any]:
    await asyncio.sleep(float(ctx.body.get("seconds", 3)))  # the slow work
    url = f"/files/{ctx.params['job_id']}.{ctx.body['format']}"
    assert ctx.user is not None  # export.py only queues for a logged-in user
    await cloud.sockets.send_to_user(ctx.user["uid"], {"type": "export_ready", "url": url})
    return {"url": url}  # kept as the job's result
