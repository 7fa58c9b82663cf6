"""Presence events: ``functions/__presence__.py`` hears when a user comes online (their first
connection) and goes offline (their last connection closed), in order, one at a time."""

from __future__ import annotations

import asyncio
import logging

from .cloud.delivery import LoopBridge
from .core.context import FunctionContext
from .core.failures import report_failure
from .core.invoke import Invoker
from .core.registry import PRESENCE, FunctionRegistry

__all__ = ["OFFLINE", "ONLINE", "PresenceEvents"]

log = logging.getLogger("laf_py")

ONLINE = "Presence:online"
OFFLINE = "Presence:offline"


class PresenceEvents:
    def __init__(self, registry: FunctionRegistry, invoker: Invoker, bridge: LoopBridge) -> None:
        self._registry = registry
        self._invoker = invoker
        self._bridge = bridge
        self._last: asyncio.Future[None] | None = None

    def __call__(self, user_id: str, online: bool) -> None:
        """Queue one event (on the loop thread); it runs after every event queued before it."""
        if self._registry.get(PRESENCE) is None:
            return
        self._last = self._bridge.track(
            asyncio.ensure_future(self._run(self._last, user_id, online))
        )

    async def _run(self, previous: asyncio.Future[None] | None, user_id: str, online: bool) -> None:
        if previous is not None:
            await previous
        function = self._registry.get(PRESENCE)
        if function is None or function.error is not None:
            return
        ctx = FunctionContext(ONLINE if online else OFFLINE, PRESENCE, params={"user_id": user_id})
        try:
            await self._invoker.call(function, ctx)
        except Exception as exc:
            report_failure(exc, PRESENCE, ctx.request_id)
