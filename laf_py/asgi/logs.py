"""The ASGI server's own log lines, without tokens.

uvicorn logs each WebSocket handshake with its URL (``?token=`` included), and with
``--log-level debug`` the request line of the upgrade; every such line passes through
:func:`~laf_py.cloud.tokens.hide_tokens` first, as Tornado's do (server/app.py)."""

from __future__ import annotations

import logging
import re

from ..cloud.tokens import hide_tokens, hide_tokens_in_uri

__all__ = ["hide_tokens_in_server_logs"]

# uvicorn's loggers, hypercorn's and granian's.
SERVER_LOGGERS = (
    "uvicorn.error",
    "uvicorn.access",
    "hypercorn.error",
    "hypercorn.access",
    "_granian",
    "granian.access",
)


_TARGET = re.compile(r"/[^\s\"]*")  # a request target in a line: /path?query


def hide_tokens_in_line(message: str) -> str:
    """Every JWT-shaped string, and every token of a URL in it, percent-encoded or not."""
    return _TARGET.sub(lambda m: hide_tokens_in_uri(m.group()), hide_tokens(message))


class _HideTokens(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True  # logging reports the broken record itself
        hidden = hide_tokens_in_line(message)
        if hidden == message:
            return True
        if isinstance(record.args, tuple):
            # Each argument hidden in place: uvicorn's access formatter unpacks the args.
            record.args = tuple(
                hide_tokens_in_line(arg) if isinstance(arg, str) else arg for arg in record.args
            )
            record.msg = hide_tokens_in_line(str(record.msg))
        else:
            record.msg, record.args = hidden, None
        # uvicorn's coloured copy of the message, used by its own formatter
        if hasattr(record, "color_message"):
            record.color_message = hide_tokens_in_line(str(record.color_message))
        return True


_FILTER = _HideTokens()


def hide_tokens_in_server_logs() -> None:
    """Install the filter (once: a logger keeps one copy of a filter)."""
    for name in SERVER_LOGGERS:
        logging.getLogger(name).addFilter(_FILTER)
