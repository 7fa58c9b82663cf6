"""The Tornado application: routes to handlers, each given the runtime explicitly."""

from __future__ import annotations

import logging
import re
from importlib import resources

import tornado.web
from tornado.log import access_log

from ..runtime import Runtime
from .activity import Activity
from .base import BaseHandler, NotFoundHandler
from .http import PREFIX, FunctionHandler, HealthHandler
from .keepalive import Keepalive
from .websocket import FunctionSocketHandler

__all__ = ["make_app"]


class IndexHandler(BaseHandler):
    """A small page that talks to ``/__websocket__`` from the browser."""

    page = resources.files("laf_py.server").joinpath("static/index.html").read_bytes()

    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(self.page)


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
    return tornado.web.Application(
        [
            (rf"{PREFIX}(.*)", FunctionHandler, deps),
            (r"/__websocket__", FunctionSocketHandler, {**deps, "keepalive": keepalive}),
            (r"/_/healthz", HealthHandler, deps),
            (r"/", IndexHandler, deps),
        ],
        default_handler_class=NotFoundHandler,
        default_handler_args=deps,
        log_function=log_request,
        websocket_max_message_size=settings.max_message_size,  # larger: close 1009
        # No websocket_ping_interval: Keepalive pings every connection from one timer.
    )
