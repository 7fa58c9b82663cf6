"""``print()`` inside a function becomes a log line of that call.

While a server runs, ``sys.stdout`` and ``sys.stderr`` are wrapped: text written outside any
call goes to the real stream as before; text written by a call (``current_call`` is set) is
cut into lines, and each line is logged at INFO (stdout) or WARNING (stderr) on the ``print``
logger, so it is tagged with the function and request id like any other log line of the call.
An unfinished line waits for its newline, or for the end of the call.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any, TextIO

from ..core.context import FunctionContext, current_call

__all__ = ["PRINT_LOGGER", "capture_output", "flush_output", "release_output"]

PRINT_LOGGER = "print"
print_log = logging.getLogger(PRINT_LOGGER)

# A line longer than this is logged in pieces: one print cannot hold a whole buffer hostage.
MAX_PENDING_LINE = 64 * 1024


class _Reentry(threading.local):
    active = False


_emitting = _Reentry()


class CallOutput:
    """A text stream that turns a call's writes into log lines and passes the rest on."""

    def __init__(self, stream: TextIO, name: str, level: int) -> None:
        self.wrapped = stream
        self._name = name
        self._level = level

    def write(self, text: str) -> int:
        ctx = current_call.get()
        # A log handler writing to this very stream (logging's last resort writes to
        # sys.stderr) must reach the real stream, not make another record.
        if ctx is None or _emitting.active:
            return self.wrapped.write(text)
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        pending = ctx._output
        if pending is None:
            pending = ctx._output = {}
        # Per stream and thread: two threads of one call (asyncio.to_thread copies its
        # context) each keep their own unfinished line.
        key = f"{self._name} {threading.get_ident()}"
        buffered = pending.get(key, "") + text
        *lines, rest = buffered.split("\n")
        while len(rest) > MAX_PENDING_LINE:
            lines.append(rest[:MAX_PENDING_LINE])
            rest = rest[MAX_PENDING_LINE:]
        if rest:
            pending[key] = rest
        else:
            pending.pop(key, None)
        for line in lines:
            self._emit(line.rstrip("\r"))
        return len(text)

    def _emit(self, line: str) -> None:
        if print_log.disabled:  # logging.config disabled it: the line goes where print meant
            self.wrapped.write(line + "\n")
            return
        if not print_log.isEnabledFor(self._level):
            return
        # The record directly: Logger.log would walk the stack for a caller (print's) that
        # says nothing here, a good part of the cost of a line.
        record = print_log.makeRecord(PRINT_LOGGER, self._level, "print", 0, line, (), None)
        _emitting.active = True
        try:
            print_log.handle(record)
        finally:
            _emitting.active = False

    def flush_call(self, ctx: FunctionContext) -> None:
        pending = ctx._output
        if not pending:
            return
        for key in [k for k in pending if k.startswith(f"{self._name} ")]:
            rest = pending.pop(key)
            if rest:
                self._emit(rest)

    def flush(self) -> None:
        if current_call.get() is None:
            self.wrapped.flush()

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        # encoding, fileno, isatty, buffer ...: the real stream's.
        return getattr(self.wrapped, name)


_lock = threading.Lock()
_users = 0


def capture_output() -> None:
    """Wrap ``sys.stdout`` and ``sys.stderr`` (counted: each server calls it once)."""
    global _users
    with _lock:
        _users += 1
        if not isinstance(sys.stdout, CallOutput):
            sys.stdout = CallOutput(sys.stdout, "stdout", logging.INFO)
        if not isinstance(sys.stderr, CallOutput):
            sys.stderr = CallOutput(sys.stderr, "stderr", logging.WARNING)


def release_output() -> None:
    """Undo :func:`capture_output` once the last server using it has stopped."""
    global _users
    with _lock:
        _users = max(0, _users - 1)
        if _users:
            return
        if isinstance(sys.stdout, CallOutput):
            sys.stdout = sys.stdout.wrapped
        if isinstance(sys.stderr, CallOutput):
            sys.stderr = sys.stderr.wrapped


def flush_output(ctx: FunctionContext) -> None:
    """Log the unfinished lines a call left (called when the call ends, in its context)."""
    if not ctx._output:
        return
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, CallOutput):
            stream.flush_call(ctx)
