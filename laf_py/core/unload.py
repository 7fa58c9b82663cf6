"""``on_unload()``: how a function or helper module cleans up after itself.

A module may define ``on_unload()`` (``async def`` or plain ``def``, no arguments). It is called
once its module is gone from service: after hot reload has replaced it with the new version
(or its file was deleted), and at server shutdown. That is the place to cancel the tasks and
close the clients the module started. A plain ``def`` runs in a thread of its own, so one
that hangs past the time limit holds nothing up.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any

from .daemon import in_daemon_thread
from .loader import PACKAGE

__all__ = ["HOOK", "call_on_unload"]

log = logging.getLogger("laf_py")

HOOK = "on_unload"


async def call_on_unload(
    modules: Iterable[ModuleType],
    timeout: float,
    display: Callable[[ModuleType], str],
) -> None:
    """Call each module's ``on_unload()``, one after the other, each within ``timeout``
    seconds. Failures and overruns are logged naming the file; none is raised."""
    for module in modules:
        hook = module.__dict__.get(HOOK)
        if hook is None:
            continue
        if _imported_from_another_file(hook, module):
            continue  # `from laf_functions._db import on_unload`: _db's own, called for _db
        where = display(module)
        if not callable(hook):
            log.error("%s: on_unload must be a function, got %r", where, hook)
            continue
        limit: asyncio.Timeout | None = None
        try:
            async with asyncio.timeout(timeout) as limit:
                await _call(hook)
        except TimeoutError:
            if limit is not None and limit.expired():
                log.error("%s: on_unload() did not finish within %gs", where, timeout)
            else:
                log.exception("%s: on_unload() failed", where)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # we are being cancelled, not the hook failing
            log.error("%s: on_unload() raised CancelledError", where)
        except BaseException:  # SystemExit and friends from user code must not stop us
            log.exception("%s: on_unload() failed", where)


def _imported_from_another_file(hook: Any, module: ModuleType) -> bool:
    defined_in = getattr(hook, "__module__", None)
    return (
        isinstance(defined_in, str)
        and defined_in.startswith(PACKAGE + ".")
        and defined_in != module.__name__
    )


async def _call(hook: Callable[[], Any]) -> None:
    if inspect.iscoroutinefunction(hook):
        await hook()
        return
    result = await in_daemon_thread(hook, name="laf-unload")
    if inspect.isawaitable(result):
        await result
