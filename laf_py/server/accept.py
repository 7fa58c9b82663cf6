"""Accepting HTTP connections without being held by them.

Tornado's HTTPServer, with what a public server needs around it:

- **An accept loop that backs off.** Tornado's accept handler raises on ``EMFILE`` (no file
  descriptor left): the listening socket stays readable, so the event loop calls it again at
  once, and every turn logs a traceback (tens of thousands a second, at full CPU). Here a
  listener that runs out of descriptors (``EMFILE``, ``ENFILE``, ``ENOBUFS``, ``ENOMEM``) stops
  being watched for a moment (``BACKOFF_MIN`` doubling up to ``BACKOFF_MAX``, or until an HTTP
  connection closes, whichever comes first); new clients wait in the kernel's backlog meanwhile
  and are served once descriptors are free again. It is logged when it starts, at most once
  per ``REPORT_INTERVAL`` while it lasts, and when it ends.
- **A cap on open HTTP connections** (``--max-http-connections``). Past it a new connection is
  answered at once with a canned 503 and closed: a few system calls, no request parsing, no
  handler, one log line per ``REPORT_INTERVAL``. A WebSocket stops counting once its handshake
  is done (``--max-connections`` caps those).
- **431 for a request head over ``--max-header-size``**, where Tornado closes the connection
  without a word; and the JSON error body for the bare ``400 Bad Request`` Tornado writes for a
  request it cannot parse.
- Every request passes :class:`~laf_py.server.http.RequestGuard` before routing, except a
  plain ``/fn/`` call, which :mod:`~laf_py.server.fast_http` answers without routing.

The header, idle and body timeouts are Tornado's own (``idle_connection_timeout``,
``body_timeout``): each is one deadline for the whole head or body, so a client trickling a
byte at a time is cut off as surely as a silent one.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import socket
import time
from typing import Any

import tornado.httpserver
import tornado.httputil
from tornado.ioloop import IOLoop
from tornado.iostream import IOStream, UnsatisfiableReadError
from tornado.log import access_log, app_log

from ..core.context import new_request_id
from ..core.response import error_body
from .fast_http import FastConnection, FastFunctions
from .http import RequestGuard

__all__ = [
    "BACKOFF_MAX",
    "REPORT_INTERVAL",
    "HTTPServer",
    "log_open_file_limit",
    "raise_open_file_limit",
]

log = logging.getLogger("laf_py")

BACKOFF_MIN = 0.05  # seconds without accepting after the descriptors ran out ...
BACKOFF_MAX = 1.0  # ... doubling up to this while they stay out
REPORT_INTERVAL = 10.0  # at most one log line per this many seconds per kind of trouble
ACCEPTS_PER_TURN = 128  # as Tornado: connections accepted per event-loop turn, at most

# Out of a resource the process or the system needs to accept: wait, then try again.
_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# Linux reports a network error of the pending connection itself from accept(2); the man
# page says to treat these like EAGAIN and accept the next one.
_CONNECTION_ERRORS = frozenset(
    getattr(errno, name)
    for name in (
        "ECONNABORTED",
        "EPROTO",
        "ENETDOWN",
        "ENOPROTOOPT",
        "EHOSTDOWN",
        "ENONET",
        "EHOSTUNREACH",
        "EOPNOTSUPP",
        "ENETUNREACH",
        "EPERM",  # a firewall rule refused it
    )
    if hasattr(errno, name)
)

# What Tornado writes, and then closes, for a request it cannot parse.
_TORNADO_BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\n\r\n"


_open_file_limit: str | None = None  # what raise_open_file_limit() did, for the log


def raise_open_file_limit() -> None:
    """Raise the soft limit of open files to the hard one (at start-up, before any worker is
    forked); :func:`log_open_file_limit` then says the figure in one line, once the server
    listens (a start-up error stays one line).

    Every connection is a descriptor; the usual soft limit (1024) is far below what laf-py's
    connection limits allow, while the hard limit is the administrator's real ceiling."""
    global _open_file_limit
    try:
        import resource
    except ImportError:  # Windows
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    raised = soft
    if hard != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            raised = hard
    shown = "unlimited" if raised == resource.RLIM_INFINITY else str(raised)
    if raised != soft:
        how = f"raised from {soft}"
    elif hard == soft:
        how = "the hard limit"
    elif hard == resource.RLIM_INFINITY:
        how = "the hard limit is unlimited; kept as it was"
    else:
        how = f"could not raise it to the hard limit, {hard}"
    _open_file_limit = f"open file limit: {shown} descriptors ({how})"


def log_open_file_limit() -> None:
    """Log the line :func:`raise_open_file_limit` prepared, once."""
    global _open_file_limit
    if _open_file_limit is not None:
        log.info("%s", _open_file_limit)
        _open_file_limit = None


def _canned(status: int, reason: str, message: str) -> bytes:
    """A whole error response, sent without Tornado: laf-py's JSON error, then close."""
    request_id = new_request_id()
    body = error_body(message, request_id)
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"X-Request-Id: {request_id}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


def _drain(sock: socket.socket, limit: int = 1 << 20) -> None:
    """Read and drop what the client has already sent (up to ``limit``), without waiting:
    closing a socket with unread data resets the connection, and a reset can make the
    client lose the answer written just before."""
    taken = 0
    with contextlib.suppress(OSError):  # BlockingIOError: nothing more for now
        while taken < limit:
            chunk = sock.recv(65536)
            if not chunk:
                break
            taken += len(chunk)


class _Report:
    """One kind of trouble, logged when it starts and then at most once per interval."""

    __slots__ = ("_count", "_last")

    def __init__(self) -> None:
        self._last = -math.inf
        self._count = 0  # occurrences not yet reported

    def due(self) -> int:
        """Count one occurrence; the number to report now, or 0 while within the interval."""
        self._count += 1
        now = time.monotonic()
        if now - self._last < REPORT_INTERVAL:
            return 0
        self._last = now
        count, self._count = self._count, 0
        return count


class _HTTPStream(IOStream):
    """A server-side HTTP connection's stream: answers 431 for a head over the limit, and
    gives Tornado's bare 400 laf-py's JSON body."""

    def __init__(self, sock: socket.socket, address: Any, head_limit: int, **kwargs: Any) -> None:
        super().__init__(sock, **kwargs)
        self.address = address
        self.head_limit = head_limit
        self._reading_head = False

    # Tornado reads a request head with read_until_regex (bounded by max_header_size), and
    # only the size lines of a chunked body with read_until: so an UnsatisfiableReadError
    # after read_until_regex is a head over the limit.
    def read_until_regex(self, regex: bytes, max_bytes: int | None = None) -> Any:
        self._reading_head = True
        return super().read_until_regex(regex, max_bytes)

    def read_until(self, delimiter: bytes, max_bytes: int | None = None) -> Any:
        self._reading_head = False
        return super().read_until(delimiter, max_bytes)

    def unread(self, data: bytes) -> None:
        """Put back a request head that was read (fast_http: a request left to Tornado),
        to be read again as if it had not been."""
        self._read_buffer[:0] = data
        self._read_buffer_size += len(data)

    def write(self, data: bytes | memoryview) -> Any:
        if data == _TORNADO_BAD_REQUEST:  # Tornado logged why, and closes after it
            data = _canned(400, "Bad Request", "Malformed HTTP request")
        return super().write(data)

    def close(self, exc_info: Any = False) -> None:
        if (
            isinstance(exc_info, UnsatisfiableReadError)
            and self._reading_head
            and not self.closed()
            and not self.writing()
        ):
            self._too_large_head()
        super().close(exc_info)

    def _too_large_head(self) -> None:
        limit = self.head_limit
        _drain(self.socket)
        with contextlib.suppress(OSError):
            self.socket.send(
                _canned(
                    431,
                    "Request Header Fields Too Large",
                    f"Request line and headers larger than {limit} bytes",
                )
            )
        host = self.address[0] if isinstance(self.address, tuple) else self.address
        access_log.warning("431 (request head over %d bytes) (%s)", limit, host)


class HTTPServer(tornado.httpserver.HTTPServer):
    """Tornado's HTTPServer with laf-py's accept loop, a cap on open HTTP connections
    (``max_connections``), 431 for oversized heads and :class:`RequestGuard` on every
    request. Plain TCP only (laf-py does not terminate TLS)."""

    def initialize(
        self,
        *args: Any,
        max_connections: int = 1000,
        functions: FastFunctions | None = None,
        **kwargs: Any,
    ) -> None:
        super().initialize(*args, **kwargs)
        assert self.ssl_options is None, "laf-py serves plain TCP"
        self.functions = functions  # plain /fn/ calls without a RequestHandler (fast_http.py)
        self.max_connections = max_connections
        self.open_connections = 0
        self._acceptors: list[_Acceptor] = []
        self._over_limit = _Report()

    # -- accepting -------------------------------------------------------------------------

    def add_sockets(self, sockets: Any) -> None:
        for sock in sockets:
            acceptor = _Acceptor(sock, self)
            self._acceptors.append(acceptor)
            acceptor.watch()

    def stop(self) -> None:
        for acceptor in self._acceptors:
            acceptor.stop()
        self._acceptors.clear()
        super().stop()

    def accepted(self, connection: socket.socket, address: Any) -> None:
        if self.open_connections >= self.max_connections:
            self._refuse(connection)
            return
        try:
            stream = _HTTPStream(
                connection,
                address,
                self.conn_params.max_header_size,
                max_buffer_size=self.max_buffer_size,
                read_chunk_size=self.read_chunk_size,
            )
            self.handle_stream(stream, address)
        except Exception:
            app_log.error("Error in connection callback", exc_info=True)
            connection.close()

    def _refuse(self, connection: socket.socket) -> None:
        """Over --max-http-connections: a canned 503, then close. A few system calls."""
        connection.setblocking(False)
        _drain(connection, 65536)
        with contextlib.suppress(OSError):
            connection.send(
                _canned(503, "Service Unavailable", "Too many connections; try again later")
            )
        connection.close()
        count = self._over_limit.due()
        if count:
            log.warning(
                "refused %d connection(s) with 503: %d HTTP connections are open, the limit "
                "(--max-http-connections / LAF_MAX_HTTP_CONNECTIONS); next report in %gs at most",
                count,
                self.open_connections,
                REPORT_INTERVAL,
            )

    # -- counting (HTTPServer's own hooks: a connection starts, and ends or is detached) ---

    def handle_stream(self, stream: IOStream, address: tuple[Any, ...]) -> None:
        self.open_connections += 1
        if self.functions is None:
            super().handle_stream(stream, address)
            return
        context = tornado.httpserver._HTTPRequestContext(
            stream, address, self.protocol, self.trusted_downstream
        )
        conn = FastConnection(stream, self.conn_params, context, self.functions, self.xheaders)
        self._connections.add(conn)
        conn.start_serving(self)

    def on_close(self, server_conn: object) -> None:
        self.open_connections -= 1
        super().on_close(server_conn)
        for acceptor in self._acceptors:
            acceptor.wake()  # a descriptor is free: a paused listener may try again now

    def start_request(
        self, server_conn: object, request_conn: tornado.httputil.HTTPConnection
    ) -> tornado.httputil.HTTPMessageDelegate:
        return RequestGuard(super().start_request(server_conn, request_conn), request_conn)


class _Acceptor:
    """Accepts connections on one listening socket for an :class:`HTTPServer`; pauses when
    the process or the system runs out of descriptors or memory."""

    __slots__ = (
        "_failures",
        "_io_loop",
        "_paused_since",
        "_reported",
        "_retry",
        "_server",
        "_sock",
        "delay",
    )

    def __init__(self, sock: socket.socket, server: HTTPServer) -> None:
        self._sock = sock
        self._server = server
        self._io_loop = IOLoop.current()
        self._retry: object | None = None  # the timer of a paused listener
        self._paused_since: float | None = None  # since when accepting fails
        self._reported = False  # ... and that was logged
        self._failures = _Report()
        self.delay = 0.0  # the current backoff; 0 while accepting normally

    def watch(self) -> None:
        self._io_loop.add_handler(self._sock, self._on_readable, IOLoop.READ)

    def stop(self) -> None:
        if self._retry is not None:
            self._io_loop.remove_timeout(self._retry)
            self._retry = None
        elif self._sock.fileno() != -1:
            self._io_loop.remove_handler(self._sock)
        self._sock.close()

    def wake(self) -> None:
        """Try again now rather than at the end of the backoff (a descriptor was freed)."""
        if self._retry is not None:
            self._io_loop.remove_timeout(self._retry)
            self._resume()

    def _on_readable(self, sock: socket.socket, events: int) -> None:
        accepted = self._server.accepted
        for _ in range(ACCEPTS_PER_TURN):
            try:
                connection, address = sock.accept()
            except BlockingIOError:
                # Nothing more waiting: after a pause, every client that waited is in.
                if self._paused_since is not None:
                    self._recovered()
                return
            except OSError as exc:
                if exc.errno in _CONNECTION_ERRORS:
                    continue  # that connection is gone; take the next
                self._pause(exc)
                return
            accepted(connection, address)

    def _pause(self, exc: OSError) -> None:
        """Stop watching the listener for a while: it stays readable, and accepting again
        at once would fail again at once."""
        self._io_loop.remove_handler(self._sock)
        self.delay = min(BACKOFF_MAX, max(BACKOFF_MIN, 2 * self.delay))
        self._retry = self._io_loop.call_later(self.delay, self._resume)
        if self._paused_since is None:
            self._paused_since = time.monotonic()
        count = self._failures.due()
        if not count:
            return
        what = (
            "out of file descriptors"
            if exc.errno in (errno.EMFILE, errno.ENFILE)
            else "out of memory"
            if exc.errno in (errno.ENOBUFS, errno.ENOMEM)
            else "accept failed"
        )
        if self._reported:
            log.warning(
                "still cannot accept connections on %s: %s (%s); %d attempt(s) failed since "
                "the last report; %d HTTP connection(s) open",
                _name(self._sock),
                what,
                exc.strerror or exc,
                count,
                self._server.open_connections,
            )
        else:
            log.warning(
                "cannot accept connections on %s: %s (%s); %d HTTP connection(s) open. New "
                "clients wait and are served once it passes (retrying every %gs at most); "
                "reported again every %gs while it lasts",
                _name(self._sock),
                what,
                exc.strerror or exc,
                self._server.open_connections,
                BACKOFF_MAX,
                REPORT_INTERVAL,
            )
        self._reported = True

    def _resume(self) -> None:
        self._retry = None
        if self._sock.fileno() == -1:
            return  # closed meanwhile
        self.watch()
        # Try at once: with nobody waiting the listener never becomes readable, and the pause
        # would never be seen to end (nor said to in the log).
        self._on_readable(self._sock, IOLoop.READ)

    def _recovered(self) -> None:
        assert self._paused_since is not None
        if self._reported:  # (the reports stay throttled across short episodes)
            log.info(
                "accepting connections on %s again: every waiting client is in, %.1fs after "
                "accepting first failed",
                _name(self._sock),
                time.monotonic() - self._paused_since,
            )
        self._paused_since = None
        self._reported = False
        self.delay = 0.0


def _name(sock: socket.socket) -> str:
    try:
        host, port = sock.getsockname()[:2]
    except OSError:
        return "a closed listener"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
