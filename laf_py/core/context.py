"""FunctionContext: everything one call of ``main(ctx)`` sees."""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from .response import Response

if TYPE_CHECKING:
    from ..cloud.sockets import Socket

__all__ = ["FunctionContext", "current_call", "in_call", "new_request_id"]

WS_CONNECTION = "WebSocket:connection"
WS_MESSAGE = "WebSocket:message"
WS_CLOSE = "WebSocket:close"
INIT_METHOD = "INIT"
IMPORT_METHOD = "IMPORT"  # not a call: a function file being imported (its output is logged)
SCHEDULE_METHOD = "SCHEDULE"
QUEUE_METHOD = "QUEUE"

_EMPTY: Mapping[str, Any] = {}

current_call: ContextVar[FunctionContext | None] = ContextVar("laf_current_call", default=None)
"""The ``ctx`` of the call running here (set by the invoker, also in a plain ``def``'s thread
and in tasks the call starts): how ``cloud.queue.push`` knows the user who pushed."""


@contextlib.contextmanager
def in_call(ctx: FunctionContext) -> Iterator[None]:
    """Run a block as part of ``ctx``'s call: what it logs is that call's (function logs)."""
    calling = current_call.set(ctx)
    try:
        yield
    finally:
        current_call.reset(calling)


_PROCESS_PREFIX = os.urandom(6).hex()
_SEQUENCE = itertools.count(1)


def new_request_id() -> str:
    """A new id, 24 hex characters: this process's random prefix and a counter. Unique and
    cheap (no system call per request); it correlates logs, it is not a secret."""
    return f"{_PROCESS_PREFIX}{next(_SEQUENCE) & 0xFFFFFFFFFFFF:012x}"


class FunctionContext:
    """The argument of every ``main(ctx)``.

    For HTTP calls ``method`` is the HTTP method; for WebSocket events it is
    ``"WebSocket:connection"``, ``"WebSocket:message"`` or ``"WebSocket:close"``, and
    ``headers``, ``query`` and ``user`` are those of the handshake on every event.
    """

    __slots__ = (
        "_output",
        "_request_id",
        "_response",
        "body",
        "function_name",
        "headers",
        "log_sink",
        "method",
        "params",
        "query",
        "socket",
        "user",
    )

    def __init__(
        self,
        method: str,
        function_name: str,
        *,
        params: dict[str, Any] | None = None,
        headers: Mapping[str, str] = _EMPTY,
        query: Mapping[str, str] = _EMPTY,
        body: Any = None,
        user: dict[str, Any] | None = None,
        socket: Socket | None = None,
        request_id: str | None = None,
    ) -> None:
        self.method = method
        self.function_name = function_name
        self.params: dict[str, Any] = params if params is not None else {}
        self.headers = headers
        self.query = query
        self.body = body
        self.user = user
        self.socket = socket
        self._request_id = request_id
        self._response: Response | None = None
        # Function logs: where this call's lines are kept (set by the invoker), and the
        # unfinished line of each output stream (laf_py.logs.capture).
        self.log_sink: Any = None
        self._output: dict[str, str] | None = None

    @property
    def request_id(self) -> str:
        """A new id per call or event; made on first use, so events that never log pay nothing."""
        if self._request_id is None:
            self._request_id = new_request_id()
        return self._request_id

    @property
    def response(self) -> Response:
        """Status, headers and content type for the value ``main`` returns (HTTP only)."""
        if self._response is None:
            self._response = Response()
        return self._response

    @property
    def response_if_touched(self) -> Response | None:
        return self._response

    def __repr__(self) -> str:
        return f"<FunctionContext {self.method} {self.function_name!r}>"
