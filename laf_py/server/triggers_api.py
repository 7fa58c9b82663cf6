"""Run the other triggers on demand (admin endpoints): a scheduled function now, and every
queued job now. The test client uses them so a test need not wait for a schedule or a retry
delay; the console may too.

``POST /_/api/schedules/<name>/run`` → ``{"request_id": ..., "outcome": "done"|"failed"}``
``POST /_/api/queue/drain?timeout=30`` → ``{"ran": <attempts>}`` once no job is left waiting
or running (delayed and retrying jobs are made due), 504 if that takes longer than ``timeout``.
"""

from __future__ import annotations

import logging

from .admin import AdminHandler

__all__ = ["DrainQueueHandler", "RunScheduleHandler"]

log = logging.getLogger("laf_py")

DEFAULT_DRAIN_TIMEOUT = 30.0


class RunScheduleHandler(AdminHandler):
    async def post(self, name: str) -> None:
        scheduler = self.runtime.scheduler
        assert scheduler is not None, "the runtime has started"
        try:
            request_id, outcome = await scheduler.run_now(name)
        except LookupError as exc:
            self.send_error_json(404, str(exc.args[0]))
            return
        self.finish({"request_id": request_id, "outcome": outcome})


class DrainQueueHandler(AdminHandler):
    async def post(self) -> None:
        jobs = self.runtime.jobs
        assert jobs is not None, "the runtime has started"
        try:
            timeout = float(self.get_query_argument("timeout", str(DEFAULT_DRAIN_TIMEOUT)))
            if not timeout > 0:
                raise ValueError(timeout)
        except ValueError:
            self.send_error_json(400, "timeout is a number of seconds > 0")
            return
        try:
            ran = await jobs.drain(timeout)
        except TimeoutError:
            self.send_error_json(
                504, f"queued jobs were still waiting or running after {timeout:g}s"
            )
            return
        log.info("drained the queue on request: %d attempt(s) ran", ran)
        self.finish({"ran": ran})
