"""HTTP functions: ``/fn/<name>`` → ``functions/<name>.py``.

- ``/fn/<name>/`` (one trailing slash) is the same function, served as it is rather than
  redirected: a redirect would fail clients that do not follow redirects, and some clients
  replay a redirected POST without its body.
- HEAD is a GET without the body: a function that allows GET answers it, run as a GET
  (``ctx.method == "GET"``), so that its status and headers, Content-Length included, are
  exactly those of the GET. Only a function that lists ``HEAD`` in its ``methods`` sees
  ``ctx.method == "HEAD"``: it asked to handle HEAD itself.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable
from typing import Any
from urllib.parse import unquote, urlsplit

import tornado.httputil
import tornado.web
from tornado.log import access_log

from ..cloud.tokens import bearer_token, hide_tokens, hide_tokens_in_uri
from ..core import body as bodies
from ..core.context import FunctionContext, new_request_id
from ..core.failures import report_failure
from ..core.registry import DEFAULT, Function, FunctionRegistry, is_public_name
from ..core.response import error_body, render
from ..core.stream import is_stream
from ..exceptions import HTTPError
from . import cors
from .base import INVALID_TOKEN, BaseHandler
from .streaming import stream_body, write_stream

__all__ = [
    "PREFIX",
    "FunctionHandler",
    "HealthHandler",
    "RequestGuard",
    "allowed_methods",
    "content_length",
    "drain_limit",
    "framing_problem",
    "function_for",
    "function_name",
    "method_for",
    "name_from_path",
    "origin_form",
    "request_header",
]

PREFIX = "/fn/"
LISTING_METHODS = "GET, HEAD"  # what /fn/ itself (the list of functions) answers
# What a function without a `methods` setting answers (OPTIONS reaches it too, but a
# browser's preflight never asks for it).
CALLABLE_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"})


@tornado.web.stream_request_body
class FunctionHandler(BaseHandler):
    """Bodies are streamed in so that one over ``--max-body-size`` is refused with 413 as soon
    as it is known to be too large, without being held in memory."""

    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

    _cors_origin: str | None = None  # an allowed cross-origin request's Origin
    _function_label: str | None = None  # the function this request reached, for metrics

    def set_default_headers(self) -> None:
        # Also run by clear(), so every answer keeps its CORS headers, errors included.
        if self._cors_origin is not None:
            cors.allow(self, self._cors_origin, self.runtime.settings.allow_credentials)

    def prepare(self) -> None:
        self._chunks: list[bytes] = []
        self._received = 0
        self._too_large = False
        origin = cors.cross_origin(self)
        if origin is not None and not self._cross_origin(origin):
            return
        declared = request_header(self.request, "Content-Length")
        if declared is None:
            return
        try:
            length = content_length(declared)
        except ValueError:
            return  # RequestGuard refuses these before any handler runs
        limit = self.runtime.settings.max_body_size
        if length > limit:
            self._too_large = True
            waiting = self.request.headers.get("Expect", "").lower() == "100-continue"
            if waiting or length > drain_limit(limit):
                # The client waits before sending (curl does, for large bodies), or the body
                # is too large to read and drop: answer now, and the connection closes.
                # Without the header Tornado reads no body (and logs no "Content-Length too
                # long" after our 413).
                del self.request.headers["Content-Length"]
                self._refuse_body(Connection="close")

    def _cross_origin(self, origin: str) -> bool:
        """Apply the origin policy (server/cors.py) to a cross-origin request; False when it
        has been answered here: refused, or a preflight."""
        settings = self.runtime.settings
        preflight = cors.is_preflight(self)
        if not cors.origin_allowed(origin, settings.allowed_origins):
            what = "a CORS preflight" if preflight else "a cross-origin request"
            self.send_error_json(403, cors.refusal(self, origin, what))
            return False
        self._cors_origin = origin
        cors.allow(self, origin, settings.allow_credentials)
        if not preflight:
            return True
        name = function_name(self.request.path)
        function = self._function_for(name) if name else None
        if function is None:
            shown = self.request.path.removeprefix(PREFIX) if name is None else name
            self.send_error_json(404, f"Function {shown!r} not found")
            return False
        methods = allowed_methods(function.methods) if function.methods else CALLABLE_METHODS
        self.set_status(204)
        cors.preflight_headers(self, methods)
        self.finish()
        return False

    def _function_for(self, name: str) -> Function | None:
        return function_for(self.runtime.registry, name)

    def data_received(self, chunk: bytes) -> None:
        if self._too_large:
            return  # read and dropped; the 413 follows once the body is in
        self._received += len(chunk)
        if self._received > self.runtime.settings.max_body_size:
            self._too_large = True
            self._chunks.clear()
        else:
            self._chunks.append(chunk)

    def _refuse_body(self, **headers: str) -> None:
        limit = self.runtime.settings.max_body_size
        self.send_error_json(413, f"Body larger than {limit} bytes", **headers)

    def decode_argument(self, value: bytes, name: str | None = None) -> str:
        # The name is taken from the raw path (name_from_path); Tornado's strict decoding of
        # the route's group would answer 400 for escapes that are not UTF-8, not 404.
        return value.decode("latin-1")

    async def get(self, _raw_name: str) -> None:
        if self._finished:
            return
        if self._too_large:
            # Only now, with the body read: Tornado closes a connection whose request is
            # answered before its body has arrived, and a client still sending would get a
            # reset instead of the 413.
            return self._refuse_body()
        self.request.body = b"".join(self._chunks)
        self.activity.begin_request()
        try:
            await self._call(function_name(self.request.path))
        finally:
            self.activity.end_request()

    head = post = put = patch = delete = options = get

    def compute_etag(self) -> None:
        return None  # functions are dynamic; hashing every body would only cost time

    def method_not_allowed(self) -> None:
        """A method Tornado does not pass on (TRACE, PROPFIND, ...): 404 for an unknown
        function, as for any method; else 405 with the methods the function takes."""
        if self.refuse_disallowed_host():
            return
        name = function_name(self.request.path)
        if name == "":
            refused = self.request.method
            return self.send_error_json(405, f"Method {refused} not allowed", Allow=LISTING_METHODS)
        function = self.runtime.registry.public(name) if name else None
        if function is None:
            shown = self.request.path.removeprefix(PREFIX) if name is None else name
            return self.send_error_json(404, f"Function {shown!r} not found")
        refused = self.request.method
        allow = self._allow(function.methods)
        self.send_error_json(405, f"Method {refused} not allowed", Allow=allow)

    def _allow(self, methods: frozenset[str] | None) -> str:
        """``Allow`` of a 405: what the function takes, of what this handler serves."""
        allowed = allowed_methods(methods) if methods is not None else self.SUPPORTED_METHODS
        return ", ".join(sorted(m for m in self.SUPPORTED_METHODS if m in allowed))

    async def _call(self, name: str | None) -> None:
        if self.activity.draining:
            return self.send_error_json(503, "Server is shutting down", Connection="close")
        if name == "":
            return self._list_functions()
        function = self._function_for(name) if name is not None else None
        if function is None or name is None:
            shown = self.request.path.removeprefix(PREFIX) if name is None else name
            return self.send_error_json(404, f"Function {shown!r} not found")
        self._function_label = function.name
        if function.error is not None:
            failed = function.name if function.name == DEFAULT else name
            return self.send_error_json(500, f"Function {failed!r} failed to load; see server log")
        method = method_for(function.methods, self.request.method or "GET")
        if method is None:
            allow = self._allow(function.methods)
            refused = self.request.method
            return self.send_error_json(405, f"Method {refused} not allowed", Allow=allow)
        interceptor = self.runtime.interceptor
        if interceptor is not None and interceptor.error is not None:
            # Fail closed: an interceptor usually guards access.
            return self.send_error_json(500, "Interceptor failed to load; see server log")

        ok, user = self.authenticate(bearer_token(request_header(self.request, "Authorization")))
        if not ok:
            return self.send_error_json(401, INVALID_TOKEN, **{"WWW-Authenticate": "Bearer"})

        ctx = FunctionContext(
            method,
            name,
            headers=self.request.headers,
            query=bodies.parse_query(self.request.query),
            user=user,
            request_id=self.request_id,
        )
        try:
            ctx.body = self._body()
            result, _ = await self.runtime.invoker.call(function, ctx, interceptor)
        except Exception as exc:  # the invoker counts the failures of the call itself
            return self._failed(exc, name, ctx)
        await self._respond(result, function, name, ctx)

    async def finish_call(
        self,
        function: Function,
        name: str,
        ctx: FunctionContext,
        result: Any = None,
        failure: Exception | None = None,
    ) -> None:
        """Answer a call that :mod:`~laf_py.server.fast_http` made without a handler but
        does not answer itself (a stream, an error, a response out of the ordinary), as
        :meth:`get` would have: ``result`` is what the function returned, or ``failure``
        what the call raised. The request began there (Activity.begin_request); it ends here."""
        self._function_label = function.name
        self._request_id = ctx.request_id
        self.set_header("X-Request-Id", ctx.request_id)
        try:
            try:
                if failure is not None:
                    self._failed(failure, name, ctx)
                else:
                    await self._respond(result, function, name, ctx)
                if not self._finished:
                    self.finish()
            except Exception as exc:  # as RequestHandler._execute does
                self._handle_request_exception(exc)
        finally:
            self.activity.end_request()

    def _failed(self, exc: Exception, name: str, ctx: FunctionContext) -> None:
        status, message = report_failure(exc, name, ctx.request_id, ctx=ctx)
        self.send_error_json(status, message)

    async def _respond(
        self, result: Any, function: Function, name: str, ctx: FunctionContext
    ) -> None:
        """Write what the function returned."""
        try:
            if is_stream(stream_body(result)):
                return await self._stream(result, ctx, function.timeout)
            rendered = render(result, ctx.response_if_touched)
        except Exception as exc:
            if self.runtime.metrics is not None:  # e.g. a value that is not JSON
                self.runtime.metrics.function_failed(function.name, exc)
            return self._failed(exc, name, ctx)

        self.set_status(rendered.status)
        for header, value in rendered.headers.items():
            self.set_header(header, value)
        if rendered.body and rendered.status != 204:
            self.finish(rendered.body)
        else:
            self.clear_header("Content-Type")
            self.finish()  # Tornado refuses even an empty body with 204

    def on_finish(self) -> None:
        """Count the answered request for /_/metrics (a streamed one too: it finishes here)."""
        metrics = self.runtime.metrics
        if metrics is not None:
            label = self._function_label
            if label is None:  # answered before _call (413, a preflight, 405, 404): look it up
                name = function_name(self.request.path)
                function = self._function_for(name) if name else None
                label = function.name if function is not None else None
            request = self.request
            status = self.get_status()
            metrics.http_request(label, request.method or "", status, request.request_time())

    def _list_functions(self) -> None:
        """``GET /fn/``: the names of the functions there are, so that a developer who
        opens /fn/ sees what to call; files that fail to load are listed apart."""
        if self.request.method not in ("GET", "HEAD"):
            refused = self.request.method
            return self.send_error_json(405, f"Method {refused} not allowed", Allow=LISTING_METHODS)
        public = [f for f in self.runtime.registry.functions() if is_public_name(f.name)]
        listing: dict[str, Any] = {"functions": [f.name for f in public if f.error is None]}
        failed = [f.name for f in public if f.error is not None]
        if failed:
            listing["failed"] = failed  # calling one answers 500 until it is fixed
        if not public:
            folder = self.runtime.registry.root
            listing["message"] = (
                f"No functions yet: add a .py file to {folder} (each is served at {PREFIX}<name>)"
            )
        self.set_header("Cache-Control", "no-cache")
        self.finish(listing)

    _gone: asyncio.Future[None] | None = None
    waiting_for_item: asyncio.Task[Any] | None = None  # a stream awaiting its next item

    async def _stream(self, result: Any, ctx: FunctionContext, timeout: float | None) -> None:
        """A generator or EventStream: written as it is produced (server/streaming.py)."""
        self._gone = asyncio.get_running_loop().create_future()
        runtime = self.runtime
        limit = timeout or runtime.settings.timeout
        await write_stream(self, result, ctx, limit, runtime.threads, self._gone)

    def on_connection_close(self) -> None:
        super().on_connection_close()
        if self._gone is not None and not self._gone.done():
            self._gone.set_result(None)
            if self.waiting_for_item is not None:
                self.waiting_for_item.cancel()  # streaming._next: the generator stops at once

    def _body(self) -> Any:
        if not self.request.body:
            return None
        content_type = self.request.headers.get("Content-Type", "")
        media_type, _ = bodies.split_content_type(content_type)
        if media_type == "multipart/form-data":
            return self._multipart_form()
        return bodies.parse_body(content_type, self.request.body)

    def _multipart_form(self) -> dict[str, Any]:
        """Fields as str; files as {"filename", "content_type", "body"}. Last value wins."""
        request = self.request
        try:
            tornado.httputil.parse_body_arguments(  # streamed bodies are not parsed by Tornado
                request.headers.get("Content-Type", ""),
                request.body,
                request.body_arguments,
                request.files,
                request.headers,
            )
        except tornado.httputil.HTTPInputError:
            raise HTTPError(400, "Malformed multipart/form-data body") from None
        if not request.body_arguments and not request.files:
            # Tornado only logs a warning for a body it cannot parse.
            raise HTTPError(400, "Malformed multipart/form-data body")
        form: dict[str, Any] = {
            key: values[-1].decode("utf-8", "replace")
            for key, values in self.request.body_arguments.items()
        }
        for key, files in self.request.files.items():
            file = files[-1]
            form[key] = {
                "filename": file.filename,
                "content_type": file.content_type,
                "body": file.body,
            }
        return form


def function_for(registry: FunctionRegistry, name: str) -> Function | None:
    """The function serving ``/fn/<name>``: its own file, or ``__default__`` for a name that
    is well-formed but has none (Laf's fallback; reserved ``_`` names never)."""
    function = registry.public(name)
    if function is None and is_public_name(name):
        function = registry.get(DEFAULT)
    return function


def request_header(request: tornado.httputil.HTTPServerRequest, name: str) -> str | None:
    """``request.headers.get(name)``, without the KeyError that HTTPHeaders.get raises and
    catches for a missing header (most requests have no body and no token)."""
    headers = request.headers
    return headers[name] if name in headers else None  # noqa: SIM401 (see above)


def method_for(methods: frozenset[str] | None, method: str) -> str | None:
    """The ``ctx.method`` a request runs its function with, or None when the function's
    ``methods`` refuse it (405). No ``methods`` allows everything. HEAD runs as GET where GET
    is allowed, unless HEAD is listed itself."""
    if methods is None:
        return "GET" if method == "HEAD" else method
    if method in methods:
        return method
    if method == "HEAD" and "GET" in methods:
        return "GET"
    return None


def allowed_methods(methods: frozenset[str]) -> frozenset[str]:
    """What a 405's ``Allow`` lists: the function's ``methods``, and HEAD where GET is."""
    return methods | {"HEAD"} if "GET" in methods else methods


_DIGITS = re.compile(r"[0-9]+")  # ASCII only: str.isdigit() also takes "²" and Arabic-Indic digits
_LIST = re.compile(r",[ \t]*")


def content_length(value: str) -> int:
    """A ``Content-Length`` value as Tornado reads it: ASCII digits, or the same digits
    repeated in a list (``5, 5``: a duplicated header). ValueError for anything else
    (``+5``, ``5 5``, ``²``, Arabic-Indic digits, ``5, 6``, more digits than ``int()`` takes)."""
    pieces = _LIST.split(value)
    first = pieces[0]
    if not _DIGITS.fullmatch(first) or any(piece != first for piece in pieces):
        raise ValueError(value)
    return int(first)


def framing_problem(headers: tornado.httputil.HTTPHeaders) -> str | None:
    """Why the body of a request with these headers cannot be delimited (Tornado's rules,
    RFC 9112 6.3), or None. Tornado would answer these with a bare 400 once the route's
    handler has started; laf-py answers them before routing (:class:`RequestGuard`)."""
    length = headers["Content-Length"] if "Content-Length" in headers else None  # noqa: SIM401
    if length is not None:
        try:
            content_length(length)
        except ValueError:
            return f"Malformed Content-Length header {length[:40]!r}: expected a number of bytes"
    if "Transfer-Encoding" in headers:
        if length is not None:
            return "A request may not have both Content-Length and Transfer-Encoding"
        encoding = headers["Transfer-Encoding"]
        if encoding.lower() != "chunked":
            return f"Unsupported Transfer-Encoding {encoding[:40]!r}: only chunked is"
    return None


def origin_form(
    start_line: tornado.httputil.RequestStartLine, headers: tornado.httputil.HTTPHeaders
) -> tornado.httputil.RequestStartLine:
    """An absolute-form request target (``GET http://host/fn/echo HTTP/1.1``, as sent to a
    proxy) as the origin form routing expects (``/fn/echo``). The target's authority
    replaces ``Host``, as RFC 9112 3.2.2 requires. Anything else is returned as it came."""
    target = start_line.path
    scheme, separator, _ = target.partition("://")
    if not separator or scheme.lower() not in ("http", "https"):
        return start_line
    try:
        parts = urlsplit(target)
    except ValueError:
        return start_line
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    authority = parts.netloc.rpartition("@")[2]
    if authority:
        headers["Host"] = authority
    return tornado.httputil.RequestStartLine(start_line.method, path, start_line.version)


class RequestGuard(tornado.httputil.HTTPMessageDelegate):
    """What every request goes through before routing (the HTTPServer of
    :mod:`laf_py.server.accept` wraps each request's delegate in one):

    - an absolute-form target is routed by its path (:func:`origin_form`);
    - a request whose body cannot be delimited (:func:`framing_problem`) is answered 400
      here, with laf-py's JSON error and one access line, and the connection closes: no
      handler starts, so none can trip over the header, on any route.
    """

    __slots__ = ("connection", "delegate", "refused")

    def __init__(
        self,
        delegate: tornado.httputil.HTTPMessageDelegate,
        connection: tornado.httputil.HTTPConnection,
    ) -> None:
        self.delegate = delegate
        self.connection = connection
        self.refused = False

    def headers_received(
        self,
        start_line: tornado.httputil.RequestStartLine | tornado.httputil.ResponseStartLine,
        headers: tornado.httputil.HTTPHeaders,
    ) -> Awaitable[None] | None:
        if isinstance(start_line, tornado.httputil.RequestStartLine):
            if start_line.path[:1] != "/":
                start_line = origin_form(start_line, headers)
            if "Content-Length" in headers or "Transfer-Encoding" in headers:
                problem = framing_problem(headers)
                if problem is not None:
                    self._refuse(start_line, headers, problem)
                    return None
        return self.delegate.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        return None if self.refused else self.delegate.data_received(chunk)

    def finish(self) -> None:
        if not self.refused:
            self.delegate.finish()

    def on_connection_close(self) -> None:
        if not self.refused:
            self.delegate.on_connection_close()

    def _refuse(
        self,
        start_line: tornado.httputil.RequestStartLine,
        headers: tornado.httputil.HTTPHeaders,
        problem: str,
    ) -> None:
        started = time.perf_counter()
        self.refused = True
        # Without them Tornado reads no body and has nothing to complain about; the answer
        # goes out before the body was read, so Tornado closes the connection after it.
        for name in ("Content-Length", "Transfer-Encoding"):
            if name in headers:
                del headers[name]
        request_id = new_request_id()
        body = error_body(problem, request_id)
        self.connection.write_headers(
            tornado.httputil.ResponseStartLine("HTTP/1.1", 400, "Bad Request"),
            tornado.httputil.HTTPHeaders(
                {
                    "Content-Type": "application/json",
                    "Content-Length": str(len(body)),
                    "X-Request-Id": request_id,
                    "Connection": "close",
                }
            ),
            body,
        )
        self.connection.finish()
        context = getattr(self.connection, "context", None)
        access_log.warning(
            "%d %s %s (%s) %.2fms",
            400,
            hide_tokens(start_line.method),
            hide_tokens_in_uri(start_line.path),
            getattr(context, "remote_ip", "-"),
            1000.0 * (time.perf_counter() - started),
        )


def drain_limit(max_body_size: int) -> int:
    """Up to this many bytes, a body over the limit is read and dropped before the 413; past
    it the 413 comes at once and the connection closes."""
    return 2 * max_body_size + 65536


def function_name(path: str) -> str | None:
    """The function a ``/fn/...`` path names: :func:`name_from_path`, with one trailing slash
    dropped (``/fn/user/profile/`` → ``"user/profile"``). ``""`` when it names none."""
    name = name_from_path(path)
    return name.removesuffix("/") if name is not None else None


def name_from_path(path: str) -> str | None:
    """``/fn/user/profile`` → ``"user/profile"``. Each segment is percent-decoded on its own,
    so an encoded slash (``%2F``) is data, not a separator, and names no function."""
    raw = path.removeprefix(PREFIX)
    if "%" not in raw:
        return raw  # nothing encoded: the common case, with nothing to decode
    segments = raw.split("/")
    try:
        names = [unquote(segment, errors="strict") for segment in segments]
    except UnicodeDecodeError:
        return None
    if any("/" in name for name in names):
        return None
    return "/".join(names)


class HealthHandler(BaseHandler):
    """``GET /_/healthz``: 200 while serving, 503 once shutdown has begun."""

    def get(self) -> None:
        if self.activity.draining:
            return self.send_error_json(503, "Server is shutting down")
        self.finish({"status": "ok", "sockets": len(self.runtime.sockets)})
