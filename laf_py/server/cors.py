"""One origin policy for browsers, for HTTP functions (CORS) and WebSocket handshakes alike.

A request is *cross-origin* when it carries ``Origin`` (browsers send it on every cross-origin
``fetch``, on form posts and on WebSocket handshakes) naming another site than the one it was
sent to. The site it was sent to is the request's ``Host``, which ``--allowed-hosts`` has
already vetted (so a rebinding page cannot pass itself off as this server).

- Same-origin requests and requests without ``Origin`` (curl, servers) are not affected.
- A cross-origin request from an origin ``--allowed-origins`` lists is served with the CORS
  headers (errors included, so the page can read a 401 or a 500), ``X-Request-Id`` exposed.
- A preflight (``OPTIONS`` with ``Access-Control-Request-Method``) is answered here, 204, and
  never runs a function.
- A cross-origin request from any other origin is refused (403) before a function runs:
  the browser would hide the answer from the page, but a function would still have acted on a
  request a page elsewhere made in the user's name. One log line names the origin and the
  option that would allow it.

Cookies and other credentials are refused by browsers unless ``--allow-credentials`` is set.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from .base import BaseHandler

__all__ = [
    "PREFLIGHT_MAX_AGE",
    "allow",
    "cross_origin",
    "is_preflight",
    "origin_allowed",
    "preflight_headers",
    "refusal",
]

log = logging.getLogger("laf_py")

PREFLIGHT_MAX_AGE = 600  # seconds a browser may reuse a preflight's answer (Chromium's cap: 7200)
EXPOSED = "X-Request-Id"
# A header name as RFC 9110 spells one (a "token"): anything else in the request list is dropped.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def cross_origin(handler: BaseHandler) -> str | None:
    """The request's ``Origin`` when it names another site than the one asked for, else None
    (same origin, or not from a browser)."""
    headers = handler.request.headers
    origin = headers.get("Origin")
    if not origin:  # none, or empty: not a browser's
        return None
    if headers.get("Sec-Fetch-Site") in ("same-origin", "none"):
        return None
    served = handler.served_host  # checked against --allowed-hosts before any handler
    try:
        netloc = urlsplit(origin).netloc.lower()
    except ValueError:
        netloc = ""
    if served is not None and netloc and netloc == served.strip().lower():
        return None
    return origin


def origin_allowed(origin: str, patterns: Iterable[str]) -> bool:
    """Does ``--allowed-origins`` (exact origins, ``*``-patterns, or ``*``) list ``origin``?"""
    origin = origin.rstrip("/").lower()
    return any(
        pattern == "*" or fnmatch.fnmatchcase(origin, pattern.lower()) for pattern in patterns
    )


def is_preflight(handler: BaseHandler) -> bool:
    request = handler.request
    return request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers


def allow(handler: BaseHandler, origin: str, credentials: bool) -> None:
    """The headers of an allowed cross-origin response (on errors too)."""
    handler.set_header("Access-Control-Allow-Origin", origin)
    handler.set_header("Access-Control-Expose-Headers", EXPOSED)
    handler.set_header("Vary", "Origin")
    if credentials:
        handler.set_header("Access-Control-Allow-Credentials", "true")


def preflight_headers(handler: BaseHandler, methods: Iterable[str]) -> None:
    """The rest of a preflight's answer: what may be sent, and for how long that holds."""
    handler.set_header("Access-Control-Allow-Methods", ", ".join(sorted(methods)))
    asked = handler.request.headers.get("Access-Control-Request-Headers", "")
    names = [name.strip() for name in asked.split(",")]
    allowed = ", ".join(name for name in names if _HEADER_NAME.fullmatch(name))
    if allowed:
        handler.set_header("Access-Control-Allow-Headers", allowed)
    handler.set_header("Access-Control-Max-Age", str(PREFLIGHT_MAX_AGE))
    handler.add_header("Vary", "Access-Control-Request-Method")
    handler.add_header("Vary", "Access-Control-Request-Headers")


def refusal(handler: BaseHandler, origin: str, what: str) -> str:
    """Log the one line a refused origin gets, and return the error message for the client."""
    request = handler.request
    shown = origin[:200]
    log.warning(
        "refused %s from origin %r to %s %s: allow it with --allowed-origins / LAF_ALLOWED_ORIGINS",
        what,
        shown,
        request.method,
        request.path,
    )
    return f"Origin {shown!r} not allowed; see --allowed-origins"
