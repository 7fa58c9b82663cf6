"""The Tornado application: routes to handlers, each given the runtime explicitly."""

from __future__ import annotations

import logging
import re
from typing import Any

import tornado.web
from tornado.log import access_log

from ..runtime import Runtime
from .activity import Activity
from .base import NotFoundHandler
from .http import PREFIX, FunctionHandler, HealthHandler
from .keepalive import Keepalive
from .static import PublicFileHandler, WelcomeHandler
from .websocket import FunctionSocketHandler

__all__ = ["make_app"]


_TOKEN_IN_QUERY = re.compile(r"([?&]token=)[^&]*")


def log_request(handler: tornado.web.RequestHandler) -> None:
    """Tornado's access log line, without the tokens that WebSocket clients put in the URL."""
    status = handler.get_status()
    severity = status
    if status >= 1000:  # a refused WebSocket handshake, logged with its close code
        severity = status - 4000 if status >= 4000 else 500 if status == 1011 else 400
    level = logging.INFO if severity < 400 else logging.WARNING if severity < 500 else logging.ERROR
    if not access_log.isEnabledFor(level):
        return
    request = handler.request
    uri = _TOKEN_IN_QUERY.sub(r"\1***", request.uri or "")
    access_log.log(
        level,
        "%d %s %s (%s) %.2fms",
        status,
        request.method,
        uri,
        request.remote_ip,
        1000.0 * request.request_time(),
    )


def make_app(runtime: Runtime, activity: Activity, keepalive: Keepalive) -> tornado.web.Application:
    deps = {"runtime": runtime, "activity": activity}
    settings = runtime.settings
    # First match wins: functions, the WebSocket and /_/ before any file of public/.
    routes: list[Any] = [
        (rf"{PREFIX}(.*)", FunctionHandler, deps),
        (r"/__websocket__", FunctionSocketHandler, {**deps, "keepalive": keepalive}),
        (r"/_/healthz", HealthHandler, deps),
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
