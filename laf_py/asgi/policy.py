"""A WebSocket handshake under ASGI as laf-py's checks see it: the ``Host`` it names
(``--allowed-hosts``) and the origin it comes from (``--allowed-origins``), by the same rules
and with the same log lines as the Tornado handlers (server/base.py, server/cors.py)."""

from __future__ import annotations

from typing import Any

import tornado.httputil

from ..config import Settings
from ..server import cors
from ..server.base import host_refusal, served_host

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
        return served_host(self.request.headers, self.settings.trust_proxy_headers)

    def refused_host(self) -> str | None:
        """The error message when ``Host`` names a host this server does not serve."""
        request = self.request
        return host_refusal(self.settings, self.served_host, request.method, request.path)

    def refused_origin(self, what: str) -> str | None:
        """The error message when a page of an origin not allowed makes this request."""
        origin = cors.cross_origin(self)  # type: ignore[arg-type]
        if origin is None or cors.origin_allowed(origin, self.settings.allowed_origins):
            return None
        return cors.refusal(self, origin, what)  # type: ignore[arg-type]
