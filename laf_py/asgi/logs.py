"""The ASGI server's own log lines, without tokens: uvicorn logs each WebSocket handshake
with its URL (``?token=`` included), and with ``--log-level debug`` the request line of the
upgrade. Its loggers get the filter Tornado's have (laf_py/logs/hidden.py)."""

from __future__ import annotations

from ..logs.hidden import hide_tokens_in

__all__ = ["SERVER_LOGGERS", "hide_tokens_in_server_logs"]

# uvicorn's loggers, hypercorn's and granian's.
SERVER_LOGGERS = (
    "uvicorn.error",
    "uvicorn.access",
    "hypercorn.error",
    "hypercorn.access",
    "_granian",
    "granian.access",
)


def hide_tokens_in_server_logs() -> None:
    hide_tokens_in(*SERVER_LOGGERS)
