"""The fast path of HTTP functions: a plain ``/fn/<name>`` call answered without a
``RequestHandler``.

Tornado's ``RequestHandler`` and routing are most of what an HTTP call costs (``python
bench/compare.py --only instructions``). Each HTTP connection is served by a
:class:`FastConnection`, Tornado's own ``HTTP1ServerConnection`` with its request loop
replaced: it reads each request head as Tornado does (same ``read_until_regex``, same size limit,
same header timeout), parses it with Tornado's own parsers, and decides cheaply whether the
request is *plain*. A plain request is one for which every rule of ``FunctionHandler`` gives the
obvious answer: HTTP/1.1 kept alive, ``/fn/<name>`` naming a function that loaded, a method it
takes, no body, no ``Origin``, ``Expect`` or ``Connection: close``, an allowed ``Host``, a good
token or none, the server not draining (:meth:`FastFunctions.plain`). Anything else, on any
route, is pushed back into the stream and served by Tornado as before, byte for byte, from
the same bytes.

A plain request's function is called here, in the connection's task and in a copy of its
context (as Tornado's task per request would), and a plain result (a body and a status other
than 204/304, headers with safe values) is written here, with the head ``FunctionHandler`` would
have written (the tests compare them), one access line and the same metrics. Every other
outcome (a stream, an error, an empty body, an unusual header) is handed to a
``FunctionHandler`` made for the request (:meth:`FunctionHandler.finish_call`), which answers it
as it always has.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import re
import time
import types
from collections.abc import Awaitable, Generator
from dataclasses import dataclass
from http.client import responses
from typing import Any, cast

import tornado
import tornado.httputil
import tornado.web
from tornado.http1connection import HTTP1Connection, HTTP1ServerConnection
from tornado.iostream import IOStream, StreamClosedError, UnsatisfiableReadError
from tornado.log import gen_log

from ..cloud.tokens import bearer_token
from ..core.body import parse_query
from ..core.context import FunctionContext, new_request_id
from ..core.registry import Function
from ..core.response import render
from ..core.stream import is_stream
from ..runtime import Runtime
from .activity import Activity
from .app import log_access
from .base import HostPolicy, served_host
from .http import PREFIX, FunctionHandler, function_for, function_name, method_for
from .streaming import stream_body

__all__ = ["VALID_VALUE", "FastConnection", "FastFunctions", "Plain", "header_name"]

HEAD_END = b"\r?\n\r?\n"  # what Tornado reads a request head up to
FAST_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"})
# With these a request is not plain: a body, a browser's cross-origin rules, a 100-continue.
NOT_PLAIN = ("Content-Length", "Transfer-Encoding", "Expect", "Origin")
SERVER = f"TornadoServer/{tornado.version}"
DEFAULT_TYPE = "text/html; charset=UTF-8"  # RequestHandler.clear()'s, replaced by every body's
# Response headers Tornado treats specially: a response with one goes to the handler.
SPECIAL = frozenset({"Content-Length", "Transfer-Encoding", "Connection", "Etag"})
VALID_VALUE = re.compile(r"[\x09\x20-\x7e\x80-\xff]*")  # RequestHandler._VALID_HEADER_CHARS
_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


@dataclass(slots=True)
class Plain:
    """A plain request, decided: what the call needs."""

    start_line: tornado.httputil.RequestStartLine
    headers: tornado.httputil.HTTPHeaders
    name: str
    function: Function
    method: str  # ctx.method (HEAD runs as GET)
    query: str
    user: dict[str, Any] | None

    def context(self) -> FunctionContext:
        """The call's ``ctx``, with a request id of its own."""
        return FunctionContext(
            self.method,
            self.name,
            headers=self.headers,
            query=parse_query(self.query),
            user=self.user,
            request_id=new_request_id(),
        )


class FastFunctions:
    """Decides which requests are plain, and holds what answering them needs."""

    def __init__(self, app: tornado.web.Application, runtime: Runtime, activity: Activity) -> None:
        self.app = app
        self.runtime = runtime
        self.activity = activity
        self.hosts = HostPolicy.of(runtime.settings)
        self._date_second = -1
        self._date = ""

    def plain(self, head: bytes) -> Plain | None:
        """The request in ``head`` if it is plain (see the module's docstring), else None.
        No side effect: a request that is not plain is served by Tornado from the start."""
        # As HTTP1Connection._parse_headers, with Tornado's own parsers: what it refuses
        # (a 400) is left to it.
        text = head.decode("latin1").lstrip("\r\n")
        eol = text.find("\n")
        try:
            start_line = tornado.httputil.parse_request_start_line(text[:eol].rstrip("\r"))
            headers = tornado.httputil.HTTPHeaders.parse(text[eol:])
        except tornado.httputil.HTTPInputError:
            return None
        if start_line.version != "HTTP/1.1":
            return None
        return self.decide(start_line, headers)

    def decide(
        self, start_line: tornado.httputil.RequestStartLine, headers: tornado.httputil.HTTPHeaders
    ) -> Plain | None:
        """Whether a parsed request is plain (the same rules under an ASGI server)."""
        method, uri, _ = start_line
        if method not in FAST_METHODS or uri[:4] != PREFIX:
            return None
        # The parsed fields, looked up directly (HTTPHeaders normalizes the name at each
        # lookup, and this runs for every request): the lists of values by normalized name,
        # which every Tornado version keeps.
        fields = headers._as_list
        for name in NOT_PLAIN:
            if name in fields:
                return None
        if "Connection" in fields and headers["Connection"].lower() == "close":
            return None
        host = headers["Host"] if "Host" in fields else None
        if host is None or not _valid_host(host):
            return None  # Tornado answers 400
        if self.runtime.settings.trust_proxy_headers:
            host = served_host(headers, True)
        if host is not None and not self.hosts.allows(host):
            return None
        if self.activity.draining:
            return None
        path, _, query = uri.partition("?")
        function_path = function_name(path)
        if not function_path:
            return None
        function = function_for(self.runtime.registry, function_path)
        if function is None or function.error is not None:
            return None
        ctx_method = method_for(function.methods, method)
        if ctx_method is None:
            return None
        interceptor = self.runtime.interceptor
        if interceptor is not None and interceptor.error is not None:
            return None
        user = None
        if "Authorization" in fields:
            token = bearer_token(headers["Authorization"])
            if token is not None:
                user = self.runtime.verify_token(token)
                if user is None:
                    return None  # 401
        return Plain(start_line, headers, function_path, function, ctx_method, query, user)

    def date(self) -> str:
        """The ``Date`` header, made once a second."""
        now = time.time()
        second = int(now)
        if second != self._date_second:
            self._date = tornado.httputil.format_timestamp(now)
            self._date_second = second
        return self._date


@functools.lru_cache(maxsize=1024)
def _valid_host(host: str) -> bool:
    """Whether Tornado takes this ``Host`` (HTTPServerRequest refuses the others with 400)."""
    try:
        tornado.httputil.HTTPServerRequest(
            start_line=tornado.httputil.RequestStartLine("GET", "/", "HTTP/1.1"),
            headers=tornado.httputil.HTTPHeaders({"Host": host}),
        )
    except tornado.httputil.HTTPInputError:
        return False
    return True


@functools.lru_cache(maxsize=256)
def header_name(name: str) -> str | None:
    """A response header name as Tornado writes it (``x-foo`` → ``X-Foo``), or None when the
    handler should deal with it."""
    if not _NAME.fullmatch(name):
        return None
    normalized = "-".join([word.capitalize() for word in name.split("-")])
    return None if normalized in SPECIAL else normalized


def _head(
    status: int, headers: dict[str, str], date: str, request_id: str, length: int
) -> bytes | None:
    """The response head ``FunctionHandler`` would write for a rendered result (the order of
    ``RequestHandler.clear()``, then ``X-Request-Id``, then the function's headers, each
    replacing one of the same name in its place, then ``Content-Length``); None when the
    handler should write it."""
    if status in (204, 304) or not 200 <= status < 600:
        return None
    reason = responses.get(status, "Unknown")
    if len(headers) == 1 and "Content-Type" in headers:  # the usual case, in one format
        content_type = headers["Content-Type"]
        if type(content_type) is not str or not VALID_VALUE.fullmatch(content_type):
            return None
        return (
            f"HTTP/1.1 {status} {reason}\r\nServer: {SERVER}\r\nContent-Type: {content_type}\r\n"
            f"Date: {date}\r\nX-Request-Id: {request_id}\r\nContent-Length: {length}\r\n\r\n"
        ).encode("latin1")
    lines = {"Server": SERVER, "Content-Type": DEFAULT_TYPE, "Date": date}
    lines["X-Request-Id"] = request_id
    for name, value in headers.items():
        normalized = header_name(name)
        if normalized is None or type(value) is not str or not VALID_VALUE.fullmatch(value):
            return None
        lines[normalized] = value
    lines["Content-Length"] = str(length)
    text = "".join([f"{name}: {value}\r\n" for name, value in lines.items()])
    return f"HTTP/1.1 {status} {reason}\r\n{text}\r\n".encode("latin1")


class FastConnection(HTTP1ServerConnection):
    """One HTTP connection: plain ``/fn/`` calls answered here, the rest by Tornado."""

    def __init__(
        self,
        stream: IOStream,
        params: Any,
        context: Any,
        functions: FastFunctions,
        xheaders: bool,
    ) -> None:
        super().__init__(stream, params, context)
        self.functions = functions
        self.xheaders = xheaders
        self._delegate: tornado.httputil.HTTPServerConnectionDelegate | None = None
        self._calling = False  # a call of the fast path is waiting for something
        self._ended = False  # the server has been told this connection ended
        self._nodelay = False

    async def close(self) -> None:
        self.stream.close()
        if self._calling:
            # As with a handler's task: the call goes on, its answer goes nowhere; the loop
            # ends when it returns. Shutdown does not wait for it (nor did it for Tornado's),
            # and the server forgets the connection now (close_all_connections loops until
            # it has none; the stream's close callback would only run later).
            self._end()
            return
        await super().close()

    def _end(self) -> None:
        """Tell the server this connection is gone (once)."""
        if not self._ended and self._delegate is not None:
            self._ended = True
            self._delegate.on_close(self)

    async def _server_request_loop(
        self, delegate: tornado.httputil.HTTPServerConnectionDelegate
    ) -> None:
        self._delegate = delegate
        stream = self.stream
        params = self.params
        loop = asyncio.get_running_loop()
        plain = self.functions.plain
        try:
            while True:
                head = cast(
                    "asyncio.Future[bytes]",
                    stream.read_until_regex(HEAD_END, max_bytes=params.max_header_size),
                )
                if head.done():
                    await asyncio.sleep(0)  # pipelined: let other connections have a turn
                    data = head.result()
                elif params.header_timeout is None:
                    data = await head
                else:
                    # Tornado's header timeout: one deadline for the whole head.
                    timer = loop.call_at(loop.time() + params.header_timeout, stream.close)
                    try:
                        data = await head
                    finally:
                        timer.cancel()
                request = plain(data) if not params.no_keep_alive else None
                if request is None:
                    stream.unread(data)  # type: ignore[attr-defined]
                    if not await self._tornado_request(delegate):
                        return
                elif not await self._call(request):
                    return
        except (StreamClosedError, UnsatisfiableReadError, asyncio.CancelledError):
            return
        except Exception:
            gen_log.error("Uncaught exception", exc_info=True)
            stream.close()
        finally:
            self._end()

    async def _tornado_request(
        self, delegate: tornado.httputil.HTTPServerConnectionDelegate
    ) -> bool:
        """One request served by Tornado (HTTP1ServerConnection's own loop, one turn)."""
        if self._nodelay:
            self.stream.set_nodelay(False)  # as Tornado leaves it between requests
            self._nodelay = False
        conn = HTTP1Connection(self.stream, False, self.params, self.context)
        request_delegate = delegate.start_request(self, conn)
        try:
            ret = await conn.read_response(request_delegate)
        except (StreamClosedError, UnsatisfiableReadError, asyncio.CancelledError):
            return False
        except Exception:
            gen_log.error("Uncaught exception", exc_info=True)
            conn.close()
            return False
        if not ret:
            return False
        await asyncio.sleep(0)
        return True

    async def _call(self, request: Plain) -> bool:
        """Call a plain request's function and answer; False when the connection is done."""
        functions = self.functions
        runtime = functions.runtime
        started = time.time()
        context: Any = self.context  # tornado.httpserver._HTTPRequestContext
        remote_ip = getattr(context, "remote_ip", None)
        protocol = getattr(context, "protocol", "http")
        if self.xheaders:  # as Tornado's _ProxyAdapter: for this request only
            context._apply_xheaders(request.headers)
            remote_ip, protocol = context.remote_ip, context.protocol
            context._unapply_xheaders()
        ctx = request.context()
        request_id = ctx.request_id
        function = request.function
        activity = functions.activity
        activity.begin_request()
        # Its own context, as the task Tornado starts per request has.
        call_context = contextvars.copy_context()
        try:
            work = runtime.invoker.call(function, ctx, runtime.interceptor)
            try:
                waiting_on = call_context.run(work.send, None)
            except StopIteration as done:
                result = done.value[0]
            else:
                self._calling = True
                self.stream.set_close_callback(self._end)
                try:
                    result = (await _in_context(call_context, work, waiting_on))[0]
                finally:
                    self._calling = False
                    if not self.stream.closed():
                        self.stream.set_close_callback(None)
        except Exception as exc:
            where = (remote_ip, protocol, started)
            return await self._hand_over(request, ctx, call_context, where, None, exc)
        except BaseException:
            activity.end_request()
            raise
        head = None
        body = b""
        if not is_stream(stream_body(result)):
            try:
                rendered = render(result, ctx.response_if_touched)
            except Exception:
                pass  # the handler reports it, as it would have
            else:
                body = rendered.body
                if body:
                    head = _head(
                        rendered.status,
                        rendered.headers,
                        functions.date(),
                        request_id,
                        len(body),
                    )
        if head is None:
            where = (remote_ip, protocol, started)
            return await self._hand_over(request, ctx, call_context, where, result)
        stream = self.stream
        written: Awaitable[None] | None = None
        if not stream.closed():
            if not self._nodelay:
                stream.set_nodelay(True)  # the whole answer in one write: send it now
                self._nodelay = True
            written = stream.write(head if request.start_line.method == "HEAD" else head + body)
        status = rendered.status
        seconds = time.time() - started
        method, uri, _ = request.start_line
        log_access(status, method, uri, remote_ip, seconds, request_id)
        metrics = runtime.metrics
        if metrics is not None:
            metrics.http_request(function.name, method, status, seconds)
        activity.end_request()
        if written is None:
            return False
        await written  # as Tornado: the next request is read once this answer is out
        return True

    async def _hand_over(
        self,
        request: Plain,
        ctx: FunctionContext,
        call_context: contextvars.Context,
        where: tuple[str | None, str, float],  # remote_ip, protocol, when the head was read
        result: Any,
        failure: Exception | None = None,
    ) -> bool:
        """Let a ``FunctionHandler`` answer the call (FunctionHandler.finish_call), in a task
        of its own as Tornado runs a handler; then go on as Tornado's request loop does."""
        if self._nodelay:
            self.stream.set_nodelay(False)
            self._nodelay = False
        stream = self.stream
        functions = self.functions
        # The connection as Tornado's would be once it has read this request (no body).
        conn = HTTP1Connection(stream, False, self.params, self.context)
        conn._request_start_line = request.start_line
        conn._request_headers = request.headers
        conn._disconnect_on_finish = False
        conn._read_finished = True
        server_request = tornado.httputil.HTTPServerRequest(
            connection=conn,
            start_line=request.start_line,
            headers=request.headers,
            server_connection=self,
        )
        server_request.remote_ip, server_request.protocol, server_request._start_time = where
        body_read = asyncio.get_running_loop().create_future()  # what a streaming-body handler
        body_read.set_result(None)  # expects of its request (there is no body)
        server_request._body_future = body_read
        runtime, activity = functions.runtime, functions.activity
        handler = FunctionHandler(functions.app, server_request, runtime=runtime, activity=activity)
        handler._transforms = []
        answer = handler.finish_call(request.function, request.name, ctx, result, failure)
        task = asyncio.get_running_loop().create_task(answer, context=call_context)
        task.add_done_callback(_log_failure)
        if not conn._finish_future.done() and not stream.closed():
            stream.set_close_callback(conn._on_connection_close)
            await conn._finish_future
        conn._clear_callbacks()
        return conn.stream is not None and not stream.closed()


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        gen_log.error("Uncaught exception", exc_info=task.exception())


@types.coroutine
def _in_context(
    context: contextvars.Context, work: Any, waiting_on: Any
) -> Generator[Any, Any, Any]:
    """The rest of a coroutine whose first step ran in ``context``: each later step runs
    there too, as it would in a task of its own."""
    while True:
        try:
            sent = yield waiting_on
        except GeneratorExit:
            work.close()
            raise
        except BaseException as exc:  # thrown in by the task (cancellation): pass it on
            try:
                waiting_on = context.run(work.throw, exc)
            except StopIteration as done:
                return done.value
            continue
        try:
            waiting_on = context.run(work.send, sent)
        except StopIteration as done:
            return done.value
