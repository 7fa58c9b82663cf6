"""The one exception tree of laf-py.

Users raise :class:`HTTPError`; everything else here is raised by laf-py itself.
"""

from __future__ import annotations

from http import HTTPStatus

__all__ = ["ConfigError", "FunctionLoadError", "FunctionTimeoutError", "HTTPError", "LafError"]


class LafError(Exception):
    """Base class of every error laf-py raises."""


class HTTPError(LafError):
    """Stop a function with an HTTP status and a message for the client.

    Over HTTP it becomes ``{"error": message, "request_id": ...}`` with that status. In the
    WebSocket ``connection`` event it rejects the connection with close code ``4000 + status``;
    in a ``message`` event it becomes an error frame and the connection stays open.
    """

    def __init__(self, status: int, message: str | None = None) -> None:
        if not 400 <= status <= 599:
            raise ValueError(f"HTTPError status must be 400-599, got {status}")
        self.status = status
        self.message = message if message is not None else _reason(status)
        super().__init__(status, self.message)

    def __str__(self) -> str:
        return f"{self.status}: {self.message}"


class FunctionTimeoutError(LafError):
    """A function ran past its ``timeout``: 504 over HTTP, an error frame over WebSocket.

    Not an HTTPError: that is the function's own answer, this is laf-py stopping it.
    """

    status = 504

    def __init__(self, function_name: str, seconds: float) -> None:
        self.function_name = function_name
        self.seconds = seconds
        self.message = f"Function {function_name!r} timed out after {seconds:g}s"
        super().__init__(self.message)


class ConfigError(LafError):
    """A bad setting: the message says what is wrong and what to set."""


class FunctionLoadError(LafError):
    """A function file could not be imported or does not define what it must."""

    def __init__(self, path: str, line: int | None, reason: str) -> None:
        self.path = path
        self.line = line
        self.reason = reason
        where = f"{path}, line {line}" if line else path
        super().__init__(f"{where}: {reason}")


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
