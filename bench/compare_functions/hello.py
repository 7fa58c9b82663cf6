"""Bench (compare.py): ``GET /fn/hello`` -> ``Hello, world!``."""

from laf_py import FunctionContext


async def main(ctx: FunctionContext) -> str:
    return "Hello, world!"
