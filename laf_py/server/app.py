"""The Tornado application: routes to handlers, each given the runtime explicitly."""

from __future__ import annotations

import logging
from typing import Any

import tornado.web
from tornado.log import access_log

from ..cloud.tokens import hide_tokens, hide_tokens_in_uri
from ..core.context import current_call
from ..logs.hidden import hide_tokens_in
from ..runtime import Runtime
from .activity import Activity
from .base import NotFoundHandler
from .console import console_routes
from .http import PREFIX, FunctionHandler, HealthHandler
from .keepalive import Keepalive
from .logs_api import LogsHandler, LogStreamHandler
from .metrics import MetricsHandler
from .static import PublicFileHandler, WelcomeHandler
from .triggers_api import DrainQueueHandler, RunScheduleHandler
from .websocket import FunctionSocketHandler

__all__ = ["log_access", "log_request", "make_app"]


def log_request(handler: tornado.web.RequestHandler) -> None:
    """Tornado's access log line, without tokens: WebSocket clients put theirs in the URL
    (``?token=``), and a token may come in any other spelling or place of it
    (:func:`~laf_py.cloud.tokens.hide_tokens_in_uri`)."""
    request = handler.request
    log_access(
        handler.get_status(),
        request.method or "",
        request.uri or "",
        request.remote_ip,
        request.request_time(),
        # The request id of the call, so its access line and its function's lines go together.
        getattr(handler, "_request_id", None),
    )


def log_access(
    status: int,
    method: str,
    uri: str,
    remote_ip: str | None,
    seconds: float,
    request_id: str | None,
) -> None:
    """One access line (:func:`log_request`; the fast path of server/fast_http.py writes the
    same line without a handler)."""
    severity = status
    if status >= 1000:  # a refused WebSocket handshake, logged with its close code
        severity = status - 4000 if status >= 4000 else 500 if status == 1011 else 400
    level = logging.INFO if severity < 400 else logging.WARNING if severity < 500 else logging.ERROR
    if not access_log.isEnabledFor(level):
        return
    # Not a line of the call, even when a stream ends inside it: the server's, with its id.
    outside = current_call.set(None)
    try:
        access_log.log(
            level,
            "%d %s %s (%s) %.2fms",
            status,
            hide_tokens(method),
            hide_tokens_in_uri(uri),
            remote_ip,
            1000.0 * seconds,
            extra={"laf_request_id": request_id},
        )
    finally:
        current_call.reset(outside)


def hide_tokens_in_tornado_logs() -> None:
    """Tornado's own lines without tokens: a request it refuses as malformed is logged with
    the header value or request line it could not parse."""
    hide_tokens_in("tornado.general", "tornado.application")


def make_app(runtime: Runtime, activity: Activity, keepalive: Keepalive) -> tornado.web.Application:
    hide_tokens_in_tornado_logs()
    deps = {"runtime": runtime, "activity": activity}
    settings = runtime.settings
    # First match wins: functions, the WebSocket and /_/ before any file of public/.
    routes: list[Any] = [
        (rf"{PREFIX}(.*)", FunctionHandler, deps),
        (r"/__websocket__", FunctionSocketHandler, {**deps, "keepalive": keepalive}),
        (r"/_/healthz", HealthHandler, deps),
        (r"/_/api/logs", LogsHandler, deps),
        (r"/_/api/logs/stream", LogStreamHandler, deps),
        (r"/_/api/schedules/(.+)/run", RunScheduleHandler, deps),
        (r"/_/api/queue/drain", DrainQueueHandler, deps),
        (r"/_/metrics", MetricsHandler, deps),
        *console_routes(deps),
        (r"/_/.*", NotFoundHandler, deps),
    ]
    if settings.public_dir is not None:
        public = {"path": str(settings.public_dir), "spa_fallback": settings.spa_fallback}
        routes.append((r"/(.*)", PublicFileHandler, {**deps, **public}))
    else:
        routes.append((r"/", WelcomeHandler, deps))
    return tornado.web.Application(
        routes,
        default_handler_class=NotFoundHandler,
        default_handler_args=deps,
        log_function=log_request,
        websocket_max_message_size=settings.max_message_size,  # larger: close 1009
        # No websocket_ping_interval: Keepalive pings every connection from one timer.
    )
