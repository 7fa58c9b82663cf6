"""HTTP echo: shows what a function sees of the request.

Any method. Returns JSON::

    {"method": "POST", "query": {"a": "1"}, "body": {"x": 1}, "request_id": "..."}

``body`` is the parsed body as the function gets it: JSON -> object/array,
form -> object, text -> string, none -> null. A binary body is not JSON, so it is
shown as ``"<bytes: N bytes>"``. ``request_id`` equals the ``x-request-id``
response header.

Try it::

    curl -X POST 'localhost:8000/fn/echo?a=1' -H 'content-type: application/json' -d '{"x": 1}'
    curl -X POST localhost:8000/fn/echo -d 'name=Ada'
"""

from typing import Any

from laf_py import FunctionContext


async def main(ctx: FunctionContext) -> dict[str, Any]:
    body = ctx.body
    if isinstance(body, bytes | bytearray):
        body = f"<bytes: {len(body)} bytes>"
    return {
        "method": ctx.method,
        "query": dict(ctx.query),
        "body": body,
        "request_id": ctx.request_id,
    }
