"""Which call wrote a log line: every record made while a function runs is tagged with its
function name and request id.

``logging`` builds a record in the thread (and context) of the code that logs, so a record
factory sees the call's ``current_call``: in async functions, in a plain ``def``'s thread, in
tasks the call started, and in libraries the function calls. The tags are plain attributes
(``laf_function``, ``laf_request_id``, and ``laf_sink``: where the line is kept), read by the
formatters and by the store; records made outside any call get none of them.
"""

from __future__ import annotations

import logging
from typing import Any

from ..core.context import FunctionContext, current_call

__all__ = ["install_call_tags", "tags_of"]

_installed = False


def install_call_tags() -> None:
    """Wrap the process's record factory (once)."""
    global _installed
    if _installed:
        return
    _installed = True
    make_record = logging.getLogRecordFactory()

    def tagged_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        ctx = current_call.get()
        if ctx is not None:
            _tag(record, ctx)
        return record

    logging.setLogRecordFactory(tagged_record)


def _tag(record: logging.LogRecord, ctx: FunctionContext) -> None:
    record.laf_function = ctx.function_name
    record.laf_request_id = ctx.request_id
    record.laf_sink = ctx.log_sink


def tags_of(record: logging.LogRecord) -> tuple[str | None, str | None]:
    """(function, request id) of a record; None for what is not there."""
    return getattr(record, "laf_function", None), getattr(record, "laf_request_id", None)
