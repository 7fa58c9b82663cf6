"""The web console at ``/_/console``: one page, its scripts and style sheet, and its routes.

The page itself holds no data: everything it shows comes from the admin API, which its script
calls with the admin token on every request (the token is typed into the page and kept in the
tab's ``sessionStorage``). So with ``--admin-token`` set, the page is served without one (a
browser cannot put a Bearer token on a navigation); without a token set, the page is loopback
only like the API. Either way it is same-origin only, never framed, and its Content-Security-
Policy lets nothing run but its own scripts from this server: a function's answer shown in the
run panel is text, and even a bug that put it into HTML could not run it.

That is why the page handler is an :class:`~.admin.AdminHandler` that ``asks_for_the_token``
(the rest of the rule applies, the token is taken as given); every ``/_/api/`` handler of the
console is a plain ``AdminHandler``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .admin import AdminHandler
from .console_api import (
    FunctionsHandler,
    InfoHandler,
    SocketCloseHandler,
    SocketSendHandler,
    SocketsHandler,
    TokenHandler,
    UserSendHandler,
)

__all__ = ["CONSOLE_PATH", "CSP", "ConsoleFileHandler", "console_routes"]

log = logging.getLogger("laf_py")

CONSOLE_PATH = "/_/console"
ASSETS_DIR = Path(__file__).resolve().parent.parent / "console"
# name in the URL -> (file, content type); "" is the page.
ASSETS = {
    "": ("index.html", "text/html; charset=utf-8"),
    "console.js": ("console.js", "text/javascript; charset=utf-8"),
    "metrics.js": ("metrics.js", "text/javascript; charset=utf-8"),
    "console.css": ("console.css", "text/css; charset=utf-8"),
}
CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)


class ConsoleFileHandler(AdminHandler):
    """``GET /_/console`` and its assets, read from the package (``laf_py/console/``)."""

    asks_for_the_token = True

    def set_default_headers(self) -> None:
        super().set_default_headers()  # no-store, nosniff, DENY
        self.set_header("Content-Security-Policy", CSP)
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("Cross-Origin-Opener-Policy", "same-origin")
        self.set_header("Cross-Origin-Resource-Policy", "same-origin")

    def get(self, name: str = "") -> None:
        asset = ASSETS.get(name or "")
        if asset is None:
            return self.send_error_json(404, f"No route for {self.request.path}")
        file, content_type = asset
        try:
            content = (ASSETS_DIR / file).read_bytes()
        except OSError:
            log.error("the console's %s is missing from %s (a broken install?)", file, ASSETS_DIR)
            return self.send_error_json(500, "the console's files are missing")
        self.set_header("Content-Type", content_type)
        self.finish(content)


def console_routes(deps: dict[str, Any]) -> list[Any]:
    """The console's routes, for ``make_app`` (before the catch-all of ``/_/``)."""
    return [
        (rf"{CONSOLE_PATH}/?", ConsoleFileHandler, deps),
        (rf"{CONSOLE_PATH}/([a-z]+\.(?:js|css))", ConsoleFileHandler, deps),
        (r"/_/api/info", InfoHandler, deps),
        (r"/_/api/functions", FunctionsHandler, deps),
        (r"/_/api/token", TokenHandler, deps),
        (r"/_/api/sockets", SocketsHandler, deps),
        (r"/_/api/sockets/([^/]+)/send", SocketSendHandler, deps),
        (r"/_/api/sockets/([^/]+)/close", SocketCloseHandler, deps),
        (r"/_/api/users/([^/]+)/send", UserSendHandler, deps),
    ]
