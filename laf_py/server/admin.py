"""Who may use the admin endpoints (``/_/metrics``, ``/_/console``, ``/_/api/...``).

With ``--admin-token`` set, every request needs ``Authorization: Bearer <token>``, whatever its
address. Without one, only clients on the loopback interface are answered (with
``--trust-proxy-headers``, the forwarded client address decides, as it does everywhere).

Either way an admin endpoint is same-origin only: a request a page of another site makes
(an ``Origin`` that is not this server, or ``Sec-Fetch-Site: cross-site``) is refused, and no
admin response carries CORS headers. Without that, any page open in the browser of someone
running laf-py on their laptop could post to ``http://localhost:8000/_/api/...``.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from urllib.parse import SplitResult, urlsplit

from .base import BaseHandler, host_name, is_loopback

__all__ = ["AdminHandler", "admin_refusal"]

log = logging.getLogger("laf_py")

NEEDS_TOKEN = "admin endpoint: send Authorization: Bearer <the --admin-token / LAF_ADMIN_TOKEN>"
LOOPBACK_ONLY = (
    "admin endpoints answer loopback clients only; set --admin-token / LAF_ADMIN_TOKEN to "
    "reach them from elsewhere"
)
CROSS_ORIGIN = "admin endpoints are same-origin only"


def _is_loopback_address(address: str | None) -> bool:
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _same_origin(origin: str, served_host: str | None) -> bool:
    """Whether an ``Origin`` header names the host this request was sent to."""
    if served_host is None:
        return False
    parts = urlsplit(origin)
    if not parts.scheme or not parts.netloc:
        return False  # "null" (a sandboxed page, a file://) or junk
    port = _origin_port(parts)
    return (
        port != _NO_PORT
        and host_name(parts.netloc) == host_name(served_host)
        and port == _port_of(served_host)
    )


def _port_of(host: str) -> int | None:
    try:
        return urlsplit(f"//{host}").port
    except ValueError:
        return None


_NO_PORT = -1  # an Origin whose port is not a port (http://x:99999): never this server's


def _origin_port(parts: SplitResult) -> int | None:
    try:
        return parts.port
    except ValueError:
        return _NO_PORT


# Headers a proxy adds. Without --trust-proxy-headers a request carrying one came through a
# proxy on this machine (nginx, a tunnel): its loopback address says nothing about the client.
FORWARDING_HEADERS = ("X-Forwarded-For", "X-Real-Ip", "Forwarded")


def came_through_proxy(handler: BaseHandler) -> bool:
    """A request a local proxy relayed, when laf-py was not told to trust proxies."""
    headers = handler.request.headers
    return not handler.runtime.settings.trust_proxy_headers and any(
        name in headers for name in FORWARDING_HEADERS
    )


def _is_loopback_host(served_host: str | None) -> bool:
    """The request named this machine (localhost, 127.0.0.1, ...): not a public name whose DNS
    points here (DNS rebinding with --host 0.0.0.0)."""
    if served_host is None:
        return True  # HTTP/1.0 without Host: no browser sends that
    name = host_name(served_host)
    return name is not None and is_loopback(name)


def admin_refusal(
    *,
    admin_token: str | None,
    authorization: str | None,
    remote_ip: str | None,
    origin: str | None,
    fetch_site: str | None,
    served_host: str | None,
    proxied: bool = False,
) -> tuple[int, str] | None:
    """(status, message) when a request may not use an admin endpoint, else None.

    Without a token: a loopback client that asked for this machine by a loopback name, and
    not through a proxy laf-py was not told about (``proxied``)."""
    if fetch_site == "cross-site" or (origin is not None and not _same_origin(origin, served_host)):
        return 403, CROSS_ORIGIN
    if admin_token is not None:
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), admin_token.encode()
        ):
            return 401, NEEDS_TOKEN
        return None
    if proxied or not _is_loopback_address(remote_ip) or not _is_loopback_host(served_host):
        return 403, LOOPBACK_ONLY
    return None


class AdminHandler(BaseHandler):
    """Base of every admin endpoint: the access rule runs before any method.

    Subclasses do not define ``prepare``; they implement ``get``/``post`` as usual.
    """

    # A page that holds no data and asks for the token itself (the console's): a browser
    # cannot put a Bearer token on a navigation, so only the rest of the rule applies to it.
    asks_for_the_token = False

    def prepare(self) -> None:
        headers = self.request.headers
        token = self.runtime.settings.admin_token
        given = headers.get("Authorization")
        if self.asks_for_the_token and token is not None:
            given = f"Bearer {token}"
        refused = admin_refusal(
            admin_token=token,
            authorization=given,
            remote_ip=self.request.remote_ip,
            origin=headers.get("Origin"),
            fetch_site=headers.get("Sec-Fetch-Site"),
            served_host=self.served_host,
            proxied=came_through_proxy(self),
        )
        if refused is None:
            return
        status, message = refused
        log.warning(
            "refused %s %s from %s: %s",
            self.request.method,
            self.request.path,
            self.request.remote_ip,
            message,
        )
        extra = {"WWW-Authenticate": 'Bearer realm="laf-py admin"'} if status == 401 else {}
        self.send_error_json(status, message, **extra)

    def set_default_headers(self) -> None:
        # Admin answers are never cached by a browser or a proxy, nor framed by another page.
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("X-Frame-Options", "DENY")
