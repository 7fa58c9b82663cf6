"""Interceptor: wraps every HTTP call and every WebSocket connection.

Functions under ``admin/`` need the header ``x-admin-token`` equal to the
environment variable ``LAF_ADMIN_TOKEN``; otherwise (or when that variable is
unset) the call is rejected with 403 ``{"error": "forbidden", ...}``.
Everything else passes straight through to ``next``.

Try it::

    LAF_ADMIN_TOKEN=s3cret laf-py serve
    curl -i localhost:8000/fn/admin/stats                           # 403
    curl -H 'x-admin-token: s3cret' localhost:8000/fn/admin/stats   # 200
"""

import hmac
import os
from collections.abc import Awaitable, Callable
from typing import Any

from laf_py import FunctionContext, HTTPError


async def main(ctx: FunctionContext, next: Callable[[FunctionContext], Awaitable[Any]]) -> Any:
    if ctx.function_name.startswith("admin/"):
        expected = os.environ.get("LAF_ADMIN_TOKEN", "")
        given = ctx.headers.get("x-admin-token", "")
        if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
            raise HTTPError(403, "forbidden")
    return await next(ctx)
