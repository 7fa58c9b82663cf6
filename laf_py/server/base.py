"""What every laf-py handler shares: JSON errors with a request id, the ``Host`` check
(``--allowed-hosts``), token authentication, and error logs without tokens."""

from __future__ import annotations

import fnmatch
import functools
import inspect
import ipaddress
import logging
import re
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

import tornado.web
from tornado.log import app_log, gen_log

from ..cloud.tokens import hide_tokens, hide_tokens_in_uri
from ..config import Settings
from ..core.context import new_request_id
from ..core.response import error_body
from ..runtime import Runtime
from .activity import Activity

__all__ = [
    "INVALID_TOKEN",
    "LOOPBACK_HOSTS",
    "BaseHandler",
    "HostPolicy",
    "NotFoundHandler",
    "host_name",
    "host_refusal",
    "served_host",
]

log = logging.getLogger("laf_py")

INVALID_TOKEN = "Invalid or expired token"

# -- Host: which names this server answers to (DNS-rebinding protection) ----------------------

# Served by default when bound to a loopback address: a page of another site whose name an
# attacker points at 127.0.0.1 (DNS rebinding) sends its own name as Host, and is refused.
LOOPBACK_HOSTS = ("localhost", "*.localhost", "127.0.0.1", "::1")
_HOST = re.compile(r"(?P<name>[a-z0-9_.-]+|\[[0-9a-f:.]+\])(?::[0-9]*)?")


def host_name(host: str) -> str | None:
    """The name in a ``Host`` value (lowercase; no port, brackets or trailing dot), or None
    when it is not a host name or address."""
    match = _HOST.fullmatch(host.strip().lower())
    if match is None:
        return None
    name = match.group("name").strip("[]").removesuffix(".")
    return name or None


def is_loopback(address: str) -> bool:
    """Whether ``--host`` binds to this machine only."""
    name = address.strip("[]").lower().removesuffix(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class HostPolicy:
    """The ``Host`` values a server answers: ``--allowed-hosts`` (default: the loopback names
    when bound to loopback, any name otherwise), and always the address it is bound to."""

    __slots__ = ("_any", "_names", "_patterns")

    def __init__(self, patterns: tuple[str, ...], bound: str) -> None:
        patterns = tuple(p.strip().strip("[]").lower().removesuffix(".") for p in patterns)
        self._any = "*" in patterns
        names = {p for p in patterns if "*" not in p}
        bound_name = bound.strip().strip("[]").lower().removesuffix(".")
        try:
            unspecified = ipaddress.ip_address(bound_name).is_unspecified
        except ValueError:
            unspecified = False
        if bound_name and not unspecified:
            names.add(bound_name)
        self._names = frozenset(names)
        self._patterns = tuple(p for p in patterns if "*" in p and p != "*")

    @staticmethod
    def of(settings: Settings) -> HostPolicy:
        return _policy(settings.allowed_hosts, settings.host)

    def allows(self, host: str) -> bool:
        """Whether a ``Host`` (or ``X-Forwarded-Host``) value names this server."""
        return _allows(self, host)

    def _allows(self, host: str) -> bool:
        name = host_name(host)
        if name is None:
            return False  # not a host at all: refused even with "*"
        if self._any or name in self._names:
            return True
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self._patterns)


def served_host(headers: Mapping[str, str], trust_proxy_headers: bool) -> str | None:
    """The host a request asked for: ``Host``, or with ``--trust-proxy-headers`` the last
    value of the ``X-Forwarded-Host`` the proxy in front set. None without either."""
    if trust_proxy_headers and "X-Forwarded-Host" in headers:
        forwarded = headers["X-Forwarded-Host"].rsplit(",", 1)[-1].strip()
        if forwarded:
            return forwarded
    return headers["Host"] if "Host" in headers else None  # noqa: SIM401 (HTTPHeaders.get raises inside)


def host_refusal(settings: Settings, host: str | None, method: str, path: str) -> str | None:
    """Why a request for ``host`` is refused (``--allowed-hosts``), logged once; None when it
    is served. A request without ``Host`` (HTTP/1.0) is not checked: browsers always send one."""
    if host is None or HostPolicy.of(settings).allows(host):
        return None
    shown = hide_tokens(host[:200])
    log.warning(
        "refused %s %s: Host %r is not allowed (see --allowed-hosts / LAF_ALLOWED_HOSTS)",
        method,
        hide_tokens_in_uri(path),
        shown,
    )
    return f"Host {shown!r} is not allowed: add it to --allowed-hosts (LAF_ALLOWED_HOSTS)"


@functools.lru_cache(maxsize=8)
def _policy(allowed_hosts: tuple[str, ...] | None, bound: str) -> HostPolicy:
    if allowed_hosts is None:
        allowed_hosts = LOOPBACK_HOSTS if is_loopback(bound) else ("*",)
    return HostPolicy(allowed_hosts, bound)


@functools.lru_cache(maxsize=1024)
def _allows(policy: HostPolicy, host: str) -> bool:
    # Cached: the same few Host values come again and again (bounded, whatever clients send).
    return policy._allows(host)


def _checks_host_first(prepare: Callable[..., Any]) -> Callable[..., Any]:
    """``prepare`` of a handler, run only once the request's ``Host`` is allowed."""
    if inspect.iscoroutinefunction(prepare):

        @functools.wraps(prepare)
        async def checked_async(self: BaseHandler) -> None:
            if not self.refuse_disallowed_host():
                await prepare(self)

        return checked_async

    @functools.wraps(prepare)
    def checked(self: BaseHandler) -> Any:
        if self.refuse_disallowed_host():
            return None
        return prepare(self)

    return checked


class BaseHandler(tornado.web.RequestHandler):
    runtime: Runtime
    activity: Activity

    def initialize(self, runtime: Runtime, activity: Activity) -> None:
        self.runtime = runtime
        self.activity = activity

    _request_id: str | None = None

    @property
    def request_id(self) -> str:
        """This request's id, made on first use and sent back as ``X-Request-Id``."""
        if self._request_id is None:
            self._request_id = new_request_id()
            self.set_header("X-Request-Id", self._request_id)
        return self._request_id

    # -- Host -------------------------------------------------------------------------------

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Every route checks Host first: a handler's own prepare() runs only after the check,
        # so no handler can forget it (one without prepare() inherits the check below).
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("prepare")
        if own is not None:
            cls.prepare = _checks_host_first(own)  # type: ignore[method-assign]

    def prepare(self) -> None:
        self.refuse_disallowed_host()

    _host_refused: bool | None = None

    @property
    def served_host(self) -> str | None:
        """The host the client asked for: ``Host``, or with ``--trust-proxy-headers`` the
        ``X-Forwarded-Host`` the proxy in front set (its last value). None without either."""
        return served_host(self.request.headers, self.runtime.settings.trust_proxy_headers)

    def refuse_disallowed_host(self) -> bool:
        """Answer 400 (and return True) when the request names a host this server does not
        serve (``--allowed-hosts``). A request without ``Host`` (HTTP/1.0) is not checked:
        browsers always send one."""
        if self._host_refused is not None:
            return self._host_refused
        request = self.request
        message = host_refusal(
            self.runtime.settings, self.served_host, request.method or "", request.path
        )
        self._host_refused = refused = message is not None
        if message is not None:
            self.send_error_json(400, message)
        return refused

    # -- tokens -----------------------------------------------------------------------------

    def authenticate(self, token: str | None) -> tuple[bool, dict[str, Any] | None]:
        """(ok, user): no token is fine (user None); a bad or expired one is not, nor, with
        ``--require-token-exp``, one that never expires."""
        if token is None:
            return True, None
        user = self.runtime.verify_token(token)  # --require-token-exp: the runtime's Tokens
        return user is not None, user

    def log_exception(
        self,
        typ: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Tornado's own, but without tokens: its summary shows the URL as it came, and its
        # messages may quote a query argument.
        request = self.request
        summary = f"{request.method} {hide_tokens_in_uri(request.uri or '')} ({request.remote_ip})"
        if isinstance(value, tornado.web.HTTPError):
            message = value.log_message
            if message:
                message = message % value.args if value.args else message
                gen_log.warning("%d %s: %s", value.status_code, summary, hide_tokens(message))
        else:
            app_log.error("Uncaught exception %s", summary, exc_info=(typ, value, tb))  # type: ignore[arg-type]

    def send_error_json(self, status: int, message: str, **headers: str) -> None:
        """Finish with ``{"error": message, "request_id": ...}``."""
        request_id = self.request_id
        self.clear()
        self.set_status(status)
        self.set_header("X-Request-Id", request_id)
        for name, value in headers.items():
            self.set_header(name, value)
        self.set_header("Content-Type", "application/json")
        self.finish(error_body(message, request_id))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        # Errors Tornado raises itself (unsupported method, malformed request, ...).
        if status_code == 405:
            return self.method_not_allowed()
        reason = self._reason if status_code != 500 else "Internal Server Error"
        self.send_error_json(status_code, reason)

    def method_not_allowed(self) -> None:
        """405 for a method this route does not handle (TRACE, PROPFIND, any unknown one:
        Tornado refuses those before ``prepare``), with the ``Allow`` header RFC 9110 asks
        for: the methods this handler implements."""
        if self.refuse_disallowed_host():
            return
        allow = ", ".join(sorted(implemented_methods(type(self))))
        self.send_error_json(405, f"Method {self.request.method} not allowed", Allow=allow)


class NotFoundHandler(BaseHandler):
    def prepare(self) -> None:
        self.send_error_json(404, f"No route for {self.request.path}")

    def method_not_allowed(self) -> None:
        self.prepare()  # no route, whatever the method: 404


def implemented_methods(handler: type[tornado.web.RequestHandler]) -> frozenset[str]:
    """The methods of ``SUPPORTED_METHODS`` that ``handler`` defines (Tornado's
    RequestHandler answers the others with 405)."""
    base = tornado.web.RequestHandler
    return frozenset(
        method
        for method in handler.SUPPORTED_METHODS
        if getattr(handler, method.lower(), None) is not getattr(base, method.lower(), None)
    )
