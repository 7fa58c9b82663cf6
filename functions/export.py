"""``POST /fn/export`` with a token: queue a slow export and answer at once with the job's id.

The job (``export_job.py``) runs on any process, as the user who asked, and tells that user
on every device when the file is ready (queue-run's flow). ``GET /fn/export?job=<id>`` gives
the job's state (``cloud.queue.get``). 401 without a token.
"""

from typing import Any

from laf_py import FunctionContext, HTTPError, cloud

methods = ["GET", "POST"]


async def main(ctx: FunctionContext) -> Any:
    if ctx.user is None:
        raise HTTPError(401, "log in first (POST /fn/login)")
    if ctx.method == "GET":
        job = await cloud.queue.get(ctx.query.get("job", ""))
        if job is None:
            raise HTTPError(404, "no such job")
        return job
    job_id = await cloud.queue.push("export_job", {"format": "csv"})
    return {"job": job_id}
