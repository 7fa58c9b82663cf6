"""Run a coroutine's first step at once, and pay for the machinery of waiting only if it waits.

Most calls of a function end in their first step: nothing awaited, or only what was ready.
Such a call needs no timer; only one that suspends is handed back as an awaitable that goes on
exactly as ``await`` would have.

Use it only inside the task that will await the rest: the first step runs in the current
task, and whatever it ties to ``asyncio.current_task()`` (``asyncio.timeout``, say) must be the
task that goes on with it. (Starting a WebSocket message this way from Tornado's frame-reading
loop, to save the task Tornado makes for it, would break exactly that.)
"""

from __future__ import annotations

import types
from collections.abc import Awaitable, Coroutine, Generator
from typing import Any, Generic, TypeVar, cast

__all__ = ["Done", "start_now"]

T = TypeVar("T")


class Done(Generic[T]):
    """A coroutine that finished in its first step, with its result."""

    __slots__ = ("value",)

    def __init__(self, value: T) -> None:
        self.value = value


def start_now(work: Coroutine[Any, Any, T]) -> Done[T] | Awaitable[T]:
    """``Done(result)`` if ``work`` finished in its first step, else the rest of it, to await.
    What the first step raises is raised here."""
    try:
        waiting_on = work.send(None)
    except StopIteration as stop:
        return Done(stop.value)
    return _resume(work, waiting_on)


@types.coroutine
def _resume(work: Coroutine[Any, Any, T], waiting_on: Any) -> Generator[Any, Any, T]:
    """Hand the task what the coroutine is waiting on, as the coroutine would have, then go on
    as ``await`` would."""
    while True:
        try:
            yield waiting_on
        except GeneratorExit:  # closed unfinished: close the coroutine too
            work.close()
            raise
        except BaseException as exc:  # thrown in by the task (cancellation): pass it on
            try:
                waiting_on = work.throw(exc)
            except StopIteration as done:
                return cast(T, done.value)
            continue
        return (yield from work.__await__())
