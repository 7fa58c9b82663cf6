"""Server stats, guarded by ``__interceptor__.py`` (needs ``x-admin-token``).

``GET /fn/admin/stats`` -> ``{"started_at": "<iso>", "sockets": <open sockets>,
"users": [<userIDs in wsMap>]}``; 403 without the right token.

Try it::

    curl -H "x-admin-token: $LAF_ADMIN_TOKEN" localhost:8000/fn/admin/stats
"""

from typing import Any

from laf_py import FunctionContext, cloud

methods = ["GET"]


async def main(ctx: FunctionContext) -> dict[str, Any]:
    return {
        "started_at": cloud.shared.get("started_at"),
        "sockets": len(cloud.sockets),
        "users": sorted(cloud.shared.get("wsMap") or {}),
    }
