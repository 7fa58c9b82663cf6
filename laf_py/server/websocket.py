"""``/__websocket__``: the WebSocket handshake, and the hand-over to a SocketConnection.

The ``connection`` event runs *before* the client is answered: by the time the client sees the
connection open, the event has finished and accepted (or rejected) the socket. A rejection still
completes the handshake and then closes with ``4000 + status``, because browsers cannot read
the HTTP status of a refused handshake.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Any

from ..cloud.tokens import bearer_token
from ..core import body as bodies
from ..runtime import Runtime
from . import cors
from .activity import Activity
from .base import INVALID_TOKEN, BaseHandler
from .connection import SocketConnection
from .keepalive import Keepalive

__all__ = ["FunctionSocketHandler", "accept_value"]

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 1.3


def accept_value(key: str) -> str:
    """``Sec-WebSocket-Accept`` for a client's ``Sec-WebSocket-Key``."""
    return base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()


def is_valid_key(key: str) -> bool:
    """A ``Sec-WebSocket-Key`` must be 16 bytes, base64-encoded (RFC 6455 4.1)."""
    try:
        return len(base64.b64decode(key.encode(), validate=True)) == 16
    except (binascii.Error, UnicodeEncodeError):
        return False


class FunctionSocketHandler(BaseHandler):
    """Checks the upgrade request, runs the connection event, answers ``101`` and hands the
    stream to a :class:`SocketConnection`. The handler itself is gone after the handshake."""

    SUPPORTED_METHODS = ("GET",)

    # Tornado gives each route its own keyword arguments; this route has one more.
    def initialize(  # type: ignore[override]
        self, runtime: Runtime, activity: Activity, keepalive: Keepalive
    ) -> None:
        BaseHandler.initialize(self, runtime, activity)
        self.keepalive = keepalive
        self._user: dict[str, Any] | None = None

    def prepare(self) -> None:
        if self.activity.draining:
            return self.send_error_json(503, "Server is shutting down")
        if self.activity.connections >= self.runtime.settings.max_connections:
            return self.send_error_json(503, "Too many connections; try again later")
        if not self._origin_allowed():
            origin = self.request.headers.get("Origin", "")
            return self.send_error_json(403, cors.refusal(self, origin, "a WebSocket handshake"))
        function = self.runtime.websocket
        where = self.runtime.registry.root / "__websocket__.py"
        if function is None:
            return self.send_error_json(404, f"No WebSocket function: {where} does not exist")
        if function.error is not None:
            return self.send_error_json(500, f"{where} failed to load; see the server log")
        refusal = self._handshake_refusal()
        if refusal is not None:
            status, message = refusal
            extra = {"Sec-WebSocket-Version": "13"} if status == 426 else {}
            return self.send_error_json(status, message, **extra)
        token = bearer_token(self.request.headers.get("Authorization"))
        ok, self._user = self.authenticate(token or self.get_query_argument("token", None))
        if not ok:
            return self.send_error_json(401, INVALID_TOKEN)

    def _handshake_refusal(self) -> tuple[int, str] | None:
        """Why this request is not a valid WebSocket upgrade (RFC 6455 4.2.1), if it is not."""
        request = self.request
        headers = request.headers
        if request.version != "HTTP/1.1":
            return 400, "A WebSocket handshake needs HTTP/1.1"
        if headers.get("Upgrade", "").lower() != "websocket":
            return 400, 'Expected a WebSocket handshake ("Upgrade: websocket")'
        tokens = {t.strip().lower() for t in headers.get("Connection", "").split(",")}
        if "upgrade" not in tokens:
            return 400, 'Expected a WebSocket handshake ("Connection: Upgrade")'
        if headers.get("Sec-WebSocket-Version") != "13":
            return 426, "Unsupported WebSocket version; use 13"
        if not is_valid_key(headers.get("Sec-WebSocket-Key", "")):
            return 400, "Missing or malformed Sec-WebSocket-Key"
        return None

    async def get(self) -> None:
        if self._finished:
            return
        request = self.request
        connection = SocketConnection(
            self.runtime,
            self.activity,
            self.keepalive,
            request.headers,
            bodies.parse_query(request.query),
            self._user,
            request.remote_ip,
        )
        ended_with, request_id = await connection.connect()
        self._request_id = request_id  # for the access line
        response = (
            "HTTP/1.1 101 Switching Protocols\r\n"
            "Upgrade: websocket\r\n"
            "Connection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept_value(request.headers['Sec-WebSocket-Key'])}\r\n"
            f"X-Request-Id: {request_id}\r\n\r\n"
        ).encode()
        connection.start(self.detach(), response)
        # One access line per handshake: 101, or the close code of a rejection (4401 ...).
        self.set_status(ended_with)
        self.application.log_request(self)

    def _origin_allowed(self) -> bool:
        """Browsers apply no same-origin policy to WebSockets, so the server must: a page from
        another origin may connect only if --allowed-origins lists it (server/cors.py: the
        same policy as for HTTP functions)."""
        origin = cors.cross_origin(self)
        return origin is None or cors.origin_allowed(origin, self.runtime.settings.allowed_origins)

    def compute_etag(self) -> None:
        return None
