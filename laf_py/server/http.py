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

from typing import Any
from urllib.parse import unquote

import tornado.httputil
import tornado.web

from ..cloud.tokens import bearer_token
from ..core import body as bodies
from ..core.context import FunctionContext
from ..core.failures import report_failure
from ..core.response import render
from ..exceptions import HTTPError
from .base import INVALID_TOKEN, BaseHandler

__all__ = [
    "PREFIX",
    "FunctionHandler",
    "HealthHandler",
    "allowed_methods",
    "drain_limit",
    "function_name",
    "method_for",
    "name_from_path",
    "request_header",
]

PREFIX = "/fn/"
NO_NAME = "Function name missing: call /fn/<name>, for example /fn/hello"


@tornado.web.stream_request_body
class FunctionHandler(BaseHandler):
    """Bodies are streamed in so that one over ``--max-body-size`` is refused with 413 as soon
    as it is known to be too large, without being held in memory."""

    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

    def prepare(self) -> None:
        self._chunks: list[bytes] = []
        self._received = 0
        self._too_large = False
        declared = request_header(self.request, "Content-Length") or ""
        limit = self.runtime.settings.max_body_size
        if declared.isdigit() and int(declared) > limit:
            self._too_large = True
            waiting = self.request.headers.get("Expect", "").lower() == "100-continue"
            if waiting or int(declared) > drain_limit(limit):
                # The client waits before sending (curl does, for large bodies), or the body
                # is too large to read and drop: answer now, and the connection closes.
                self._refuse_body()

    def data_received(self, chunk: bytes) -> None:
        if self._too_large:
            return  # read and dropped; the 413 follows once the body is in
        self._received += len(chunk)
        if self._received > self.runtime.settings.max_body_size:
            self._too_large = True
            self._chunks.clear()
        else:
            self._chunks.append(chunk)

    def _refuse_body(self) -> None:
        limit = self.runtime.settings.max_body_size
        self.send_error_json(413, f"Body larger than {limit} bytes")

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

    async def _call(self, name: str | None) -> None:
        if self.activity.draining:
            return self.send_error_json(503, "Server is shutting down", Connection="close")
        if name == "":
            return self.send_error_json(404, NO_NAME)
        function = self.runtime.registry.public(name) if name is not None else None
        if function is None or name is None:
            shown = self.request.path.removeprefix(PREFIX) if name is None else name
            return self.send_error_json(404, f"Function {shown!r} not found")
        if function.error is not None:
            return self.send_error_json(500, f"Function {name!r} failed to load; see server log")
        method = method_for(function.methods, self.request.method or "GET")
        if method is None:
            allow = ", ".join(sorted(allowed_methods(function.methods or frozenset())))
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
            rendered = render(result, ctx.response_if_touched)
        except Exception as exc:
            status, message = report_failure(exc, name, ctx.request_id)
            return self.send_error_json(status, message)

        self.set_status(rendered.status)
        for header, value in rendered.headers.items():
            self.set_header(header, value)
        if rendered.body and rendered.status != 204:
            self.finish(rendered.body)
        else:
            self.clear_header("Content-Type")
            self.finish()  # Tornado refuses even an empty body with 204

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
