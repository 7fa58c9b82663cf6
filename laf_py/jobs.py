"""The queued-jobs worker of one process: claims due jobs from ``laf_jobs`` and runs them.

Every process runs one. It claims jobs with a lease (``run_at`` becomes the end of the lease:
the function's timeout plus LEASE_MARGIN), runs each with ``ctx.method == "QUEUE"`` and
records the outcome, several at a time in one transaction. A job whose process dies keeps its
lease until it ends; then any worker claims it again.

It wakes up at once for jobs pushed in this process (and for retries and delayed jobs it knows
of) and otherwise polls the table every POLL_INTERVAL seconds: one indexed query.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from .cloud.queue import DONE, FAILED, RETRYING, ClaimedJob, JobQueue, Outcome
from .core import jsoncodec
from .core.context import QUEUE_METHOD, FunctionContext, in_call
from .core.invoke import Invoker
from .core.queue_settings import DEFAULT_QUEUE_SETTINGS, QueueSettings
from .core.registry import RESERVED, Function, FunctionRegistry
from .exceptions import FunctionTimeoutError, LafError

__all__ = ["LEASE_MARGIN", "MAX_RUNNING", "POLL_INTERVAL", "JobWorker"]

log = logging.getLogger("laf_py")

POLL_INTERVAL = 1.0  # seconds between looks at the table when nothing woke the worker
LEASE_MARGIN = 2.0  # a lease lasts the function's timeout plus this
MAX_RUNNING = 50  # jobs at once in one process, whatever the functions' queue_concurrency
SWEEP_INTERVAL = 300.0  # finished jobs past their retention are deleted this often
MAX_ERROR = 2000  # characters of an error kept with the job

INTERRUPTED = "Interrupted: the server stopped while it ran (the attempt does not count)"


DRAIN_CHECK = 0.05  # seconds between looks at the queue while draining it


class MissingFunctionError(LafError):
    """A job names a function this process does not have (deleted, or failed to load)."""


class JobWorker:
    """Runs the queued jobs of one process."""

    def __init__(
        self,
        queue: JobQueue,
        registry: FunctionRegistry,
        invoker: Invoker,
        default_timeout: float,
        *,
        poll_interval: float = POLL_INTERVAL,
        max_running: int = MAX_RUNNING,
    ) -> None:
        self._queue = queue
        self._registry = registry
        self._invoker = invoker
        self._default_timeout = default_timeout
        self._poll = poll_interval
        self._max_running = max_running
        self._wake = asyncio.Event()
        self._more = False  # the last claim left due jobs behind
        self._blocked: frozenset[str] = frozenset()  # functions at their limit at that claim
        self._running: dict[str, int] = {}  # function → its jobs running here
        self._tasks: dict[asyncio.Task[None], ClaimedJob] = {}
        self._outcomes: list[Outcome] = []
        self._settling: asyncio.Task[None] | None = None
        self._interrupted: list[ClaimedJob] = []
        self._timer: asyncio.TimerHandle | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._runs = 0  # attempts finished here (drain() counts them)
        self._progress = asyncio.Event()  # set when an attempt finishes
        queue.on_push = self.wake_at

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._work(), name="laf-py jobs")

    async def stop(self, grace: float) -> None:
        """Claim nothing more; give running jobs ``grace`` seconds, then cancel them and hand
        them back to the queue (due at once, for another process or the next start)."""
        self._stopping = True
        if self._timer is not None:
            self._timer.cancel()
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        if self._tasks:
            _, late = await asyncio.wait(list(self._tasks), timeout=max(grace, 0))
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
            if late:
                log.warning(
                    "%d queued job(s) still running at shutdown were handed back to the queue",
                    len(late),
                )
        while self._settling is not None:
            await asyncio.gather(self._settling, return_exceptions=True)
        try:
            await self._queue.release(self._interrupted, INTERRUPTED)
        except Exception:
            log.exception("could not hand back interrupted jobs; they run again after their lease")

    def wake_at(self, run_at: float) -> None:
        """A job is due at ``run_at`` (unix time): look for it then. On the loop thread."""
        if self._stopping:
            return
        delay = run_at - time.time()
        if delay <= 0:
            self._wake.set()
            return
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        if self._timer is not None and not self._timer.cancelled():
            if self._timer.when() <= when:
                return
            self._timer.cancel()
        self._timer = loop.call_at(when, self._timer_fired)

    # -- the loop ---------------------------------------------------------------------------

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        next_sweep = loop.time() + SWEEP_INTERVAL
        failing = False
        while True:
            self._wake.clear()
            try:
                if self._max_running > len(self._tasks):
                    await self._claim()
                failing = False
            except Exception as exc:
                self._more = False
                if not failing:  # once per outage, not once per poll
                    log.warning("cannot claim queued jobs (will keep trying): %s", exc)
                failing = True
            if loop.time() >= next_sweep:
                next_sweep = loop.time() + SWEEP_INTERVAL
                try:
                    await self._queue.sweep()
                except Exception as exc:
                    log.warning("sweeping finished jobs failed: %s", exc)
            if self._more and self._max_running > len(self._tasks):
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll):
                    await self._wake.wait()

    async def _claim(self) -> None:
        running = self._running
        blocked = frozenset(n for n in running if running[n] >= self._settings(n).concurrency)
        claimed, self._more = await self._queue.claim(
            self._max_running - len(self._tasks),
            free=lambda name: self._settings(name).concurrency - self._running.get(name, 0),
            lease_for=self._lease,
            attempts_for=lambda name: self._settings(name).attempts,
            skip=sorted(blocked),
        )
        self._blocked = blocked
        for job in claimed:
            self._running[job.function] = self._running.get(job.function, 0) + 1
            task = asyncio.create_task(self._run(job), name=f"laf-py job {job.id}")
            self._tasks[task] = job
            task.add_done_callback(self._finished)

    async def _run(self, job: ClaimedJob) -> None:
        function = self._function(job.function)
        settings = function.queue if function is not None else DEFAULT_QUEUE_SETTINGS
        ctx = FunctionContext(
            QUEUE_METHOD,
            job.function,
            params={"job_id": job.id, "attempt": job.attempt},
            body=job.payload,
            user=job.user,
        )
        try:
            if function is None:
                raise MissingFunctionError(f"there is no function {job.function!r}")
            if function.error is not None:
                raise MissingFunctionError(f"{job.function!r} failed to load: {function.error}")
            result, _ = await self._invoker.call(function, ctx)
        except asyncio.CancelledError:
            if self._stopping:
                self._interrupted.append(job)
            raise
        except Exception as exc:
            outcome = self._failed(job, ctx, settings, exc)
        else:
            outcome = Outcome(job, DONE, result=_encode_result(result, job, ctx))
        self._outcomes.append(outcome)
        if self._settling is None:
            self._settling = asyncio.create_task(self._settle(), name="laf-py job outcomes")

    def _failed(
        self, job: ClaimedJob, ctx: FunctionContext, settings: QueueSettings, exc: Exception
    ) -> Outcome:
        error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR]
        last = job.attempt >= settings.attempts
        with in_call(ctx):  # one of the job's own log lines
            log.log(
                logging.ERROR if last else logging.WARNING,
                "queued job %s of function %r (request %s) failed, attempt %d of %d%s: %s",
                job.id,
                job.function,
                ctx.request_id,
                job.attempt,
                settings.attempts,
                "; kept as failed" if last else "; will retry",
                error,
                exc_info=None
                if isinstance(exc, (FunctionTimeoutError, MissingFunctionError))
                else exc,
            )
        if last:
            return Outcome(job, FAILED, error=error)
        retry_at = time.time() + settings.retry_delay(job.attempt)
        self.wake_at(retry_at)
        return Outcome(job, RETRYING, error=error, retry_at=retry_at)

    async def drain(self, timeout: float) -> int:
        """Run every queued job now, delayed and retrying ones included, until none is left
        (each ends done, or failed after its attempts); for tests and ``POST
        /_/api/queue/drain``. Returns the attempts that ran. TimeoutError past ``timeout``."""
        runs = self._runs
        async with asyncio.timeout(timeout):
            while True:
                await self._queue.make_due()
                self._wake.set()
                idle = not self._tasks and self._settling is None
                if idle and await self._queue.live_jobs() == 0:
                    return self._runs - runs
                self._progress.clear()
                # A finished attempt, or a moment for the worker to claim what is due.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(DRAIN_CHECK):
                        await self._progress.wait()

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._runs += 1
        self._progress.set()
        job = self._tasks.pop(task)
        self._running[job.function] -= 1
        if not self._running[job.function]:
            del self._running[job.function]
        if not task.cancelled() and task.exception() is not None:
            log.error("queued job %s crashed the worker", job.id, exc_info=task.exception())
        if self._more or job.function in self._blocked:
            self._wake.set()  # a slot is free and due jobs are waiting for one

    async def _settle(self) -> None:
        """Write the outcomes that have piled up, in one transaction per batch."""
        try:
            while self._outcomes:
                batch, self._outcomes = self._outcomes, []
                try:
                    await self._queue.settle(batch)
                except Exception as exc:
                    log.warning(
                        "could not record the outcome of %d queued job(s); they run again once "
                        "their lease ends: %s",
                        len(batch),
                        exc,
                    )
        finally:
            self._settling = None

    # -- helpers ----------------------------------------------------------------------------

    def _function(self, name: str) -> Function | None:
        return None if name in RESERVED else self._registry.get(name)

    def _settings(self, name: str) -> QueueSettings:
        function = self._function(name)
        return function.queue if function is not None else DEFAULT_QUEUE_SETTINGS

    def _lease(self, name: str) -> float:
        function = self._function(name)
        timeout = function.timeout if function is not None else None
        return (timeout or self._default_timeout) + LEASE_MARGIN

    def _timer_fired(self) -> None:
        self._timer = None
        self._wake.set()


def _encode_result(result: object, job: ClaimedJob, ctx: FunctionContext) -> str | None:
    try:
        return jsoncodec.dumps_strict(result)
    except (TypeError, ValueError) as exc:
        log.warning(
            "queued job %s of function %r (request %s) returned a value that is not JSON; "
            "its result is kept as null: %s",
            job.id,
            job.function,
            ctx.request_id,
            exc,
        )
        return None
