"""Server log lines without tokens: the one filter for Tornado's lines and the ASGI server's.

A token can reach a server's own line in a URL (a WebSocket client's ``?token=``), a request
line it could not parse, or a header value it refuses; every such line passes through
:func:`hide_tokens_in_line` before any handler sees it."""

from __future__ import annotations

import logging
import re

from ..cloud.tokens import hide_tokens, hide_tokens_in_uri

__all__ = ["hide_tokens_in", "hide_tokens_in_line"]

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
            # Each argument hidden in place: a formatter may unpack the args (uvicorn's
            # access formatter does). Unless a token is still there (in bytes, say).
            record.args = tuple(
                hide_tokens_in_line(arg) if isinstance(arg, str) else arg for arg in record.args
            )
            record.msg = hide_tokens_in_line(str(record.msg))
            try:
                again = record.getMessage()
            except Exception:
                again = message
            if hide_tokens_in_line(again) != again:
                record.msg, record.args = hidden, None
        else:
            record.msg, record.args = hidden, None
        # uvicorn's coloured copy of the message, used by its own formatter
        if hasattr(record, "color_message"):
            record.color_message = hide_tokens_in_line(str(record.color_message))
        return True


_FILTER = _HideTokens()


def hide_tokens_in(*names: str) -> None:
    """Filter these loggers' lines (once each: a logger keeps one copy of a filter)."""
    for name in names:
        logging.getLogger(name).addFilter(_FILTER)
