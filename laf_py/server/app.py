"""The Tornado application: routes to handlers, each given the runtime explicitly."""

from __future__ import annotations

from importlib import resources

import tornado.web

from ..runtime import Runtime
from .activity import Activity
from .base import BaseHandler, NotFoundHandler
from .http import PREFIX, FunctionHandler, HealthHandler
from .websocket import FunctionSocketHandler

__all__ = ["make_app"]


class IndexHandler(BaseHandler):
    """A small page that talks to ``/__websocket__`` from the browser."""

    page = resources.files("laf_py.server").joinpath("static/index.html").read_bytes()

    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(self.page)


def make_app(runtime: Runtime, activity: Activity) -> tornado.web.Application:
    deps = {"runtime": runtime, "activity": activity}
    return tornado.web.Application(
        [
            (rf"{PREFIX}(.*)", FunctionHandler, deps),
            (r"/__websocket__", FunctionSocketHandler, deps),
            (r"/_/healthz", HealthHandler, deps),
            (r"/", IndexHandler, deps),
        ],
        default_handler_class=NotFoundHandler,
        default_handler_args=deps,
    )
