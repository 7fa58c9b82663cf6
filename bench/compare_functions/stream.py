"""Bench (compare.py): ``GET /fn/stream`` -> 10 chunks of 1 KiB, each written and flushed."""

from collections.abc import AsyncIterator

from laf_py import FunctionContext

CHUNK = b"0123456789abcde\n" * 64  # 1 KiB


async def main(ctx: FunctionContext) -> AsyncIterator[bytes]:
    for _ in range(10):
        yield CHUNK
