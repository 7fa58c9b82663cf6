"""The app's own website: files of ``public/`` served at ``/``, and the page shown without one.

Tornado's ``StaticFileHandler`` does the HTTP (content types, ``ETag`` and ``Last-Modified``
with 304, ``HEAD``, ranges); this adds what a public folder needs around it:

- **Confinement.** A path is resolved with its symlinks and must stay inside the folder
  (``..``, encoded slashes and a symlink out all end in 404, never in a file outside).
  Dot files and dot folders (``.env``, ``.git/``) are never served.
- **No listings.** A folder answers its ``index.html``, or 404.
- **Revalidation.** ``Cache-Control: no-cache``: a browser keeps a copy but asks each time, and
  gets a 304 while the file is unchanged, so a deploy is seen at once (see the README). The
  ``ETag`` is the file's modification time and size, so an edited file gets a new one.
- **SPA fallback** (``--spa-fallback``): an unknown path whose last segment has no dot is
  answered with ``index.html``, for client-side routers.

``/fn/``, ``/__websocket__`` and ``/_/`` are routed before this handler, so they always win.
"""

from __future__ import annotations

import html
import os
import stat
from typing import Any

import tornado.web

from ..core.registry import is_public_name
from .base import BaseHandler
from .http import PREFIX

__all__ = ["PublicFileHandler", "WelcomeHandler"]

INDEX = "index.html"


class PublicFileHandler(BaseHandler, tornado.web.StaticFileHandler):
    """Files of the public folder; JSON errors and the Host check as on every route."""

    def initialize(self, runtime: Any, activity: Any, path: str, spa_fallback: bool) -> None:  # type: ignore[override]
        BaseHandler.initialize(self, runtime, activity)
        tornado.web.StaticFileHandler.initialize(self, path, default_filename=INDEX)
        self.spa_fallback = spa_fallback

    def set_extra_headers(self, path: str) -> None:
        self.set_header("Cache-Control", "no-cache")

    def parse_url_path(self, url_path: str) -> str:
        # Tornado's, with NUL refused here: the OS would refuse it later with an error.
        if "\0" in url_path or any(part.startswith(".") for part in url_path.split("/")):
            raise tornado.web.HTTPError(404)
        return super().parse_url_path(url_path)

    @classmethod
    def get_absolute_path(cls, root: str, path: str) -> str:
        try:
            return super().get_absolute_path(root, path)
        except tornado.web.HTTPError as error:  # outside the folder as written (Tornado 6.6)
            status = 404 if error.status_code == 403 else error.status_code
            raise tornado.web.HTTPError(status) from None

    def compute_etag(self) -> str | None:
        # Tornado's hashes the whole file once and keeps that hash for the life of the
        # process, so an edited file would still get 304s; modification time and size
        # change with every deploy. The stat is the one validate_absolute_path made, which
        # Content-Length and Last-Modified come from too.
        found = self._stat()
        return f'"{found.st_mtime_ns:x}-{found.st_size:x}"'

    def validate_absolute_path(self, root: str, absolute_path: str) -> str | None:
        real_root = os.path.realpath(root)
        real = os.path.realpath(absolute_path)
        if real != real_root and not real.startswith(real_root + os.sep):
            raise tornado.web.HTTPError(404)  # outside the folder, by .. or a symlink
        try:
            found: os.stat_result | None = os.stat(real)
        except OSError:
            found = None
        if found is not None and stat.S_ISREG(found.st_mode):
            # A file, resolved and confined above: Tornado's own checks would resolve the
            # path again (two more realpath walks, a stat each). Its _stat() keeps this one.
            self._stat_result = found
            return real
        if os.path.isdir(real) and not os.path.isfile(os.path.join(real, INDEX)):
            raise tornado.web.HTTPError(404)  # a folder without index.html: no listing
        if self.spa_fallback and not os.path.exists(real) and "." not in self.path_tail:
            return super().validate_absolute_path(root, os.path.join(real_root, INDEX))
        try:
            return super().validate_absolute_path(root, absolute_path)
        except tornado.web.HTTPError as error:
            if error.status_code == 403:  # "not a file": a socket, a device
                raise tornado.web.HTTPError(404) from None
            raise

    @property
    def path_tail(self) -> str:
        """The request path's last segment (``/app/settings`` → ``settings``)."""
        return self.request.path.rstrip("/").rpartition("/")[2]

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if status_code == 404:
            return self.send_error_json(404, f"No file or route for {self.request.path}")
        super().write_error(status_code, **kwargs)


class WelcomeHandler(BaseHandler):
    """``/`` of an app without a public folder: where its functions and WebSocket are."""

    def get(self) -> None:
        base = f"{self.request.protocol}://{self.request.host}"
        functions = sorted(
            f.name
            for f in self.runtime.registry.functions()
            if is_public_name(f.name) and f.error is None
        )
        websocket = self.runtime.websocket is not None
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.finish(welcome_page(base, functions, websocket, str(self.runtime.settings.app_dir)))

    def head(self) -> None:
        self.get()


def welcome_page(base: str, functions: list[str], websocket: bool, app: str) -> str:
    """A short page: the function URLs, the WebSocket URL, and how to serve a page here."""
    escape = html.escape
    items = "".join(
        f'<li><a href="{escape(base + PREFIX + name)}">{escape(PREFIX + name)}</a></li>'
        for name in functions
    )
    listed = f"<ul>{items}</ul>" if items else "<p>No functions yet: add a file to functions/.</p>"
    socket = (
        f"<p>WebSocket: <code>{escape(base.replace('http', 'ws', 1))}/__websocket__</code></p>"
        if websocket
        else "<p>No WebSocket function: add functions/__websocket__.py.</p>"
    )
    return (
        "<!doctype html><html><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        "<title>laf-py</title><style>body{font:16px/1.5 system-ui,sans-serif;max-width:40rem;"
        "margin:2rem auto;padding:0 1rem}code{background:#f3f3f3;padding:0 .2em}</style>"
        f"</head><body><h1>laf-py is running</h1><p>Functions:</p>{listed}{socket}"
        f"<p>To serve your own site here, put an <code>index.html</code> in "
        f"<code>{escape(os.path.join(app, 'public'))}</code> and restart.</p></body></html>"
    )
