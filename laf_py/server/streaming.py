"""Writing a streamed response (a generator, or an :class:`~laf_py.EventStream`) to a client.

- **Time.** The function's time limit covers the call and, for a plain stream, the wait for
  the first item: an error or a timeout before it is an ordinary error response (a 500, a
  504, or the HTTPError's status). An :class:`~laf_py.EventStream` sends its head at once
  (the browser's ``EventSource`` is open, and pings keep it while the first event is awaited).
  After the status line is out, a stream runs until the generator ends or the client leaves:
  streams are meant to be long.
- **Flow.** Each item is written and flushed before the next is asked for, so a slow reader
  slows the generator instead of filling memory. A plain generator's ``next()`` runs in the
  function threads, never on the event loop.
- **Leaving.** A client that disconnects cancels the item being awaited and closes the
  generator (its ``finally`` runs) at once, not at the next item.
- **Failing mid-stream.** The status is out, so it cannot become a 500: the error is logged
  with the request id, and the connection is closed without the end of the chunked body, so
  the client sees a broken response rather than a complete one.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tornado.iostream import StreamClosedError

from ..core.eager import Done, start_now
from ..core.failures import report_failure
from ..core.response import Response
from ..core.stream import PING, SSE_TYPE, EventStream, encode_chunk, encode_event
from ..exceptions import FunctionTimeoutError

if TYPE_CHECKING:
    from ..core.context import FunctionContext
    from ..core.threads import FunctionThreads
    from .http import FunctionHandler

__all__ = ["stream_body", "write_stream"]

TEXT_TYPE = "text/plain; charset=utf-8"


def stream_body(result: Any) -> Any:
    """The generator or EventStream a function returned (maybe as a Response's body)."""
    return result.body if isinstance(result, Response) else result


class _Done(Exception):
    """The generator has no more items."""


class _Items:
    """The next item of an async or plain generator, as an awaitable each time."""

    __slots__ = ("_in_thread", "_source", "_threads")

    def __init__(self, source: Any, threads: FunctionThreads) -> None:
        self._source = source
        self._threads = threads
        self._in_thread: Any = None  # a plain generator's next() still running in a thread

    async def next(self) -> Any:
        source = self._source
        if inspect.isasyncgen(source):
            try:
                return await source.__anext__()
            except StopAsyncIteration:
                raise _Done from None
        done = _Done()
        call = self._threads.submit(next, source, done)
        self._in_thread = call
        try:
            item = await asyncio.wrap_future(call)
        finally:
            if call.done():
                self._in_thread = None
        if item is done:
            raise _Done
        return item

    async def close(self) -> None:
        """Run the generator's ``finally`` (a plain one's once its thread is out of it)."""
        source = self._source
        if inspect.isasyncgen(source):
            with contextlib.suppress(Exception):
                await source.aclose()
            return
        running = self._in_thread
        if running is not None and not running.done():
            self._threads.abandon(running)
            running.add_done_callback(lambda _: _close_quietly(source))
        else:
            _close_quietly(source)


def _close_quietly(generator: Any) -> None:
    with contextlib.suppress(Exception):
        generator.close()


async def write_stream(
    handler: FunctionHandler,
    result: Any,
    ctx: FunctionContext,
    timeout: float,
    threads: FunctionThreads,
    gone: asyncio.Future[None],
) -> None:
    """Stream ``result`` (what the function returned) as the response; ``gone`` resolves
    when the client disconnects."""
    body = stream_body(result)
    sse = isinstance(body, EventStream)
    source = body.source if isinstance(body, EventStream) else body
    encode: Callable[[Any], bytes] = encode_event if sse else encode_chunk
    ping = body.ping if isinstance(body, EventStream) else None
    items = _Items(source, threads)
    name, request_id = ctx.function_name, ctx.request_id
    try:
        if handler.request.method == "HEAD":
            _send_head(handler, result, ctx, sse)
            handler.finish()
            return
        if sse:
            # An event stream is open once the function returned it: the browser's
            # EventSource fires "open" now, and pings keep it while the first event is awaited.
            _send_head(handler, result, ctx, sse)
            if not await _write(handler, b"", gone):
                return
        else:
            # A plain stream's head goes with its first item: a failure before it is still an
            # ordinary error response.
            try:
                first = encode(await _next(items, handler, gone, None, timeout))
            except _Done:
                first = b""
            except _ClientLeft:
                return
            except Exception as exc:
                if isinstance(exc, TimeoutError):
                    exc = FunctionTimeoutError(name, timeout)
                status, message = report_failure(exc, name, request_id)
                handler.send_error_json(status, message)
                return
            _send_head(handler, result, ctx, sse)
            if not await _write(handler, first, gone):
                return
        while True:
            try:
                chunk = encode(await _next(items, handler, gone, ping, None))
            except _Done:
                break
            except _ClientLeft:
                return
            except Exception as exc:  # the generator's, or an item that cannot be sent
                report_failure(exc, name, request_id)
                _abort(handler)
                return
            if not await _write(handler, chunk, gone):
                return
        if not gone.done():
            handler.finish()
    finally:
        await items.close()


class _ClientLeft(Exception):
    pass


async def _next(
    items: _Items,
    handler: FunctionHandler,
    gone: asyncio.Future[None],
    ping: float | None,
    timeout: float | None,
) -> Any:
    """The next item; TimeoutError past ``timeout``; _ClientLeft as soon as the client
    disconnects (the generator sees a cancellation at its ``await``)."""
    if ping is not None:
        return await _next_or_ping(items, handler, gone, ping)
    # Awaited in this task (no task, no wait per item): a disconnect cancels the task while
    # it waits here (FunctionHandler.on_connection_close), as asyncio.timeout does. An item
    # that is ready at once (the usual case) needs no timer either (core/eager.py).
    started = start_now(items.next())
    if isinstance(started, Done):
        return started.value
    task = asyncio.current_task()
    assert task is not None
    handler.waiting_for_item = task
    try:
        if timeout is None:
            return await started
        async with asyncio.timeout(timeout):
            return await started
    except asyncio.CancelledError:
        if gone.done() and task.uncancel() == 0:  # our own cancellation, not the server's
            raise _ClientLeft from None
        raise
    finally:
        handler.waiting_for_item = None


async def _next_or_ping(
    items: _Items, handler: FunctionHandler, gone: asyncio.Future[None], ping: float
) -> Any:
    """The next item of an event stream, with a ping every ``ping`` seconds meanwhile;
    _ClientLeft as soon as the client disconnects."""
    pending = asyncio.ensure_future(items.next())
    try:
        while True:
            done, _ = await asyncio.wait(
                (pending, gone), timeout=ping, return_when=asyncio.FIRST_COMPLETED
            )
            if pending in done:
                return pending.result()
            if gone.done() or not await _write(handler, PING, gone):
                raise _ClientLeft
    finally:
        if not pending.done():
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending


async def _write(handler: FunctionHandler, chunk: bytes, gone: asyncio.Future[None]) -> bool:
    """Write and flush one chunk; False once the client is gone."""
    if gone.done():
        return False
    if chunk:
        handler.write(chunk)
    try:
        await handler.flush()
    except StreamClosedError:
        return False
    return not gone.done()


def _send_head(handler: FunctionHandler, result: Any, ctx: FunctionContext, sse: bool) -> None:
    """Status and headers: those of a Response / ``ctx.response``, and the stream's type."""
    defaults = ctx.response_if_touched
    status = defaults.status if defaults else None
    headers = dict(defaults.headers) if defaults else {}
    content_type = defaults.content_type if defaults else None
    if isinstance(result, Response):
        status = result.status or status
        headers.update(result.headers)
        content_type = result.content_type or content_type
    handler.set_status(status or 200)
    for name, value in headers.items():
        handler.set_header(name, value)
    if not any(name.lower() == "content-type" for name in headers):
        handler.set_header("Content-Type", content_type or (SSE_TYPE if sse else TEXT_TYPE))
    if sse:
        handler.set_header("Cache-Control", "no-cache")
        handler.set_header("X-Accel-Buffering", "no")  # nginx: pass each event on at once


def _abort(handler: FunctionHandler) -> None:
    """End a response that failed mid-way: close the connection before the chunked body's
    end, so no client takes the part it got for the whole."""
    connection: Any = handler.request.connection
    stream = getattr(connection, "stream", None)
    if stream is not None:
        stream.close()
    with contextlib.suppress(Exception):
        handler.finish()
