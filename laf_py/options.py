"""Every setting as the command line and the environment see it: flag, variable, parser and
the words of the error a bad value gets."""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .exceptions import ConfigError

__all__ = [
    "EVENT_LOOPS",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "MIB",
    "MIN_ADMIN_TOKEN_LENGTH",
    "MIN_SECRET_LENGTH",
    "OPTIONS",
    "SERVERS",
    "Option",
]

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
MIN_ADMIN_TOKEN_LENGTH = 16
EVENT_LOOPS = ("auto", "uvloop", "asyncio")
SERVERS = ("tornado", "uvicorn")
MIB = 1024 * 1024
MIN_SECRET_LENGTH = 32  # HS256 wants a key of at least 256 bits (RFC 7518, 3.2)


@dataclass(frozen=True, slots=True)
class Option:
    """One setting as the CLI and the environment see it."""

    field: str
    flag: str
    env: str
    parse: Callable[[str], Any]
    expects: str
    help: str

    def parse_from(self, source: str, raw: Any) -> Any:
        if not isinstance(raw, str):
            raw = str(raw)
        try:
            return self.parse(raw)
        except (ValueError, OverflowError):
            shown = _shown(self.field, raw)
            raise ConfigError(
                f"{source}={shown} is not valid: expected {self.expects} "
                f"(set {self.flag} or {self.env})"
            ) from None


def _shown(field: str, raw: str) -> str:
    """A rejected value as it may appear in an error: never a secret or a password."""
    if field in ("secret", "admin_token"):
        return "<hidden>"
    if field in ("database_url", "redis_url"):
        from sqlalchemy.engine import make_url

        try:
            return repr(make_url(raw).render_as_string(hide_password=True))
        except Exception:
            return "<unparsable URL>"
    return repr(raw)


def _port(raw: str) -> int:
    port = int(raw)
    if not 0 <= port <= 65535:
        raise ValueError(raw)
    return port


def _positive(raw: str) -> float:
    value = float(raw)
    if not value > 0 or value == float("inf"):
        raise ValueError(raw)
    return value


def _non_negative(raw: str) -> float:
    value = float(raw)
    if not value >= 0 or value == float("inf"):
        raise ValueError(raw)
    return value


def _bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


def _host(raw: str) -> str:
    if not raw.strip() or any(c.isspace() for c in raw):
        raise ValueError(raw)
    return raw


def _database_url(raw: str) -> str:
    from .cloud.sql import normalize_database_url  # SQLAlchemy only when a URL is given

    return normalize_database_url(raw)


def _secret(raw: str) -> str:
    if len(raw) < MIN_SECRET_LENGTH:
        raise ValueError(raw)
    return raw


def _admin_token(raw: str) -> str:
    if len(raw) < MIN_ADMIN_TOKEN_LENGTH:
        raise ValueError(raw)
    return raw


def _log_format(raw: str) -> str:
    if raw.lower() not in LOG_FORMATS:
        raise ValueError(raw)
    return raw.lower()


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(raw: str) -> float:
    """``3d``, ``12h``, ``30m``, ``90s`` or plain seconds; 0 turns the thing off."""
    text = raw.strip().lower()
    scale = _DURATION_UNITS.get(text[-1:], 0)
    value = float(text[:-1] if scale else text) * (scale or 1)
    if not value >= 0 or not math.isfinite(value):
        raise ValueError(raw)
    return value


def _redis_url(raw: str) -> str:
    if not raw.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(raw)
    return raw


def _workers(raw: str) -> int:
    workers = int(raw)
    if not 1 <= workers <= 256:
        raise ValueError(raw)
    return workers


def _cluster(raw: str) -> str:
    if not raw or not all(c.isalnum() or c in "-_." for c in raw):
        raise ValueError(raw)
    return raw


def _size(raw: str) -> int:
    """``1048576``, ``512k``, ``10m`` or ``1g`` (bytes, powers of 1024)."""
    text = raw.strip().lower().removesuffix("b").removesuffix("i")
    scale = {"k": 1024, "m": MIB, "g": 1024 * MIB}.get(text[-1:], 1)
    number = text[:-1] if scale > 1 else text
    value = float(number) * scale
    if not math.isfinite(value) or value < 1:
        raise ValueError(raw)
    return int(value)


def _count(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError(raw)
    return value


def _rate(raw: str) -> float:
    """Messages per second; 0 turns the limit off."""
    value = float(raw)
    if not value >= 0 or value == float("inf"):
        raise ValueError(raw)
    return value


def _origins(raw: str) -> tuple[str, ...]:
    origins = tuple(o.strip().rstrip("/") for o in raw.split(",") if o.strip())
    for origin in origins:
        if origin != "*" and "://" not in origin:
            raise ValueError(raw)
    return origins


_HOST_PATTERN = re.compile(r"\*|(\*\.)?[a-z0-9_-][a-z0-9_.-]*")


def _hosts(raw: str) -> tuple[str, ...]:
    """``--allowed-hosts``: names, addresses and ``*.`` patterns, without scheme or port."""
    hosts = []
    for entry in raw.split(","):
        host = entry.strip().lower()
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]  # [::1]
        host = host.removesuffix(".")
        if ":" in host:
            ipaddress.IPv6Address(host)  # ValueError if it is not one
        elif not _HOST_PATTERN.fullmatch(host):
            raise ValueError(raw)
        hosts.append(host)
    return tuple(hosts)


def _log_level(raw: str) -> str:
    if raw.lower() not in LOG_LEVELS:
        raise ValueError(raw)
    return raw.lower()


def _event_loop(raw: str) -> str:
    if raw.lower() not in EVENT_LOOPS:
        raise ValueError(raw)
    return raw.lower()


def _server(raw: str) -> str:
    if raw.lower() not in SERVERS:
        raise ValueError(raw)
    return raw.lower()


OPTIONS: tuple[Option, ...] = (
    Option(
        "app_dir",
        "--app-dir",
        "LAF_APP_DIR",
        Path,
        "a folder",
        "the app folder, holding functions/ and .laf/ (default: the current folder)",
    ),
    Option(
        "functions_dir",
        "--functions",
        "LAF_FUNCTIONS",
        Path,
        "a folder",
        "folder of function files (default <app folder>/functions)",
    ),
    Option(
        "data_dir",
        "--data-dir",
        "LAF_DATA_DIR",
        Path,
        "a folder",
        "where laf-py keeps its SQLite database and token secret (default <app folder>/.laf)",
    ),
    Option(
        "public_dir",
        "--public",
        "LAF_PUBLIC",
        Path,
        "a folder",
        "static files served at / (default <app folder>/public when it exists)",
    ),
    Option(
        "spa_fallback",
        "--spa-fallback",
        "LAF_SPA_FALLBACK",
        _bool,
        "true or false",
        "answer unknown paths without a dot in their last segment with public/index.html, "
        "for client-side routing (default false)",
    ),
    Option(
        "host",
        "--host",
        "LAF_HOST",
        _host,
        "a host name or address",
        "address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)",
    ),
    Option(
        "port",
        "--port",
        "LAF_PORT",
        _port,
        "a port number 0-65535",
        "port to listen on (default 8000; 0 picks a free one)",
    ),
    Option(
        "reload",
        "--reload",
        "LAF_RELOAD",
        _bool,
        "true or false",
        "reload function files when they change (default true)",
    ),
    Option(
        "timeout",
        "--timeout",
        "LAF_TIMEOUT",
        _positive,
        "seconds > 0",
        "default time limit of one function call (default 60)",
    ),
    Option(
        "shutdown_grace",
        "--shutdown-grace",
        "LAF_SHUTDOWN_GRACE",
        _non_negative,
        "seconds >= 0",
        "how long shutdown waits for calls in flight (default 10)",
    ),
    Option(
        "websocket_error_frames",
        "--websocket-error-frames",
        "LAF_WEBSOCKET_ERROR_FRAMES",
        _bool,
        "true or false",
        "send {error, request_id} to a client whose message failed (default true)",
    ),
    Option(
        "database_url",
        "--database-url",
        "LAF_DATABASE_URL",
        _database_url,
        "sqlite:///path/to/file.db or postgresql://user:password@host/db",
        "SQL database for cloud.kv and cloud.sql (default SQLite at <data folder>/laf.db)",
    ),
    Option(
        "secret",
        "--secret",
        "LAF_SECRET",
        _secret,
        f"at least {MIN_SECRET_LENGTH} characters",
        "key that signs tokens (default: generated once into <data folder>/secret); "
        "prefer LAF_SECRET, command lines are visible to other users",
    ),
    Option(
        "redis_url",
        "--redis-url",
        "LAF_REDIS_URL",
        _redis_url,
        "redis://host:6379/0 (or rediss://, unix://)",
        "Redis that joins workers and machines (default: none, one process)",
    ),
    Option(
        "workers",
        "--workers",
        "LAF_WORKERS",
        _workers,
        "a number of processes from 1 to 256",
        "processes serving the port on this machine (default 1; more need --redis-url)",
    ),
    Option(
        "cluster",
        "--cluster",
        "LAF_CLUSTER",
        _cluster,
        "letters, digits, '-', '_' or '.'",
        "name that keeps this cluster's Redis keys and channels apart (default laf)",
    ),
    Option(
        "heartbeat",
        "--heartbeat",
        "LAF_HEARTBEAT",
        _positive,
        "seconds > 0",
        "how often a node tells Redis it is alive; silent for 3 beats = dead (default 2)",
    ),
    Option(
        "max_body_size",
        "--max-body-size",
        "LAF_MAX_BODY_SIZE",
        _size,
        "a size like 10m, 512k or 1048576",
        "largest HTTP request body; larger ones get 413 (default 10m)",
    ),
    Option(
        "max_message_size",
        "--max-message-size",
        "LAF_MAX_MESSAGE_SIZE",
        _size,
        "a size like 1m, 64k or 65536",
        "largest WebSocket message; larger ones close the connection with 1009 (default 1m)",
    ),
    Option(
        "max_send_buffer",
        "--max-send-buffer",
        "LAF_MAX_SEND_BUFFER",
        _size,
        "a size like 1m or 256k",
        "unsent data one socket may hold freely; past it the client must keep taking bytes "
        "(none for 5s: closed as a slow consumer, 1008). Also sets the largest message a "
        "function may send (8x) and the most unsent data a socket may hold (16x) (default 1m)",
    ),
    Option(
        "max_connections",
        "--max-connections",
        "LAF_MAX_CONNECTIONS",
        _count,
        "a whole number > 0",
        "WebSocket connections one process accepts; more get 503 (default 10000)",
    ),
    Option(
        "max_messages_per_second",
        "--max-messages-per-second",
        "LAF_MAX_MESSAGES_PER_SECOND",
        _rate,
        "a number >= 0 (0: no limit)",
        "inbound messages per second per connection, bursts of twice that (default 100)",
    ),
    # -- Slow clients: HTTP timeouts and connection cap, WebSocket message timeout --
    Option(
        "header_timeout",
        "--header-timeout",
        "LAF_HEADER_TIMEOUT",
        _positive,
        "seconds > 0",
        "a connection must send a complete request head within this of opening or of its "
        "previous answer, else it is closed: idle keep-alive and trickled headers (default 10)",
    ),
    Option(
        "body_timeout",
        "--body-timeout",
        "LAF_BODY_TIMEOUT",
        _positive,
        "seconds > 0",
        "a request body must arrive within this of its head, else the connection is closed "
        "(default 60)",
    ),
    Option(
        "message_timeout",
        "--message-timeout",
        "LAF_MESSAGE_TIMEOUT",
        _positive,
        "seconds > 0",
        "a WebSocket message must arrive within this of its first byte, else close 1008 "
        "(default 60)",
    ),
    Option(
        "max_header_size",
        "--max-header-size",
        "LAF_MAX_HEADER_SIZE",
        _size,
        "a size like 64k or 16384",
        "largest HTTP request line and headers; larger ones get 431 (default 64k)",
    ),
    Option(
        "max_http_connections",
        "--max-http-connections",
        "LAF_MAX_HTTP_CONNECTIONS",
        _count,
        "a whole number > 0",
        "open HTTP connections one process keeps (WebSockets not counted once open); "
        "new ones past it get 503 and are closed (default 1000)",
    ),
    Option(
        "ping_interval",
        "--ping-interval",
        "LAF_PING_INTERVAL",
        _positive,
        "seconds > 0",
        "how often the server pings each WebSocket client (default 25)",
    ),
    Option(
        "ping_timeout",
        "--ping-timeout",
        "LAF_PING_TIMEOUT",
        _positive,
        "seconds > 0",
        "a client that does not answer a ping within this is closed (default 20)",
    ),
    Option(
        "allowed_origins",
        "--allowed-origins",
        "LAF_ALLOWED_ORIGINS",
        _origins,
        "comma-separated origins like https://app.example.com, https://*.example.com or *",
        "browser origins allowed to call functions (CORS) and open WebSockets (default: the "
        "server's own origin only)",
    ),
    Option(
        "allow_credentials",
        "--allow-credentials",
        "LAF_ALLOW_CREDENTIALS",
        _bool,
        "true or false",
        "let pages of --allowed-origins send cookies and HTTP auth with their calls "
        "(Access-Control-Allow-Credentials; default false)",
    ),
    Option(
        "trust_proxy_headers",
        "--trust-proxy-headers",
        "LAF_TRUST_PROXY_HEADERS",
        _bool,
        "true or false",
        "take the client address and scheme from X-Forwarded-For / X-Real-Ip / "
        "X-Forwarded-Proto (only behind a proxy that sets them; default false)",
    ),
    # -- Host names and tokens (hardening) --
    Option(
        "allowed_hosts",
        "--allowed-hosts",
        "LAF_ALLOWED_HOSTS",
        _hosts,
        "comma-separated host names like app.example.com, *.example.com, 10.0.0.5 or * "
        "(no scheme, no port)",
        "Host values served, others get 400 (DNS-rebinding protection; default: localhost, "
        "*.localhost, 127.0.0.1 and ::1 when --host is a loopback address, else any)",
    ),
    Option(
        "require_token_exp",
        "--require-token-exp",
        "LAF_REQUIRE_TOKEN_EXP",
        _bool,
        "true or false",
        "refuse tokens without an exp claim, and issue none (default false)",
    ),
    # -- Observability: function logs, metrics, admin endpoints --
    Option(
        "log_format",
        "--log-format",
        "LAF_LOG_FORMAT",
        _log_format,
        "|".join(LOG_FORMATS),
        "server log lines for people (text: time, level, function, request id, message) or "
        "one JSON object per line for log shippers (json) (default text)",
    ),
    Option(
        "log_retention",
        "--log-retention",
        "LAF_LOG_RETENTION",
        _duration,
        "a duration like 3d, 12h or 30m (0: keep none)",
        "how long function log lines are kept in the database for laf-py logs and the console "
        "(default 3d; 0 keeps none)",
    ),
    Option(
        "metrics",
        "--metrics",
        "LAF_METRICS",
        _bool,
        "true or false",
        "count requests, messages and errors for GET /_/metrics (Prometheus) (default true)",
    ),
    Option(
        "admin_token",
        "--admin-token",
        "LAF_ADMIN_TOKEN",
        _admin_token,
        f"at least {MIN_ADMIN_TOKEN_LENGTH} characters",
        "Bearer token for the admin endpoints (/_/metrics, /_/console, /_/api/); without one "
        "they answer loopback clients only. Prefer LAF_ADMIN_TOKEN: command lines are visible",
    ),
    Option(
        "log_level",
        "--log-level",
        "LAF_LOG_LEVEL",
        _log_level,
        "|".join(LOG_LEVELS),
        "logging level (default info)",
    ),
    Option(
        "event_loop",
        "--event-loop",
        "LAF_EVENT_LOOP",
        _event_loop,
        "|".join(EVENT_LOOPS),
        "event loop: uvloop, asyncio's own, or auto = uvloop when installed (default auto)",
    ),
    Option(
        "server",
        "--server",
        "LAF_SERVER",
        _server,
        "|".join(SERVERS),
        "the HTTP server: Tornado, or uvicorn running laf-py as an ASGI app (default tornado)",
    ),
)
