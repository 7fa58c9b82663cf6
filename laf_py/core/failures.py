"""One place that turns an exception from a function into what the client is told.

``HTTPError`` is the function's own answer and goes to the client as is; a timeout is reported
as 504 and logged as a warning; anything else is a bug: logged with its traceback, reported to
the client as a bare 500.
"""

from __future__ import annotations

import logging

from ..exceptions import FunctionTimeoutError, HTTPError
from .context import FunctionContext, current_call, in_call

__all__ = ["INTERNAL_ERROR", "report_failure"]

log = logging.getLogger("laf_py")

INTERNAL_ERROR = "Internal Server Error"


def report_failure(
    exc: BaseException,
    function_name: str,
    request_id: str,
    socket_id: str | None = None,
    ctx: FunctionContext | None = None,
) -> tuple[int, str]:
    """Log ``exc`` as it deserves and return the (status, message) to tell the client.

    With ``ctx``, the line is one of that call's (its function logs keep it)."""
    if ctx is None or current_call.get() is ctx:
        return _report(exc, function_name, request_id, socket_id)
    with in_call(ctx):
        return _report(exc, function_name, request_id, socket_id)


def _report(
    exc: BaseException, function_name: str, request_id: str, socket_id: str | None
) -> tuple[int, str]:
    where = f"function {function_name!r} (request {request_id}"
    where += f", socket {socket_id})" if socket_id else ")"
    if isinstance(exc, FunctionTimeoutError):
        log.warning("%s timed out after %gs", where, exc.seconds)
        return exc.status, exc.message
    if isinstance(exc, HTTPError):
        return exc.status, exc.message
    log.error("%s raised %s", where, type(exc).__name__, exc_info=exc)
    return 500, INTERNAL_ERROR
