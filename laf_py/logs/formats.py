"""How the server log looks: ``text`` for people, ``json`` (one object per line) for log
shippers. Both show the function and request id of lines written by a call, and the request
id of access lines."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

from .tagging import install_call_tags, tags_of

__all__ = ["JsonFormatter", "TextFormatter", "configure_logging"]


class TextFormatter(logging.Formatter):
    """``2026-12-02 17:21:59,123 INFO    hello 6f1a...0001: message``: a call's lines name
    its function and request id where other lines name their logger."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(laf_source)s: %(message)s")
        self._second = -1
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        # logging's own format (2026-12-02 17:21:59,123), its local-time part made once a second.
        second = int(record.created)
        if second != self._second:
            self._second, self._stamp = second, super().formatTime(record, "%Y-%m-%d %H:%M:%S")
        return f"{self._stamp},{int(record.msecs):03d}"

    def format(self, record: logging.LogRecord) -> str:
        function, request_id = tags_of(record)
        source = function if function is not None else record.name
        record.laf_source = f"{source} {request_id}" if request_id else source
        return super().format(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, ISO 8601), ``level``, ``logger``,
    ``message``, and when known ``function``, ``request_id`` and ``exception``."""

    def format(self, record: logging.LogRecord) -> str:
        function, request_id = tags_of(record)
        entry: dict[str, Any] = {
            "time": _iso_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if function is not None:
            entry["function"] = function
        if request_id is not None:
            entry["request_id"] = request_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(entry, default=str).decode()


def _iso_time(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


def configure_logging(level: str, log_format: str = "text") -> None:
    """The server process's log: one handler on stderr, in the chosen format, at ``level``."""
    install_call_tags()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # watchfiles logs every batch of changes at info; laf-py says what it reloaded instead.
    logging.getLogger("watchfiles").setLevel(max(logging.WARNING, root.level))
