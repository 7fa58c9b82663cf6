"""``/__websocket__``: every connection's events, in order, to ``functions/__websocket__.py``.

Tornado reads the next frame only after ``on_message`` returns, so events of one connection
never overlap; ``close`` waits for the event in flight and runs exactly once.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
from collections.abc import Awaitable
from typing import Any
from urllib.parse import urlsplit

import tornado.websocket
from tornado.iostream import IOStream, StreamBufferFullError

from ..cloud.delivery import WRITTEN
from ..cloud.sockets import Socket
from ..cloud.tokens import bearer_token, user_id_of
from ..core import body as bodies
from ..core import frames
from ..core.context import WS_CLOSE, WS_CONNECTION, WS_MESSAGE, FunctionContext, new_request_id
from ..core.failures import report_failure
from ..core.flood import FloodGuard
from ..core.registry import WEBSOCKET, Function
from ..core.response import error_body
from ..exceptions import HTTPError
from ..runtime import Runtime
from .activity import Activity
from .base import INVALID_TOKEN, BaseHandler
from .keepalive import Keepalive

__all__ = ["FunctionSocketHandler"]

log = logging.getLogger("laf_py")

POLICY_VIOLATION = 1008
SLOW_CONSUMER = 1008
INTERNAL_ERROR = 1011
PING_TIMEOUT = 1011  # as the websockets library does


class FunctionSocketHandler(tornado.websocket.WebSocketHandler, BaseHandler):
    """One WebSocket connection. It is also the connection's Transport for ``Socket``."""

    # Tornado's handler has 27 instance attributes; CPython shares the keys of instance dicts
    # only up to 29, and past that every idle connection would pay 1.3 KiB for its own dict.
    # So laf-py keeps its fields in slots.
    __slots__ = (
        "_flood",
        "_query",
        "_rejected",
        "_server_close",
        "_stream",
        "_user",
        "activity",
        "keepalive",
        "runtime",
        "socket",
    )

    # Tornado gives each route its own keyword arguments; this route has one more.
    def initialize(  # type: ignore[override]
        self, runtime: Runtime, activity: Activity, keepalive: Keepalive
    ) -> None:
        BaseHandler.initialize(self, runtime, activity)
        self.keepalive = keepalive
        self.socket: Socket | None = None
        self._query: dict[str, str] = {}
        self._user: dict[str, Any] | None = None
        self._rejected = False
        self._stream: IOStream | None = None
        self._server_close: tuple[int, str] | None = None  # why the server closed it

    # -- before the upgrade: plain HTTP errors ---------------------------------------------

    def prepare(self) -> None:
        if self.activity.draining:
            return self.send_error_json(503, "Server is shutting down")
        if self.activity.connections >= self.runtime.settings.max_connections:
            return self.send_error_json(503, "Too many connections; try again later")
        if not self._origin_allowed():
            return self.send_error_json(403, "Origin not allowed; see --allowed-origins")
        function = self.runtime.websocket
        if function is None:
            return self.send_error_json(404, "No functions/__websocket__.py on this server")
        if function.error is not None:
            return self.send_error_json(500, "WebSocket function failed to load; see server log")
        token = bearer_token(self.request.headers.get("Authorization"))
        ok, self._user = self.authenticate(token or self.get_query_argument("token", None))
        if not ok:
            return self.send_error_json(401, INVALID_TOKEN)

    # -- events ----------------------------------------------------------------------------

    async def open(self, *args: str, **kwargs: str) -> None:
        assert self.ws_connection is not None
        self._stream = self.ws_connection.stream
        assert self._stream is not None
        self._stream.max_write_buffer_size = self.runtime.settings.max_send_buffer
        self._flood = FloodGuard(self.runtime.settings.max_messages_per_second)
        self.activity.begin_connection(self)
        self.keepalive.add(self)
        self._query = bodies.parse_query(self.request.query)
        self.socket = socket = self.runtime.sockets.open(self, user_id_of(self._user))
        ctx = self._context(WS_CONNECTION, {})
        function = self.runtime.websocket
        interceptor = self.runtime.interceptor
        try:
            if function is None or function.error or (interceptor and interceptor.error):
                raise RuntimeError("WebSocket function or interceptor is unavailable")
            _, reached = await self.runtime.invoker.call(function, ctx, interceptor)
            if reached:
                self.runtime.sockets.accept(socket)
            else:
                self._reject(4403, "Forbidden")
        except HTTPError as exc:
            self._reject(4000 + exc.status, exc.message)
        except Exception as exc:
            _, error = report_failure(exc, WEBSOCKET, ctx.request_id, socket.id)
            self._send_error_frame(error, ctx.request_id)
            self._reject(INTERNAL_ERROR, error)

    async def on_message(self, message: str | bytes) -> None:
        if self._rejected or self.socket is None:
            return
        if not self._flood.allows():
            return self._refuse_flood()
        params = {"data": message, "is_binary": isinstance(message, bytes)}
        ctx = self._context(WS_MESSAGE, params)
        try:
            await self.runtime.invoker.call(self._function(), ctx)
        except Exception as exc:
            _, error = report_failure(exc, WEBSOCKET, ctx.request_id, self.socket.id)
            self._send_error_frame(error, ctx.request_id)

    def on_pong(self, data: bytes) -> None:
        self.keepalive.answered(self)

    def on_close(self) -> None:
        # Tornado (6.4+) calls this once, from its frame-reading loop, and only after the
        # open() or on_message() in flight has returned: close really is the last event.
        self.keepalive.discard(self)
        socket = self.socket
        if socket is None:  # the upgrade never completed
            return
        self.runtime.sockets.discard(socket)
        # The client's close code, or ours when it sent none (we closed it, or it vanished).
        code, reason = self.close_code, self.close_reason or ""
        if code is None and self._server_close is not None:
            code, reason = self._server_close
        task = asyncio.ensure_future(self._close_event(code, reason))
        task.add_done_callback(lambda _: self.activity.end_connection(self))

    async def _close_event(self, code: int | None, reason: str) -> None:
        if self._rejected:  # a connection that was never accepted has no close event
            return
        ctx = self._context(WS_CLOSE, {"code": code, "reason": reason})
        try:
            await self.runtime.invoker.call(self._function(), ctx)
        except Exception as exc:
            assert self.socket is not None
            report_failure(exc, WEBSOCKET, ctx.request_id, self.socket.id)

    # -- Transport, for Socket -------------------------------------------------------------

    def write_frame(self, frame: bytes) -> Awaitable[Any] | None:
        connection = self.ws_connection
        if connection is None or connection.is_closing():
            return None
        stream = connection.stream
        assert stream is not None  # set once the handshake is done
        if not stream.writing():
            # Nothing queued before it, so the frame may go straight to the kernel: one
            # system call, where IOStream.write costs a buffer copy and a Future each time
            # (most of a broadcast's time). laf-py serves plain TCP, so this is the socket.
            try:
                sent = stream.socket.send(frame)
            except OSError:  # would block, or the connection broke: IOStream handles both
                sent = 0
            if sent == len(frame):
                return WRITTEN
            frame = frame[sent:]
        try:
            return stream.write(frame)
        except StreamBufferFullError:
            self._close_slow_consumer(stream)
            return None

    def _close_slow_consumer(self, stream: IOStream) -> None:
        """The client stopped reading: its unsent data hit --max-send-buffer. Close it, so
        one client can never make the server's memory grow without bound."""
        log.warning("dropping socket %s: slow consumer", self.socket.id if self.socket else "?")
        self._server_close = (SLOW_CONSUMER, "slow consumer")
        # A close frame would wait behind everything the client is not reading: drop the
        # connection now, so it leaves cloud.sockets (and its user's presence) at once.
        stream.close()

    def ping_timed_out(self) -> None:
        """For Keepalive: no pong in time. Say why in a close frame (a client that reads but
        does not answer pings sees it), then drop the connection without waiting for the
        client's reply, which is not coming."""
        if self._server_close is None:
            self._server_close = (PING_TIMEOUT, "ping timeout")
        self.write_frame(frames.close_frame(PING_TIMEOUT, "ping timeout"))  # unless closing
        if self._stream is not None:
            self._stream.close()

    def _refuse_flood(self) -> None:
        if self._flood.persists():
            self._server_close = (POLICY_VIOLATION, "too many messages")
            self.close(POLICY_VIOLATION, "too many messages")
        else:
            limit = self.runtime.settings.max_messages_per_second
            message = f"Too many messages: at most {limit:g} per second"
            self._send_error_frame(message, new_request_id())

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        if reason:
            reason = frames.close_reason(reason)
        super().close(code, reason)

    def abort(self, code: int, reason: str) -> None:
        """Shutdown: a closing handshake first; if that is already under way, drop the TCP
        connection (Tornado would otherwise wait 5 s for the client's answer)."""
        if self.ws_connection is not None:
            self.close(code, reason)
        elif self._stream is not None:
            self._stream.close()

    # -- helpers ---------------------------------------------------------------------------

    def _context(self, method: str, params: dict[str, Any]) -> FunctionContext:
        return FunctionContext(
            method,
            WEBSOCKET,
            params=params,
            headers=self.request.headers,
            query=self._query,
            user=self._user,
            socket=self.socket,
        )

    def _function(self) -> Function:
        function = self.runtime.websocket
        if function is None or function.main is None:
            raise RuntimeError("functions/__websocket__.py is missing or failed to load")
        return function

    def _reject(self, code: int, reason: str) -> None:
        self._rejected = True
        self.close(code, reason)

    def _send_error_frame(self, message: str, request_id: str) -> None:
        if self.runtime.settings.websocket_error_frames:
            self.write_frame(frames.frame(frames.TEXT, error_body(message, request_id)))

    def _origin_allowed(self) -> bool:
        """Browsers apply no same-origin policy to WebSockets, so the server must: a page from
        another origin may connect only if --allowed-origins lists it."""
        origin = self.request.headers.get("Origin")
        if origin is None:
            return True  # not a browser
        if self.request.headers.get("Sec-Fetch-Site") in ("same-origin", "none"):
            return True
        if urlsplit(origin).netloc.lower() == self.request.host.lower():
            return True
        origin = origin.rstrip("/").lower()
        return any(
            pattern == "*" or fnmatch.fnmatchcase(origin, pattern.lower())
            for pattern in self.runtime.settings.allowed_origins
        )

    def check_origin(self, origin: str) -> bool:
        return True  # decided in prepare(), to answer with JSON like every other refusal

    def get_compression_options(self) -> dict[str, Any] | None:
        # Frames are encoded by laf-py itself (once per broadcast), so no permessage-deflate.
        return None
