"""The smallest function: a greeting as plain text.

``GET /fn/hello?name=Ada`` -> ``Hello, Ada!`` (``text/plain``);
without ``name`` (or with an empty one) -> ``Hello, world!``.

Try it::

    curl 'localhost:8000/fn/hello?name=Ada'
"""

from laf_py import FunctionContext


def main(ctx: FunctionContext) -> str:
    name = ctx.query.get("name") or "world"
    return f"Hello, {name}!"
