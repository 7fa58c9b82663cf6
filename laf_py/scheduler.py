"""Scheduled functions: ``main(ctx)`` with ``ctx.method == "SCHEDULE"`` at the times a file's
``schedule`` setting names (:mod:`laf_py.core.schedule`).

Every process keeps one timer task per scheduled function. At each tick it asks its
:class:`TickClaims` whether to run: without Redis the process owns every tick
(:class:`LocalTicks`); with Redis (``--workers N``, several machines) the first node to claim a
tick runs it and the others let it go (:class:`laf_py.bus.ticks.RedisTicks`), so a tick runs
once for the whole deployment.

- No overlap: a tick that comes while the previous run of that function is still going is
  skipped, and logged.
- Missed ticks are skipped, never replayed: after a pause (the server was down, the event loop
  was blocked) the next run is at the next tick from now.
- Runs go through the invoker like any call: the function's ``timeout`` (or ``--timeout``), a
  new request id, plain ``def`` in the thread pool; they do not pass the interceptor, which
  guards HTTP calls. Each run logs one line with its request id and outcome; a failure logs
  its traceback like a failed HTTP call.
- Hot reload: :meth:`Scheduler.sync` starts, restarts (the setting changed) and stops timers
  to match the functions loaded; a tick always runs the function's current code.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

from .core.context import SCHEDULE_METHOD, FunctionContext
from .core.failures import report_failure
from .core.invoke import Invoker
from .core.registry import RESERVED, Function, FunctionRegistry
from .core.schedule import Schedule

__all__ = ["Claim", "LocalTicks", "Scheduler", "TickClaims"]

log = logging.getLogger("laf_py")

CLAIM_TIMEOUT = 5.0  # a claim Redis has not answered by then: the tick is skipped
RELEASE_TIMEOUT = 1.0  # giving back the "running" marker; it expires on its own anyway
STOP_MINIMUM = 0.25  # what runs still get at shutdown once the grace is gone


class Claim(enum.Enum):
    RUN = "run"  # this process runs the tick
    TAKEN = "taken"  # another process claimed it (or a later tick)
    BUSY = "busy"  # skipped for everyone: the previous run is still going


class TickClaims(Protocol):
    """Who runs each tick, and the marker that keeps runs of one function from overlapping."""

    lease: float | None  # seconds the "running" marker lasts unless renewed; None: forever

    async def claim(self, name: str, tick: float) -> Claim: ...
    async def keep(self, name: str, tick: float) -> bool: ...
    async def finished(self, name: str, tick: float) -> None: ...
    async def close(self) -> None: ...


class LocalTicks:
    """One process owns every tick (no Redis)."""

    lease: float | None = None

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._running: set[str] = set()

    async def claim(self, name: str, tick: float) -> Claim:
        if tick <= self._last.get(name, float("-inf")):
            return Claim.TAKEN  # the clock went back: that tick has run
        self._last[name] = tick
        if name in self._running:
            return Claim.BUSY
        self._running.add(name)
        return Claim.RUN

    async def keep(self, name: str, tick: float) -> bool:
        return name in self._running

    async def finished(self, name: str, tick: float) -> None:
        self._running.discard(name)

    async def close(self) -> None:
        pass


class Scheduler:
    """The timers of one process's scheduled functions, and their runs in progress."""

    def __init__(
        self,
        registry: FunctionRegistry,
        invoker: Invoker,
        claims: TickClaims,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._registry = registry
        self._invoker = invoker
        self._claims = claims
        self._clock = clock
        self._timers: dict[str, tuple[Schedule, asyncio.Task[None]]] = {}
        self._runs: set[asyncio.Task[None]] = set()
        self._stopped = False

    @property
    def scheduled(self) -> dict[str, Schedule]:
        """The functions with a running timer, and their schedules."""
        return {name: schedule for name, (schedule, _) in self._timers.items()}

    def sync(self) -> None:
        """Start, restart and stop timers to match the functions loaded now."""
        if self._stopped:
            return
        wanted = {
            f.name: f.schedule
            for f in self._registry.functions()
            if f.schedule is not None and f.error is None and f.name not in RESERVED
        }
        for name, (schedule, task) in list(self._timers.items()):
            if wanted.get(name) != schedule:
                task.cancel()
                del self._timers[name]
                if name not in wanted:
                    log.info("%r is no longer scheduled", name)
        for name, schedule in sorted(wanted.items()):
            if name not in self._timers:
                log.info("scheduled %r %s", name, schedule)
                task = asyncio.create_task(self._timer(name, schedule), name=f"laf-py timer {name}")
                self._timers[name] = (schedule, task)

    def pause(self) -> None:
        """Start no more runs (shutdown has begun); runs in progress go on."""
        self._stopped = True
        for _, task in self._timers.values():
            task.cancel()
        self._timers.clear()

    async def stop(self, timeout: float) -> None:
        """Stop the timers, give runs in progress ``timeout`` seconds, then cancel them.
        Returns within about ``timeout`` + 2 * STOP_MINIMUM."""
        self.pause()
        runs = set(self._runs)
        if runs:
            _, late = await asyncio.wait(runs, timeout=max(timeout, STOP_MINIMUM))
            if late:
                log.warning(
                    "cancelling %d scheduled run(s) still going at shutdown: %s",
                    len(late),
                    ", ".join(sorted(t.get_name() for t in late)),
                )
                for task in late:
                    task.cancel()
                await asyncio.wait(late, timeout=STOP_MINIMUM)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._claims.close(), STOP_MINIMUM)

    async def _timer(self, name: str, schedule: Schedule) -> None:
        now = self._clock()
        while True:
            tick = schedule.next_after(now)
            if tick is None:
                log.warning("%r: its schedule %s matches no later date", name, schedule)
                return
            while (wait := tick - self._clock()) > 0:
                await asyncio.sleep(wait)
            # The claim and the run go on in a task of their own: a timer stopped by a
            # reload never cuts a claimed tick short, and shutdown waits for both alike.
            task = asyncio.create_task(self._tick(name, tick), name=f"{name} at {_shown(tick)}")
            self._runs.add(task)
            task.add_done_callback(self._runs.discard)
            # From now, not from the tick: ticks missed meanwhile are skipped.
            now = max(tick, self._clock())

    async def _tick(self, name: str, tick: float) -> None:
        function = self._registry.get(name)
        if function is None or function.error is not None or function.schedule is None:
            return  # removed or broken meanwhile; sync() stops this timer
        try:
            claim = await asyncio.wait_for(self._claims.claim(name, tick), CLAIM_TIMEOUT)
        except TimeoutError:
            log.warning("%r skipped its run at %s: no answer to its claim", name, _shown(tick))
            return
        except Exception:
            # Cannot tell whether another node runs it: skip (RedisTicks logs why, once).
            log.debug("%r: claiming its run at %s failed", name, _shown(tick), exc_info=True)
            return
        if claim is Claim.BUSY:
            log.info(
                "%r skipped its run at %s: the previous run is still going", name, _shown(tick)
            )
        elif claim is Claim.RUN:
            if self._stopped:  # shutdown began while Redis answered
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._claims.finished(name, tick), RELEASE_TIMEOUT)
                return
            await self._run(function, tick)

    async def run_now(self, name: str) -> tuple[str, str]:
        """Run a scheduled function once, now, outside its schedule (tests, the admin API):
        ``ctx.method == "SCHEDULE"`` as at a tick, but no claim, so it may overlap a tick's
        run. Returns (request id, outcome: done or failed). LookupError for a name that is
        not a loaded scheduled function."""
        function = self._registry.get(name) if name not in RESERVED else None
        if function is None or function.error is not None or function.schedule is None:
            state = "failed to load" if function and function.error else "has no schedule"
            raise LookupError(
                f"{name!r} is not a scheduled function" if function is None else f"{name!r} {state}"
            )
        return await self._run(function, time.time(), claimed=False)

    async def _run(self, function: Function, tick: float, claimed: bool = True) -> tuple[str, str]:
        name = function.name
        scheduled_at = datetime.fromtimestamp(tick, UTC)
        ctx = FunctionContext(SCHEDULE_METHOD, name, params={"scheduled_at": scheduled_at})
        loop = asyncio.get_running_loop()
        started = loop.time()
        keeper = None
        if claimed and self._claims.lease is not None:
            keeper = asyncio.create_task(self._keep(name, tick, self._claims.lease))
        outcome = "done"
        try:
            await self._invoker.call(function, ctx)
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except Exception as exc:
            report_failure(exc, name, ctx.request_id, ctx=ctx)
            outcome = "failed"
        finally:
            if keeper is not None:
                keeper.cancel()
            if claimed:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._claims.finished(name, tick), RELEASE_TIMEOUT)
            log.info(
                "SCHEDULE %s at %s %s in %.2fms (request %s)",
                name,
                _shown(tick),
                outcome,
                1000.0 * (loop.time() - started),
                ctx.request_id,
            )
        return ctx.request_id, outcome

    async def _keep(self, name: str, tick: float, lease: float) -> None:
        """Renew the "running" marker while the run goes on, so that only a dead holder's
        marker expires."""
        warned = False
        while True:
            await asyncio.sleep(lease / 3)
            try:
                kept = await asyncio.wait_for(self._claims.keep(name, tick), lease / 3)
            except Exception:
                continue  # Redis is away; the claim logs that, and the next beat tries again
            if not kept and not warned:
                warned = True
                log.warning(
                    "%r: the run at %s lost its 'running' marker (Redis was unreachable "
                    "for longer than %gs); another run may start alongside it",
                    name,
                    _shown(tick),
                    lease,
                )


def _shown(tick: float) -> str:
    moment = datetime.fromtimestamp(tick, UTC)
    spec = "milliseconds" if moment.microsecond else "seconds"
    return moment.isoformat(timespec=spec).replace("+00:00", "Z")
