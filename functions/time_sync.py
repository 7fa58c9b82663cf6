"""A synchronous function: a plain ``def main`` runs in a thread pool.

Blocking code (``time.sleep``, a blocking driver, heavy CPU) in a plain ``def``
does not stall other requests or WebSocket connections, because laf-py calls it
off the event loop.

``GET /fn/time_sync`` -> ``{"now": "2024-05-01T12:00:00.123456+00:00"}``
(the current UTC time, ISO 8601).

Try it::

    curl localhost:8000/fn/time_sync
"""

from datetime import UTC, datetime

from laf_py import FunctionContext


def main(ctx: FunctionContext) -> dict[str, str]:
    return {"now": datetime.now(UTC).isoformat()}
