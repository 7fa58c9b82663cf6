"""An ASGI ``http`` request served by laf-py's Tornado application, unchanged.

Tornado's ``Application`` is an HTTP delegate: it takes a request as a start line, headers and
body chunks, and answers through an ``HTTPConnection`` (``write_headers``, ``write``,
``finish``). :class:`AsgiConnection` is that connection over ASGI's ``send``, so every route
(functions, streams and Server-Sent Events, ``public/`` files, ``/_/`` admin endpoints, the
console) behaves under an ASGI server exactly as on laf-py's own, with one implementation.
The ASGI server parses HTTP and frames the response (chunked or with its length); the body
arrives through ``receive`` and goes to the handler as it comes, so ``--max-body-size`` is
enforced as the bytes arrive.
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from typing import Any

import tornado
import tornado.httputil
import tornado.web

from ..server.http import drain_limit

__all__ = [
    "AsgiConnection",
    "ResponseAborted",
    "request_headers",
    "respond",
    "serve_http",
    "start_line",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# Headers the ASGI server writes itself: its own Date, its own framing; and its own Server,
# unless a function set one (Tornado's default names Tornado).
_SERVER_HEADERS = frozenset({"date", "transfer-encoding"})
_TORNADO_SERVER = f"TornadoServer/{tornado.version}"


class ResponseAborted(Exception):
    """A response that failed after its head was sent (a stream whose generator raised):
    raised out of the app, because that is how ASGI lets an app make the server close the
    connection without ending the body, so no client takes the part for the whole."""


class _Context:
    """What ``HTTPServerRequest`` reads from a connection's ``context``."""

    __slots__ = ("protocol", "remote_ip")

    def __init__(self, remote_ip: str | None, protocol: str) -> None:
        self.remote_ip = remote_ip
        self.protocol = protocol


class AsgiConnection(tornado.httputil.HTTPConnection):
    """Tornado's view of one ASGI request: what the handler writes is queued, in order, and
    sent by the request's own ASGI task (:func:`serve_http`)."""

    def __init__(self, scope: Scope) -> None:
        client = scope.get("client")
        self.context = _Context(client[0] if client else None, scope.get("scheme", "http"))
        self.finished = False
        self.started = False  # the head has been queued
        self.aborted = False
        self._outbox: deque[tuple[Message, asyncio.Future[None] | None]] = deque()
        self._wakeup: asyncio.Future[None] | None = None
        self._close_callback: Callable[[], None] | None = None

    # -- HTTPConnection -------------------------------------------------------------------

    def write_headers(
        self,
        start_line: tornado.httputil.RequestStartLine | tornado.httputil.ResponseStartLine,
        headers: tornado.httputil.HTTPHeaders,
        chunk: bytes | None = None,
    ) -> asyncio.Future[None]:
        assert isinstance(start_line, tornado.httputil.ResponseStartLine)
        self.started = True
        raw = [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in headers.get_all()
            if name.lower() not in _SERVER_HEADERS and value != _TORNADO_SERVER
        ]
        self._queue({"type": "http.response.start", "status": start_line.code, "headers": raw})
        return self.write(chunk or b"")

    def write(self, chunk: bytes) -> asyncio.Future[None]:
        future = asyncio.get_running_loop().create_future()
        if chunk:
            self._queue({"type": "http.response.body", "body": chunk, "more_body": True}, future)
        else:
            future.set_result(None)
        return future

    def finish(self) -> None:
        if self.aborted:
            self.finished = True
            return
        if not self.started:  # Tornado finishes a request it never answered (it should not)
            self._queue({"type": "http.response.start", "status": 500, "headers": []})
        self._queue({"type": "http.response.body", "body": b"", "more_body": False})
        self.finished = True

    def abort(self) -> None:
        """End the response without its end (server/streaming.py, a stream that failed)."""
        self.aborted = True
        self._outbox.clear()
        self._wake()

    def set_close_callback(self, callback: Callable[[], None] | None) -> None:
        self._close_callback = callback

    def detach(self) -> Any:
        # Only /__websocket__ detaches, and under ASGI WebSockets never reach Tornado.
        raise tornado.web.HTTPError(400, "not a WebSocket request")

    # -- the ASGI side --------------------------------------------------------------------

    def _queue(self, message: Message, future: asyncio.Future[None] | None = None) -> None:
        if self.aborted:
            if future is not None:
                future.set_result(None)
            return
        self._outbox.append((message, future))
        self._wake()

    def _wake(self) -> None:
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    async def flush_to(self, send: Send) -> None:
        """Send what is queued, resolving each write's future once it is sent."""
        outbox = self._outbox
        while outbox:
            message, future = outbox.popleft()
            await send(message)
            if future is not None and not future.done():
                future.set_result(None)

    async def wait(self) -> None:
        """Until something more is queued."""
        if not self._outbox:
            self._wakeup = asyncio.get_running_loop().create_future()
            await self._wakeup

    def client_left(self) -> None:
        callback, self._close_callback = self._close_callback, None
        if callback is not None:
            callback()
        for _, future in self._outbox:  # a handler awaiting a flush: the stream is closed
            if future is not None and not future.done():
                future.set_result(None)


def start_line(scope: Scope, path: str) -> tornado.httputil.RequestStartLine:
    """The request line Tornado would have parsed: the raw (still percent-encoded) path."""
    query = scope.get("query_string", b"")
    target = f"{path}?{query.decode('latin-1')}" if query else path
    version = f"HTTP/{scope.get('http_version', '1.1')}"
    return tornado.httputil.RequestStartLine(scope["method"], target, version)


def request_headers(scope: Scope) -> tornado.httputil.HTTPHeaders:
    """The request's headers as Tornado's parser would give them. (``add`` for repeated
    names only: it validates and looks the name up again, and this runs for every request.)"""
    headers = tornado.httputil.HTTPHeaders()
    present = headers._as_list  # the values by normalized name, in every Tornado version
    for raw_name, raw_value in scope["headers"]:
        name = _header_name(raw_name)
        if name in present:  # repeated: kept as a list, joined with commas when read
            headers.add(name, raw_value.decode("latin-1"))
        else:
            headers[name] = raw_value.decode("latin-1")
    return headers


@functools.lru_cache(maxsize=512)
def _header_name(raw: bytes) -> str:
    """``content-type`` → ``Content-Type``, as HTTPHeaders spells names."""
    return "-".join([word.capitalize() for word in raw.decode("latin-1").split("-")])


async def serve_http(
    application: tornado.web.Application,
    scope: Scope,
    receive: Receive,
    send: Send,
    path: str,
    max_body_size: int,
) -> None:
    """Serve one ASGI ``http`` request (``path``: raw, relative to where laf-py is mounted)
    through ``application``."""
    connection = AsgiConnection(scope)
    delegate = application.start_request(None, connection)
    prepared = delegate.headers_received(start_line(scope, path), request_headers(scope))
    if prepared is not None:
        await prepared
    await _read_body(delegate, connection, receive, drain_limit(max_body_size))
    await respond(connection, receive, send)


async def respond(
    connection: AsgiConnection,
    receive: Receive,
    send: Send,
    answering: Coroutine[Any, Any, None] | None = None,
) -> None:
    """Send what the handler writes on ``connection`` until it finishes (``answering``: the
    handler's work, run beside, when it is not already running)."""
    task = asyncio.ensure_future(answering) if answering is not None else None
    watcher: asyncio.Task[None] | None = None
    try:
        while True:
            await connection.flush_to(send)
            if connection.aborted:
                raise ResponseAborted("the response failed after its head was sent")
            if connection.finished and not connection._outbox:
                return
            if watcher is None and connection.started:
                # A response under way (a stream): hear the client leave, so the stream stops.
                watcher = asyncio.ensure_future(_watch_disconnect(receive, connection))
            await connection.wait()
    finally:
        if watcher is not None:
            watcher.cancel()
        if not connection.finished:  # the server cancelled us: the client is gone
            connection.client_left()
        if task is not None and task.done() and not task.cancelled():
            task.result()  # what the handler's own error handling let through


async def _read_body(
    delegate: tornado.httputil.HTTPMessageDelegate,
    connection: AsgiConnection,
    receive: Receive,
    limit: int,
) -> None:
    """Feed the body to the handler as it arrives. Stops early once the handler has answered
    (a 413 sent before the body, a refused preflight) or past ``limit``: a body that large is
    not read to the end, and the ASGI server closes the connection after the answer."""
    received = 0
    while not connection.finished:
        message = await receive()
        if message["type"] == "http.disconnect":
            delegate.on_connection_close()
            connection.client_left()
            connection.finished = True
            return
        chunk = message.get("body", b"")
        if chunk:
            received += len(chunk)
            if received > limit:
                break
            flow = delegate.data_received(chunk)
            if flow is not None:
                await flow
        if not message.get("more_body", False):
            break
    if not connection.finished:
        delegate.finish()


async def _watch_disconnect(receive: Receive, connection: AsgiConnection) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            if not connection.finished:
                connection.client_left()
            return
