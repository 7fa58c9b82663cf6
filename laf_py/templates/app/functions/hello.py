"""GET /fn/hello?name=Ada -> "Hello, Ada!" (plain text)."""

from laf_py import FunctionContext


async def main(ctx: FunctionContext) -> str:
    name = ctx.query.get("name") or "world"
    return f"Hello, {name}!"
