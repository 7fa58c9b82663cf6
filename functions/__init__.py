"""Start-up hook: ``main(ctx)`` runs once per process before traffic is served.

``ctx.method`` is ``"INIT"``. It records ``cloud.shared["started_at"]`` (UTC, ISO
8601) and makes sure ``cloud.shared["wsMap"]`` (the ``userID -> sockets`` map of
``__websocket__.py``) exists. Not reachable over HTTP: ``/fn/__init__`` is 404.
See it with ``curl -H "x-admin-token: $LAF_ADMIN_TOKEN" localhost:8000/fn/admin/stats``.
"""

from datetime import UTC, datetime

from laf_py import FunctionContext, cloud


def main(ctx: FunctionContext) -> None:
    cloud.shared.set("started_at", datetime.now(UTC).isoformat())
    if not cloud.shared.has("wsMap"):
        cloud.shared.set("wsMap", {})
