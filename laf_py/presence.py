"""Presence events: ``functions/__presence__.py`` hears when a user comes online (their first
connection) and goes offline (their last connection closed), in order, one at a time.

With Redis, "first" and "last" are decided for the whole cluster, and the cluster's record of
who is where is kept here too, whether or not there is a ``__presence__`` function.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from .bus import Bus
from .cloud.delivery import LoopBridge
from .core.context import FunctionContext
from .core.failures import report_failure
from .core.invoke import Invoker
from .core.registry import PRESENCE, FunctionRegistry

__all__ = ["OFFLINE", "ONLINE", "PresenceEvents"]

ONLINE = "Presence:online"
OFFLINE = "Presence:offline"


class PresenceEvents:
    def __init__(self, registry: FunctionRegistry, invoker: Invoker, bridge: LoopBridge) -> None:
        self._registry = registry
        self._invoker = invoker
        self._bridge = bridge
        self.bus: Bus | None = None
        self._last: asyncio.Future[None] | None = None

    def __call__(self, user_id: str, online: bool) -> None:
        """A user's first connection here opened, or their last one here closed."""
        self._queue(self._changed_here(user_id, online))

    def decided_by_cluster(self, user_id: str, online: bool) -> None:
        """The bus saw a change this node did not make: a dead node reaped with the user's
        last connections, or this node's users claimed again after it was taken for dead."""
        self._queue(self._run(user_id, online))

    def _queue(self, event: Coroutine[Any, Any, None]) -> None:
        if self.bus is None and self._registry.get(PRESENCE) is None:
            event.close()
            return
        self._last = self._bridge.track(asyncio.ensure_future(self._after(self._last, event)))

    async def _after(
        self, previous: asyncio.Future[None] | None, event: Coroutine[Any, Any, None]
    ) -> None:
        if previous is not None:
            await previous
        await event

    async def _changed_here(self, user_id: str, online: bool) -> None:
        if self.bus is not None:
            cluster_changed = await (self.bus.user_joined if online else self.bus.user_left)(
                user_id
            )
            if not cluster_changed:
                return  # the user is (still) connected on another node
        await self._run(user_id, online)

    async def _run(self, user_id: str, online: bool) -> None:
        function = self._registry.get(PRESENCE)
        if function is None or function.error is not None:
            return
        ctx = FunctionContext(ONLINE if online else OFFLINE, PRESENCE, params={"user_id": user_id})
        try:
            await self._invoker.call(function, ctx)
        except Exception as exc:
            report_failure(exc, PRESENCE, ctx.request_id, ctx=ctx)
