"""``/__websocket__`` under an ASGI server: the same events, in the same order, as on Tornado.

The ASGI server speaks the WebSocket protocol (frames, pings, the closing handshake, its own
frame size limit); laf-py keeps everything above it. :class:`AsgiSocketConnection` is
:class:`~laf_py.server.connection.SocketConnection` with ASGI's ``receive``/``send`` as its
transport, so the rules are one implementation:

- the ``connection`` event runs before ``websocket.accept``; frames sent meanwhile are held
  and sent right behind the accept (live when open);
- a connection's events never overlap, messages wait their turn (reading pauses past
  ``MAX_WAITING`` of them) and ``--max-messages-per-second`` applies;
- the ``close`` event runs once, after the last message, with whoever closed first.

What the ASGI server owns instead: pings (uvicorn: ``--ws-ping-interval``; ``laf-py serve
--server uvicorn`` passes ``--ping-interval`` and ``--ping-timeout`` on), the largest frame
(``ws_max_size``; ``--max-message-size``) and incomplete messages. Slow consumers: the app
sees whole messages sent, not bytes, so Tornado's stall rule (no byte taken for 5 s) has no
equivalent; a client whose unsent data passes ``--max-send-buffer`` x 16 is dropped at once,
and one that stops reading stops answering the server's pings too.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Mapping
from typing import Any

from tornado.log import access_log

from ..cloud.delivery import WRITTEN
from ..cloud.tokens import bearer_token, hide_tokens_in_uri
from ..core import body as bodies
from ..core import frames
from ..core.context import new_request_id
from ..core.eager import Done, start_now
from ..core.response import error_body
from ..runtime import Runtime
from ..server.activity import Activity
from ..server.base import INVALID_TOKEN
from ..server.connection import SLOW_CONSUMER, SocketConnection, log
from ..server.keepalive import Keepalive
from .bridge import Message, Receive, Scope, Send, request_headers
from .policy import Asked

__all__ = ["AsgiSocketConnection", "refuse_route", "serve_websocket"]

_WEBSOCKET_HTTP_RESPONSE = "websocket.http.response"  # the ASGI extension for refusals


async def serve_websocket(
    runtime: Runtime,
    activity: Activity,
    keepalive: Keepalive,
    scope: Scope,
    receive: Receive,
    send: Send,
) -> None:
    """One ASGI ``websocket`` connection, from the handshake to the ``close`` event."""
    started = time.perf_counter()
    opened = await receive()
    if opened["type"] != "websocket.connect":
        return
    headers = request_headers(scope)
    asked = Asked(scope, headers, runtime.settings)
    refusal = _refusal(runtime, activity, asked)
    query = bodies.parse_query(scope.get("query_string", b"").decode("latin-1"))
    user: dict[str, Any] | None = None
    if refusal is None:
        token = bearer_token(headers.get("Authorization")) or query.get("token")
        user = runtime.verify_token(token) if token is not None else None
        if token is not None and user is None:
            refusal = 401, INVALID_TOKEN
    if refusal is not None:
        status, message = refusal
        await _refuse(scope, send, status, message)
        _log(asked, status, started)
        return
    connection = AsgiSocketConnection(
        runtime, activity, keepalive, headers, query, user, asked.remote_ip
    )
    try:
        ended_with, request_id = await connection.connect()
    except BaseException:  # cancelled by the server (the client is gone)
        connection._on_stream_closed()
        raise
    _log(asked, ended_with, started)
    await connection.run(receive, send, request_id)


async def refuse_route(scope: Scope, receive: Receive, send: Send) -> None:
    """A WebSocket handshake to any path but ``/__websocket__``: 404, as on Tornado."""
    opened = await receive()
    if opened["type"] == "websocket.connect":
        await _refuse(scope, send, 404, f"No route for {scope.get('path', '/')}")


def _refusal(runtime: Runtime, activity: Activity, asked: Asked) -> tuple[int, str] | None:
    """Why this handshake is refused before any event, as (HTTP status, message)."""
    host = asked.refused_host()
    if host is not None:
        return 400, host
    if asked.http_version != "1.1":  # RFC 6455 4.1; uvicorn would upgrade an HTTP/1.0 one
        return 400, "A WebSocket handshake needs HTTP/1.1"
    if activity.draining:
        return 503, "Server is shutting down"
    if activity.connections >= runtime.settings.max_connections:
        return 503, "Too many connections; try again later"
    origin = asked.refused_origin("a WebSocket handshake")
    if origin is not None:
        return 403, origin
    function = runtime.websocket
    where = runtime.registry.root / "__websocket__.py"
    if function is None:
        return 404, f"No WebSocket function: {where} does not exist"
    if function.error is not None:
        return 500, f"{where} failed to load; see the server log"
    return None


async def _refuse(scope: Scope, send: Send, status: int, message: str) -> None:
    """The HTTP answer to a refused handshake, where the server lets the app send one (the
    ``websocket.http.response`` extension: uvicorn, hypercorn); else a plain refusal, which
    the server answers 403."""
    if _WEBSOCKET_HTTP_RESPONSE not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})
        return
    request_id = new_request_id()
    body = error_body(message, request_id)
    # No Content-Length: the server sets it (some versions of uvicorn add theirs to ours).
    head = [(b"content-type", b"application/json"), (b"x-request-id", request_id.encode())]
    await send({"type": "websocket.http.response.start", "status": status, "headers": head})
    await send({"type": "websocket.http.response.body", "body": body})


def _log(asked: Asked, status: int, started: float) -> None:
    """The access line Tornado's server writes for a handshake (server/app.py log_request)."""
    severity = status - 4000 if status >= 4000 else 500 if status == 1011 else status
    level = 20 if severity < 400 else 30 if severity < 500 else 40
    if access_log.isEnabledFor(level):
        access_log.log(
            level,
            "%d %s %s (%s) %.2fms",
            status,
            "GET",
            hide_tokens_in_uri(asked.uri),
            asked.remote_ip,
            1000.0 * (time.perf_counter() - started),
        )


_decoded: tuple[bytes, Message] | None = None  # the last frame decoded: a broadcast's


def _message_for(frame: bytes) -> Message | None:
    """The ASGI message for an encoded server frame (``core/frames``); None for pings and
    pongs, which the ASGI server handles. One broadcast writes the same frame object to every
    connection: it is decoded once."""
    global _decoded
    cached = _decoded
    if cached is not None and cached[0] is frame:
        return cached[1]
    opcode = frame[0] & 0x0F
    length = frame[1] & 0x7F
    payload = frame[2 if length < 126 else 4 if length == 126 else 10 :]
    message: Message
    if opcode == frames.TEXT:
        message = {"type": "websocket.send", "text": payload.decode()}
    elif opcode == frames.BINARY:
        message = {"type": "websocket.send", "bytes": payload}
    elif opcode == frames.CLOSE:
        code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1000
        reason = payload[2:].decode("utf-8", "replace")
        message = {"type": "websocket.close", "code": code, "reason": reason}
    else:
        return None
    _decoded = (frame, message)
    return message


class AsgiSocketConnection(SocketConnection):
    """A SocketConnection whose transport is ASGI: frames become ``websocket.send`` and
    ``websocket.close`` messages, sent in order by one writer."""

    __slots__ = (
        "_dropped",
        "_handling",
        "_outbox",
        "_over",
        "_queued",
        "_reader",
        "_resumed",
        "_send",
        "_writer",
    )

    def __init__(
        self,
        runtime: Runtime,
        activity: Activity,
        keepalive: Keepalive,
        headers: Mapping[str, str],
        query: Mapping[str, str],
        user: dict[str, Any] | None,
        remote_address: str | None,
    ) -> None:
        super().__init__(runtime, activity, keepalive, headers, query, user, remote_address)
        # Messages to send, with their size and, past --max-send-buffer, a future for the
        # sender to await; the first is the one being sent.
        self._outbox: deque[tuple[Message, int, asyncio.Future[None] | None]] = deque()
        self._queued = 0  # bytes in the outbox
        self._send: Send | None = None
        self._writer: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[Any] | None = None
        self._resumed: asyncio.Future[None] | None = None
        self._dropped = False
        self._handling: Awaitable[None] | None = None  # an event begun here that waits
        self._over: asyncio.Future[None] | None = None  # the connection has ended

    async def run(self, receive: Receive, send: Send, request_id: str) -> None:
        """Accept (or refuse: the close frame queued by a refused event goes right behind the
        accept), send the frames held since the event began, then read until the end. The
        ASGI app returns only once the connection is over: the server closes it then."""
        self._send = send
        self._over = asyncio.get_running_loop().create_future()
        accept = {"type": "websocket.accept", "headers": [(b"x-request-id", request_id.encode())]}
        try:
            await send(accept)
        except BaseException as exc:  # the client left during the connection event
            self._early = None
            self._on_stream_closed()  # its close event, and the end of the connection
            if isinstance(exc, OSError):
                return
            raise
        # Frames sent until the accept is out were held too: they follow it, in order.
        held, self._early = self._early or [], None
        for frame in held:
            self._write(frame)
        await self._read_messages(receive)
        await self._over  # reading may have moved to another task

    async def _read_messages(self, receive: Receive) -> None:
        """Read in this task until the connection ends, or until this task goes on with an
        event that waits (reading then goes on in a new task: _start_handling)."""
        self._reader = asyncio.current_task()
        ended = True
        try:
            ended = await self._read_all(receive)
        except asyncio.CancelledError:
            task = self._reader
            if not (self._dropped and task is not None and task.uncancel() == 0):
                raise  # the server's cancellation, not our own _drop
        finally:
            if ended:
                self._reader = None
                if self._writer is not None:
                    self._writer.cancel()
                self._release_waiters()  # a send awaited by a function fails: it goes on
                self._on_stream_closed()  # idempotent: the close event runs once
                if self._over is not None and not self._over.done():
                    self._over.set_result(None)

    async def _read_all(self, receive: Receive) -> bool:
        """Messages to the handler until the client leaves (True), or until an event this
        task began waits: this task goes on with it, and reading with a new task (False)."""
        while not self._ended and not self._dropped:
            if self._paused:  # too many messages wait: the client waits for us
                self._resumed = asyncio.get_running_loop().create_future()
                await self._resumed
                continue
            message = await receive()
            kind = message["type"]
            if kind == "websocket.receive":
                text = message.get("text")
                self._received(text if text is not None else message.get("bytes") or b"")
                handling = self._handling
                if handling is not None:
                    self._handling = None
                    if self._dropped or self._ended:  # the event dropped its own connection
                        await handling
                        return True
                    # The event waits: it goes on in this task (where its first step ran,
                    # so asyncio.timeout() and current_task() in it stay true), and reading
                    # goes on in a task of its own.
                    loop = asyncio.get_running_loop()
                    self._reader = loop.create_task(self._read_messages(receive))
                    await handling
                    return False
            elif kind == "websocket.disconnect":
                if self._close is None:
                    code = message.get("code")
                    # 1005 (a close frame without a code) and 1006 (no close frame: the
                    # client vanished) are what Tornado's close event hears as None.
                    heard = None if code in (1005, 1006) or code is None else int(code)
                    self._close = (heard, message.get("reason") or "")
                return True
        return True

    def _start_handling(self, message: str | bytes) -> None:
        """No event is running: begin handling ``message`` here, in the reading task. An
        echo-like event ends in its first step and costs no task at all; one that waits is
        picked up by _read_all, which goes on with it."""
        started = start_now(self._handle(message))
        if not isinstance(started, Done):
            self._task = asyncio.current_task()  # an event is running: messages wait for it
            self._handling = started

    # -- the transport primitives of SocketConnection ---------------------------------------

    def _read(self) -> None:
        """Reading resumes (SocketConnection._handle, once the waiting messages are few)."""
        resumed = self._resumed
        if resumed is not None and not resumed.done():
            resumed.set_result(None)

    # -- the transport primitives of SocketConnection ---------------------------------------

    def _write(self, data: bytes) -> Awaitable[Any] | None:
        """Queue ``data`` (an encoded frame) for the writer. Up to ``--max-send-buffer``
        unsent is free (WRITTEN at once); past it the caller gets a future that resolves once
        this message is sent, so a function that awaits its sends is paced by the client.
        Past ``--max-send-buffer`` x 16 the client is dropped at once."""
        if self._ended or self._dropped or self._send is None:
            return None
        message = _message_for(data)
        if message is None:
            return WRITTEN
        size = len(data)
        settings = self.runtime.settings
        if self._writer is None and size <= settings.max_send_buffer:
            # Nothing is being sent: send now, in the caller's task. The server's send
            # usually finishes in its first step (its transport takes the frame), and then
            # costs no task; one that has to wait (flow control) goes on in the writer.
            try:
                work = self._send(message)
                started = start_now(work) if asyncio.iscoroutine(work) else work
            except OSError:  # the client is gone: the server tells the reader
                return None
            if isinstance(started, Done):
                return WRITTEN
            self._queued += size
            self._outbox.append((message, size, None))
            self._writer = asyncio.ensure_future(self._write_all(started))
            return WRITTEN
        self._queued += size
        if self._queued > settings.max_send_backlog:
            self._close_slow_consumer(None)
            return None
        sent: asyncio.Future[None] | None = None
        if self._queued > settings.max_send_buffer:
            sent = asyncio.get_running_loop().create_future()
        self._outbox.append((message, size, sent))
        if self._writer is None:
            self._writer = asyncio.ensure_future(self._write_all())
        return sent if sent is not None else WRITTEN

    async def _write_all(self, sending: Awaitable[None] | None = None) -> None:
        """Send the outbox in order; ``sending``: the rest of the first message's send, begun
        by _write."""
        send = self._send
        assert send is not None
        outbox = self._outbox
        try:
            while outbox:
                message, size, sent = outbox[0]
                if sending is not None:
                    await sending
                    sending = None
                else:
                    await send(message)
                outbox.popleft()
                self._queued -= size
                if sent is not None and not sent.done():
                    sent.set_result(None)
        except OSError:  # the client is gone: the server tells the reader
            self._release_waiters()
        except asyncio.CancelledError:  # the connection ended: nothing more goes out
            self._release_waiters()
            raise
        finally:
            self._writer = None

    def _release_waiters(self) -> None:
        """Nothing more will be sent: whoever awaits a send learns its message was lost with
        the connection (its Delivery counts 0, as on Tornado)."""
        for _, _, sent in self._outbox:
            if sent is not None and not sent.done():
                sent.set_exception(ConnectionError("the WebSocket connection closed"))
                sent.exception()  # retrieved: a send nobody awaits is not an error to log
        self._outbox.clear()
        self._queued = 0

    def _close_slow_consumer(self, stream: Any) -> None:
        if self.runtime.metrics is not None:
            self.runtime.metrics.slow_consumer_closed()
        if self._close is None:
            self._close = (SLOW_CONSUMER, "slow consumer")
        log.warning("dropping socket %s: slow consumer", self.socket.id)
        self._drop()

    def _close_when_written(self) -> None:
        pass  # the ASGI server ends the TCP connection after its closing handshake

    def _drop(self) -> None:
        """End the connection now: nothing more is sent, the close event runs, and the ASGI
        app returns (the server closes the TCP connection)."""
        if self._dropped:
            return
        self._dropped = True
        self._release_waiters()
        if self._writer is not None:
            self._writer.cancel()
        reader = self._reader
        if reader is None:
            self._on_stream_closed()
        elif reader is not asyncio.current_task():
            reader.cancel()
        # (Dropped from within the reading task, by an event it runs: _read_all ends there,
        # after the event, which is not cancelled: functions never see their socket's end so.)
