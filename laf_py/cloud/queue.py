"""cloud.queue: jobs stored in laf-py's SQL database, run later by any process's worker.

``push`` stores a job and returns its id; ``get`` reads it back. The claiming, leases and
outcomes used by the worker (:mod:`laf_py.jobs`) live here too, beside the table they touch.

A job's life: ``pending`` (waiting for its first run, maybe delayed) → ``running`` (claimed
with a lease: ``run_at`` is then when the lease ends) → ``done``, or ``retrying`` (waiting for
its next attempt) → ... → ``failed`` with its error once its attempts are used up. A running
job whose lease ends (its process died) is claimed again as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import RowMapping, bindparam, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from ..core import jsoncodec
from ..core.context import current_call
from ..core.registry import RESERVED, FunctionRegistry
from .delivery import LoopBridge
from .pending import Pending, start
from .schema import jobs_table
from .sql import SQLITE_BEGIN, SQLStore

__all__ = ["ClaimedJob", "Job", "JobQueue", "Outcome"]

PENDING, RUNNING, RETRYING, DONE, FAILED = "pending", "running", "retrying", "done", "failed"

DONE_RETENTION = 24 * 3600.0  # a done job can be read back for a day
FAILED_RETENTION = 7 * 24 * 3600.0  # a failed one, with its error, for a week

_jobs = jobs_table.c


@dataclass(frozen=True, slots=True)
class Job:
    """What ``await cloud.queue.get(job_id)`` returns (JSON-serialisable as it is)."""

    id: str
    function: str
    state: str  # "pending", "running", "retrying", "done" or "failed"
    attempts: int  # runs started so far
    payload: Any
    user: dict[str, Any] | None  # ctx.user of the call that pushed it
    key: str | None
    error: str | None  # the last failure, "ValueError: ..."; None once done
    result: Any  # what main() returned (its JSON form), when done
    created_at: datetime
    next_run_at: datetime | None  # pending or retrying: when it is due
    finished_at: datetime | None  # done or failed


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    """A job a worker holds the lease of."""

    id: str
    function: str
    payload: Any
    user: dict[str, Any] | None
    attempt: int  # 1 for the first run
    lease: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one attempt ended, for :meth:`JobQueue.settle`."""

    job: ClaimedJob
    state: str  # DONE, RETRYING, FAILED
    result: str | None = None  # JSON
    error: str | None = None
    retry_at: float | None = None


class JobQueue:
    """``cloud.queue``: ``push`` and ``get`` from any thread; the rest is the worker's."""

    def __init__(self, store: SQLStore, bridge: LoopBridge, registry: FunctionRegistry) -> None:
        self._engine = store.engine
        self._dialect = store.dialect
        self._bridge = bridge
        self._registry = registry
        # On SQLite a claim reads and then writes: it takes the write lock when it begins, so
        # two processes claim one after the other and never the same job.
        self._writer = (
            store.engine.execution_options(**{SQLITE_BEGIN: "IMMEDIATE"})
            if store.dialect == "sqlite"
            else store.engine
        )
        self._insert = postgresql.insert if store.dialect == "postgresql" else sqlite.insert
        self.on_push: Callable[[float], None] = lambda run_at: None  # the local worker's wake-up
        # SQLite has one writer at a time, and a connection that finds the file locked sleeps
        # in steps of milliseconds: this process's queue writes take turns here instead.
        self._turn = asyncio.Lock() if store.dialect == "sqlite" else None
        # Pushes made meanwhile are stored together, in one transaction (a group commit).
        self._batch: list[tuple[dict[str, Any], asyncio.Future[str]]] = []
        self._storing: asyncio.Task[None] | None = None

    # -- the public API ---------------------------------------------------------------------

    def push(
        self, function_name: str, payload: Any = None, delay: float = 0, key: str | None = None
    ) -> Pending[str]:
        """Store a job for ``function_name`` and return its id; it runs ``delay`` seconds from
        now or later, with ``ctx.user`` the user of the calling function.

        With ``key``, a push while a pending job of that function has the same key stores
        nothing and returns that job's id.
        """
        self._check_function(function_name)
        encoded = jsoncodec.dumps_strict(payload)  # TypeError here, in the caller
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not delay >= 0:
            raise ValueError(f"delay must be a number of seconds >= 0, got {delay!r}")
        if not math.isfinite(delay):
            raise ValueError(f"delay must be finite, got {delay!r}")
        if key is not None and (not isinstance(key, str) or not key):
            raise TypeError(f"key must be a non-empty string or None, got {key!r}")
        caller = current_call.get()
        user = None if caller is None or caller.user is None else json.dumps(caller.user)
        now = time.time()
        row = {
            "id": os.urandom(12).hex(),
            "function": function_name,
            "payload": encoded,
            "pushed_by": user,
            "key": key,
            "state": PENDING,
            "attempts": 0,
            "run_at": now + delay,
            "created_at": now,
        }
        return start(self._bridge, self._push(row))

    def get(self, job_id: str) -> Pending[Job | None]:
        """The job with this id; None if there is none (or it was swept after its retention)."""
        if not isinstance(job_id, str):
            raise TypeError(f"job ids are strings, got {job_id!r}")
        return start(self._bridge, self._get(job_id))

    # -- for the worker ---------------------------------------------------------------------

    async def claim(
        self,
        limit: int,
        free: Callable[[str], int],
        lease_for: Callable[[str], float],
        attempts_for: Callable[[str], int],
        skip: Sequence[str] = (),
    ) -> tuple[list[ClaimedJob], bool]:
        """Take the lease of up to ``limit`` due jobs, oldest first, at most ``free(function)``
        of each function and none of the functions in ``skip``.

        Returns the jobs to run and whether more due jobs may be waiting. A running job whose
        lease ended with its last attempt is kept as failed instead of run again.
        """
        now = time.time()
        query = (
            select(_jobs.id, _jobs.function, _jobs.payload, _jobs.pushed_by, _jobs.attempts)
            .where(_jobs.run_at <= now)
            .order_by(_jobs.run_at)
            .limit(limit)
        )
        if skip:
            query = query.where(_jobs.function.not_in(list(skip)))
        if self._dialect == "postgresql":
            query = query.with_for_update(skip_locked=True)
        lease = os.urandom(8).hex()
        taken: dict[str, int] = {}
        claimed: list[ClaimedJob] = []
        leases: list[dict[str, Any]] = []
        lost: list[dict[str, Any]] = []
        async with self._write() as connection:
            rows = (await connection.execute(query)).all()
            more = len(rows) >= limit or bool(skip)
            for job_id, function, payload, pushed_by, attempts in rows:
                if taken.get(function, 0) >= free(function):
                    more = True
                    continue
                if attempts >= attempts_for(function):  # its last run never came back
                    lost.append({"b_id": job_id, "b_error": _lost(attempts)})
                    continue
                taken[function] = taken.get(function, 0) + 1
                claimed.append(
                    ClaimedJob(
                        job_id,
                        function,
                        json.loads(payload),
                        None if pushed_by is None else json.loads(pushed_by),
                        attempts + 1,
                        lease,
                    )
                )
                until = now + lease_for(function)
                leases.append({"b_id": job_id, "b_attempts": attempts + 1, "b_until": until})
            if leases:
                await connection.execute(
                    update(jobs_table)
                    .where(_jobs.id == bindparam("b_id"))
                    .values(
                        state=RUNNING,
                        attempts=bindparam("b_attempts"),
                        run_at=bindparam("b_until"),
                        lease=lease,
                    ),
                    leases,
                )
            if lost:
                await connection.execute(
                    update(jobs_table)
                    .where(_jobs.id == bindparam("b_id"))
                    .values(
                        state=FAILED,
                        error=bindparam("b_error"),
                        run_at=None,
                        lease=None,
                        finished_at=now,
                    ),
                    lost,
                )
        return claimed, more

    async def settle(self, outcomes: Sequence[Outcome]) -> None:
        """Record how attempts ended, in one transaction. An outcome that comes after its
        lease ended and the job was claimed again is dropped: the job runs elsewhere."""
        if not outcomes:
            return
        now = time.time()
        rows = [
            {
                "b_id": o.job.id,
                "b_lease": o.job.lease,
                "b_state": o.state,
                "b_result": o.result,
                "b_error": o.error,
                "b_run_at": o.retry_at,
                "b_finished": now if o.state in (DONE, FAILED) else None,
            }
            for o in outcomes
        ]
        statement = (
            update(jobs_table)
            .where(_jobs.id == bindparam("b_id"), _jobs.lease == bindparam("b_lease"))
            .values(
                state=bindparam("b_state"),
                result=bindparam("b_result"),
                error=bindparam("b_error"),
                run_at=bindparam("b_run_at"),
                finished_at=bindparam("b_finished"),
                lease=None,
            )
        )
        async with self._write() as connection:
            await connection.execute(statement, rows)

    async def release(self, jobs: Sequence[ClaimedJob], reason: str) -> None:
        """Hand back jobs interrupted by a shutdown: due at once, the attempt not counted."""
        if not jobs:
            return
        now = time.time()
        statement = (
            update(jobs_table)
            .where(_jobs.id == bindparam("b_id"), _jobs.lease == bindparam("b_lease"))
            .values(
                state=RETRYING,
                attempts=_jobs.attempts - 1,
                run_at=now,
                error=reason,
                lease=None,
            )
        )
        async with self._write() as connection:
            await connection.execute(statement, [{"b_id": j.id, "b_lease": j.lease} for j in jobs])

    async def sweep(self) -> int:
        """Delete done jobs past DONE_RETENTION and failed ones past FAILED_RETENTION."""
        now = time.time()
        statement = delete(jobs_table).where(
            _jobs.finished_at.is_not(None),
            (
                (_jobs.finished_at < now - FAILED_RETENTION)
                | ((_jobs.state == DONE) & (_jobs.finished_at < now - DONE_RETENTION))
            ),
        )
        async with self._write() as connection:
            result = await connection.execute(statement)
        return int(result.rowcount or 0)

    async def make_due(self) -> int:
        """Every waiting job (delayed, or retrying after a failure) due now; for tests and
        the admin API's "drain the queue now". Returns how many were waiting."""
        statement = (
            update(jobs_table)
            .where(_jobs.state.in_((PENDING, RETRYING)), _jobs.run_at > time.time())
            .values(run_at=time.time())
        )
        async with self._write() as connection:
            result = await connection.execute(statement)
        return int(result.rowcount or 0)

    async def live_jobs(self) -> int:
        """Jobs not finished yet: pending, running or retrying."""
        statement = select(func.count()).where(_jobs.state.in_((PENDING, RUNNING, RETRYING)))
        async with self._engine.connect() as connection:
            return int((await connection.execute(statement)).scalar() or 0)

    # -- internals --------------------------------------------------------------------------

    def _check_function(self, name: str) -> None:
        if not isinstance(name, str):
            raise TypeError(f"function_name must be a string, got {name!r}")
        function = self._registry.get(name) if name not in RESERVED else None
        if function is None:
            raise ValueError(f"cannot queue a job for {name!r}: there is no such function")
        if function.error is not None:
            raise ValueError(
                f"cannot queue a job for {name!r}: it failed to load: {function.error}"
            )

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        if self._turn is None:
            async with self._writer.begin() as connection:
                yield connection
            return
        async with self._turn, self._writer.begin() as connection:
            yield connection

    async def _push(self, row: dict[str, Any]) -> str:
        if row["key"] is None:
            stored: asyncio.Future[str] = asyncio.get_running_loop().create_future()
            self._batch.append((row, stored))
            if self._storing is None:
                self._storing = asyncio.create_task(self._store(), name="laf-py queue push")
            return await stored
        insert = self._insert(jobs_table).values(row).on_conflict_do_nothing().returning(_jobs.id)
        existing = select(_jobs.id).where(
            _jobs.function == row["function"], _jobs.key == row["key"], _jobs.state == PENDING
        )
        while True:
            async with self._write() as connection:
                job_id = (await connection.execute(insert)).scalar()
                if job_id is None:
                    job_id = (await connection.execute(existing)).scalar()
            if job_id == row["id"]:
                self.on_push(row["run_at"])
            if job_id is not None:
                return str(job_id)
            # The pending job with this key was claimed between the two statements: again.

    async def _store(self) -> None:
        """Insert the pushed jobs waiting, in one transaction per batch."""
        try:
            while self._batch:
                batch, self._batch = self._batch, []
                try:
                    async with self._write() as connection:
                        await connection.execute(jobs_table.insert(), [row for row, _ in batch])
                except Exception as exc:
                    for _, stored in batch:
                        if not stored.done():
                            stored.set_exception(exc)
                    continue
                for row, stored in batch:
                    if not stored.done():
                        stored.set_result(row["id"])
                self.on_push(min(row["run_at"] for row, _ in batch))
        finally:
            self._storing = None

    async def _get(self, job_id: str) -> Job | None:
        query = select(jobs_table).where(_jobs.id == job_id)
        async with self._engine.connect() as connection:
            row = (await connection.execute(query)).mappings().first()
        return None if row is None else _job(row)


def _job(row: RowMapping) -> Job:
    state = row["state"]
    return Job(
        id=row["id"],
        function=row["function"],
        state=state,
        attempts=row["attempts"],
        payload=json.loads(row["payload"]),
        user=None if row["pushed_by"] is None else json.loads(row["pushed_by"]),
        key=row["key"],
        error=row["error"],
        result=None if row["result"] is None else json.loads(row["result"]),
        created_at=_when(row["created_at"]),
        next_run_at=_when(row["run_at"]) if state in (PENDING, RETRYING) else None,
        finished_at=None if row["finished_at"] is None else _when(row["finished_at"]),
    )


def _when(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


def _lost(attempts: int) -> str:
    return (
        f"LostJob: attempt {attempts} never finished (its process stopped, or it outlived "
        "its lease), and it was the last attempt"
    )
