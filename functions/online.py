"""``GET /fn/online`` -> ``{"users": [<ids of users with at least one connection>]}``."""

from laf_py import FunctionContext, cloud


async def main(ctx: FunctionContext) -> dict[str, list[str]]:
    return {"users": sorted(await cloud.sockets.online_users())}
