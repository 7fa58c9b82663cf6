"""Plain ``/fn/`` calls under an ASGI server, answered without Tornado's handler.

The rules are those of :mod:`laf_py.server.fast_http`: a request for which every rule of
``FunctionHandler`` gives the obvious answer (``/fn/<name>`` of a function that loaded, a
method it takes, no body, no ``Origin`` or ``Expect``, an allowed ``Host``, a good token or
none, the server not draining) is called here and, when the result is a plain body, answered
with ``http.response.start`` and ``http.response.body``: the same status, headers, access line
and metrics as through the bridge. Any other request goes through the bridge (bridge.py); a
call whose outcome is out of the ordinary (a stream, an error, an empty body) is handed to a
``FunctionHandler`` on the bridge, which answers it as it always has.
"""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Any

import tornado.httputil

from ..core.context import FunctionContext
from ..core.response import render
from ..core.stream import is_stream
from ..server.app import log_access
from ..server.fast_http import VALID_VALUE, FastFunctions, Plain, header_name
from ..server.http import FunctionHandler
from ..server.streaming import stream_body
from .bridge import AsgiConnection, Receive, Scope, Send, request_headers, respond, start_line

__all__ = ["PlainCalls"]

_NO_BODY = frozenset({204, 304})


class PlainCalls:
    """Decides which ASGI requests are plain, and answers them."""

    def __init__(self, functions: FastFunctions) -> None:
        self.functions = functions

    def decide(self, scope: Scope, path: str) -> Plain | None:
        if path[:4] != "/fn/" or scope["method"] not in ("GET", "HEAD", "POST", "DELETE"):
            return None  # the common methods; the bridge serves the others as well
        if scope.get("http_version") != "1.1":
            return None  # HTTP/2 and 3 bodies need no Content-Length: leave them to the bridge
        return self.functions.decide(start_line(scope, path), request_headers(scope))

    async def answer(self, plain: Plain, scope: Scope, receive: Receive, send: Send) -> None:
        functions = self.functions
        runtime = functions.runtime
        started = time.time()
        ctx = plain.context()
        request_id = ctx.request_id
        function = plain.function
        activity = functions.activity
        activity.begin_request()
        try:
            result, _ = await runtime.invoker.call(function, ctx, runtime.interceptor)
        except Exception as exc:
            return await self._hand_over(plain, scope, receive, send, ctx, started, None, exc)
        except BaseException:
            activity.end_request()
            raise
        head = None
        if not is_stream(stream_body(result)):
            try:
                rendered = render(result, ctx.response_if_touched)
            except Exception:
                pass  # the handler reports it, as it would have
            else:
                head = _head(rendered.status, rendered.headers, request_id, rendered.body)
        if head is None:
            return await self._hand_over(plain, scope, receive, send, ctx, started, result)
        status = rendered.status
        method, uri, _ = plain.start_line
        body = b"" if method == "HEAD" else rendered.body  # its Content-Length, not its body
        try:
            await send({"type": "http.response.start", "status": status, "headers": head})
            await send({"type": "http.response.body", "body": body})
        finally:
            seconds = time.time() - started
            client = scope.get("client")
            log_access(status, method, uri, client[0] if client else None, seconds, request_id)
            metrics = runtime.metrics
            if metrics is not None:
                metrics.http_request(function.name, method, status, seconds)
            activity.end_request()

    async def _hand_over(
        self,
        plain: Plain,
        scope: Scope,
        receive: Receive,
        send: Send,
        ctx: FunctionContext,
        started: float,
        result: Any,
        failure: Exception | None = None,
    ) -> None:
        """A ``FunctionHandler`` on the bridge answers the call (FunctionHandler.finish_call),
        as under Tornado (server/fast_http.py)."""
        functions = self.functions
        connection = AsgiConnection(scope)
        request = tornado.httputil.HTTPServerRequest(
            connection=connection, start_line=plain.start_line, headers=plain.headers
        )
        request._start_time = started
        body_read = asyncio.get_running_loop().create_future()  # what a streaming-body
        body_read.set_result(None)  # handler expects of its request (there is no body)
        request._body_future = body_read
        handler = FunctionHandler(
            functions.app, request, runtime=functions.runtime, activity=functions.activity
        )
        handler._transforms = []
        answering = handler.finish_call(plain.function, plain.name, ctx, result, failure)
        await respond(connection, receive, send, answering)


def _head(
    status: int, headers: dict[str, str], request_id: str, body: bytes
) -> list[tuple[bytes, bytes]] | None:
    """The ASGI headers the bridge would send for a rendered result (FunctionHandler's, less
    Tornado's Server and Date); None when the handler should answer."""
    if not body or status in _NO_BODY or not 200 <= status < 600:
        return None
    if len(headers) == 1 and "Content-Type" in headers:  # the usual case, in one step
        value = headers["Content-Type"]
        content_type = _content_type(value) if type(value) is str else None
        if content_type is None:
            return None
        length = str(len(body)).encode()
        return [
            (b"content-type", content_type),
            (b"x-request-id", request_id.encode()),
            (b"content-length", length),
        ]
    # In RequestHandler's order: its defaults (Content-Type replaced by every body's), then
    # X-Request-Id, each of the function's headers replacing one of the same name in place.
    # (Tornado's Server comes first, and is left out unless a function sets its own.)
    lines: dict[str, bytes | None] = {
        "server": None,
        "content-type": b"text/html; charset=UTF-8",
        "x-request-id": request_id.encode(),
    }
    for name, value in headers.items():
        normalized = header_name(name)
        if normalized is None or type(value) is not str or not VALID_VALUE.fullmatch(value):
            return None
        lines[normalized.lower()] = value.encode("latin-1")
    head = [(name.encode(), value) for name, value in lines.items() if value is not None]
    head.append((b"content-length", str(len(body)).encode()))
    return head


@functools.lru_cache(maxsize=64)
def _content_type(value: str) -> bytes | None:
    """A function's ``Content-Type`` as it goes out, or None when the handler should judge it."""
    if not VALID_VALUE.fullmatch(value):
        return None
    return value.encode("latin-1")
