"""Bench (compare.py): ``GET /fn/hello`` -> ``{"message": "Hello, world!"}``, a small dict from
an ``async def``, as every baseline's ``/hello``."""

from laf_py import FunctionContext


async def main(ctx: FunctionContext) -> dict[str, str]:
    return {"message": "Hello, world!"}
