"""A WebSocket handshake under ASGI as laf-py's checks see it: the ``Host`` it names
(``--allowed-hosts``) and the origin it comes from (``--allowed-origins``), by the same rules
and with the same log lines as the Tornado handlers (server/base.py, server/cors.py)."""

from __future__ import annotations

from typing import Any

import tornado.httputil

from ..cloud.tokens import hide_tokens, hide_tokens_in_uri
from ..config import Settings
from ..server import cors
from ..server.base import HostPolicy, log

__all__ = ["Asked"]


class _Request:
    __slots__ = ("headers", "method", "path")

    def __init__(self, method: str, path: str, headers: tornado.httputil.HTTPHeaders) -> None:
        self.method = method
        self.path = path
        self.headers = headers


class Asked:
    """What server/cors.py reads of a request (``request`` and ``served_host``), and the
    host and origin checks."""

    __slots__ = ("http_version", "remote_ip", "request", "settings", "uri")

    def __init__(
        self, scope: Any, headers: tornado.httputil.HTTPHeaders, settings: Settings
    ) -> None:
        path = scope.get("path", "/")
        query = scope.get("query_string", b"")
        self.uri = f"{path}?{query.decode('latin-1')}" if query else path
        client = scope.get("client")
        self.remote_ip: str | None = client[0] if client else None
        self.request = _Request("GET", path, headers)
        self.settings = settings
        self.http_version: str = scope.get("http_version", "1.1")

    @property
    def served_host(self) -> str | None:
        headers = self.request.headers
        if self.settings.trust_proxy_headers and "X-Forwarded-Host" in headers:
            forwarded = headers["X-Forwarded-Host"].rsplit(",", 1)[-1].strip()
            if forwarded:
                return forwarded
        return headers.get("Host")

    def refused_host(self) -> str | None:
        """The error message when ``Host`` names a host this server does not serve."""
        host = self.served_host
        if host is None or HostPolicy.of(self.settings).allows(host):
            return None
        shown = hide_tokens(host[:200])
        log.warning(
            "refused %s %s: Host %r is not allowed (see --allowed-hosts / LAF_ALLOWED_HOSTS)",
            self.request.method,
            hide_tokens_in_uri(self.request.path),
            shown,
        )
        return f"Host {shown!r} is not allowed: add it to --allowed-hosts (LAF_ALLOWED_HOSTS)"

    def refused_origin(self, what: str) -> str | None:
        """The error message when a page of an origin not allowed makes this request."""
        origin = cors.cross_origin(self)  # type: ignore[arg-type]
        if origin is None or cors.origin_allowed(origin, self.settings.allowed_origins):
            return None
        return cors.refusal(self, origin, what)  # type: ignore[arg-type]
