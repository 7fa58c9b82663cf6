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
- **Leaving.** A client that disconnects cancels what the stream waits for (the next item,
  or the write to a slow reader) and closes the generator (its ``finally`` runs) at once,
  not at the next item.
- **Failing mid-stream.** The status is out, so it cannot become a 500: the error is logged
  with the request id, and the connection is closed without the end of the chunked body, so
  the client sees a broken response rather than a complete one.

Cost (``python bench/compare.py --only stream``): a plain stream's items are taken with
``async for`` in the request's own task, with no task, timer or future per item, and each
chunk goes to the socket in one ``send`` when nothing is queued (:func:`_chunk_writer`).
Per item that is less work than a hand-written Tornado handler's ``write`` and ``flush``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator
from typing import TYPE_CHECKING, Any, cast

from tornado.iostream import StreamClosedError

from ..core.context import in_call
from ..core.eager import Done, start_now
from ..core.failures import report_failure
from ..core.response import Response
from ..core.stream import PING, SSE_TYPE, EventStream, encode_chunk, encode_event
from ..exceptions import FunctionTimeoutError
from ..logs.capture import flush_output

if TYPE_CHECKING:
    from ..core.context import FunctionContext
    from ..core.threads import FunctionThreads
    from .http import FunctionHandler

__all__ = ["stream_body", "write_stream"]

TEXT_TYPE = "text/plain; charset=utf-8"


def stream_body(result: Any) -> Any:
    """The generator or EventStream a function returned (maybe as a Response's body)."""
    return result.body if isinstance(result, Response) else result


class _ClientLeft(Exception):
    pass


class _Done(Exception):
    """The generator has no more items (what a task may raise instead of
    StopAsyncIteration)."""


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
    source = body.source if isinstance(body, EventStream) else body
    # One kind of source from here on: a plain generator becomes an async one whose next()
    # runs in the function threads.
    items: AsyncGenerator[Any, None] = (
        cast("AsyncGenerator[Any, None]", source)
        if inspect.isasyncgen(source)
        else _in_threads(source, threads)
    )
    ended = False  # the generator ran out: nothing left to close
    # The generator runs as part of the call: what it prints or logs is a line of it.
    with in_call(ctx):
        try:
            ended = await _write_response(handler, result, ctx, timeout, gone, items, body)
        finally:
            if not ended:
                with contextlib.suppress(Exception):  # what its finally raises has no one to tell
                    await items.aclose()  # runs its finally, if it has not ended
            if ctx._output:
                flush_output(ctx)  # a last line without its newline


async def _write_response(
    handler: FunctionHandler,
    result: Any,
    ctx: FunctionContext,
    timeout: float,
    gone: asyncio.Future[None],
    items: AsyncGenerator[Any, None],
    body: Any,
) -> bool:
    """The head and the items; True when the generator ran to its end."""
    sse = isinstance(body, EventStream)
    if handler.request.method == "HEAD":
        _send_head(handler, result, ctx, sse)
        handler.finish()
    elif sse:
        # An event stream is open once the function returned it: the browser's
        # EventSource fires "open" now, and pings keep it while the first event is awaited.
        _send_head(handler, result, ctx, sse)
        if await _write(handler, b"", gone):
            assert isinstance(body, EventStream)
            await _write_events(handler, items, ctx, gone, body.ping)
    else:
        return await _write_chunks(handler, result, items, ctx, timeout, gone)
    return False


async def _write_chunks(
    handler: FunctionHandler,
    result: Any,
    items: AsyncGenerator[Any, None],
    ctx: FunctionContext,
    timeout: float,
    gone: asyncio.Future[None],
) -> bool:
    """A plain stream; True when it ran to the generator's end. Its head goes with its first
    item: a failure before it is still an ordinary error response."""
    name = ctx.function_name
    try:
        first = encode_chunk(await _first_item(items, handler, gone, timeout))
    except StopAsyncIteration:
        first = b""
    except _ClientLeft:
        return False
    except Exception as exc:
        if isinstance(exc, TimeoutError):
            exc = FunctionTimeoutError(name, timeout)
        status, message = _failed(handler, exc, ctx)
        handler.send_error_json(status, message)
        return False
    _send_head(handler, result, ctx, False)
    if not await _write(handler, first, gone):
        return False
    # The rest in this task, each item written and flushed before the next is asked for.
    # A client that leaves cancels the task wherever it waits, in the generator or in a
    # flush (FunctionHandler.on_connection_close): the generator sees the cancellation at
    # its await, as it would see a time limit's.
    task = asyncio.current_task()
    assert task is not None
    write = _chunk_writer(handler)
    handler.waiting_for_item = task
    try:
        async for item in items:
            flushing = write(item if type(item) is bytes else encode_chunk(item))
            if flushing is not None:
                await flushing
            if gone.done():
                return False
    except StreamClosedError:
        return False
    except asyncio.CancelledError:
        if gone.done() and task.uncancel() == 0:  # our own cancellation, not the server's
            return False
        raise
    except Exception as exc:  # the generator's, or an item that cannot be sent
        _failed(handler, exc, ctx)
        _abort(handler)
        return False
    finally:
        handler.waiting_for_item = None
    handler.finish()
    return True


def _chunk_writer(handler: FunctionHandler) -> Callable[[bytes], Awaitable[None] | None]:
    """What writes one chunk once the head is out; it returns what to await before the next
    (the flush), or None when the chunk went out at once.

    When nothing is queued on the connection, a chunk goes straight to the socket with one
    ``send``, framed as Tornado frames it: no IOStream buffer copy and no Futures, which is
    most of what ``handler.write(chunk); await handler.flush()`` costs (as for WebSocket
    frames, server/connection.py). What the socket does not take, or a chunk behind queued
    bytes, goes through the IOStream, in order, and is awaited. A response Tornado does not
    chunk (an HTTP/1.0 client, a Content-Length set by the function), or an application
    with output transforms, takes Tornado's way."""
    connection: Any = handler.request.connection
    stream = getattr(connection, "stream", None)
    if handler._transforms or stream is None or not getattr(connection, "_chunking_output", 0):

        def write_and_flush(chunk: bytes) -> Awaitable[None]:
            handler.write(chunk)
            return handler.flush()

        return write_and_flush

    def send(chunk: bytes) -> Awaitable[None] | None:
        if not chunk:
            return None  # an empty chunk would end the body
        if stream.closed():
            raise StreamClosedError
        data = b"%x\r\n%b\r\n" % (len(chunk), chunk)
        if not stream.writing():
            try:
                sent = stream.socket.send(data)
            except OSError:  # would block, or the connection broke: IOStream handles both
                sent = 0
            if sent == len(data):
                return None
            data = data[sent:]
        written: Awaitable[None] = stream.write(data)
        return written

    return send


async def _first_item(
    items: AsyncGenerator[Any, None],
    handler: FunctionHandler,
    gone: asyncio.Future[None],
    timeout: float,
) -> Any:
    """A plain stream's first item within ``timeout`` (TimeoutError past it); _ClientLeft
    as soon as the client disconnects. StopAsyncIteration when there is none."""
    # An item that is ready at once (the usual case) needs no timer (core/eager.py).
    started = start_now(items.__anext__())
    if isinstance(started, Done):
        return started.value
    task = asyncio.current_task()
    assert task is not None
    handler.waiting_for_item = task
    try:
        async with asyncio.timeout(timeout):
            return await started
    except asyncio.CancelledError:
        if gone.done() and task.uncancel() == 0:  # our own cancellation, not the server's
            raise _ClientLeft from None
        raise
    finally:
        handler.waiting_for_item = None


async def _write_events(
    handler: FunctionHandler,
    items: AsyncGenerator[Any, None],
    ctx: FunctionContext,
    gone: asyncio.Future[None],
    ping: float,
) -> None:
    """An event stream, its head already out: events, and a ping while one is awaited."""
    while True:
        try:
            event = encode_event(await _next_or_ping(items, handler, gone, ping))
        except _Done:
            break
        except _ClientLeft:
            return
        except Exception as exc:  # the generator's, or an item that cannot be sent
            _failed(handler, exc, ctx)
            _abort(handler)
            return
        if not await _write(handler, event, gone):
            return
    if not gone.done():
        handler.finish()


async def _next_or_ping(
    items: AsyncGenerator[Any, None],
    handler: FunctionHandler,
    gone: asyncio.Future[None],
    ping: float,
) -> Any:
    """The next item of an event stream, with a ping every ``ping`` seconds meanwhile;
    _ClientLeft as soon as the client disconnects."""
    pending = asyncio.ensure_future(_next(items))
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


async def _next(items: AsyncGenerator[Any, None]) -> Any:
    try:
        return await items.__anext__()
    except StopAsyncIteration:
        raise _Done from None


async def _in_threads(
    generator: Generator[Any, None, None], threads: FunctionThreads
) -> AsyncGenerator[Any, None]:
    """A plain generator as an async one: each ``next()`` runs in a function thread, so a
    generator that blocks never blocks the loop. Closed, it closes the generator, once the
    thread is out of it when it was cancelled while one ran it."""
    end = object()
    call = None
    try:
        while True:
            # In the call's context: the thread's prints are lines of the call too.
            call = threads.submit(contextvars.copy_context().run, next, generator, end)
            item = await asyncio.wrap_future(call)
            if item is end:
                return
            yield item
    finally:
        if call is not None and not call.done():
            threads.abandon(call)  # a thread is still in next(): it finishes in the background
            call.add_done_callback(lambda _: _close_quietly(generator))
        else:
            _close_quietly(generator)


def _failed(handler: FunctionHandler, exc: BaseException, ctx: FunctionContext) -> tuple[int, str]:
    """Log a failure of the stream as one of its call's lines, and count it."""
    metrics = handler.runtime.metrics
    if metrics is not None:
        metrics.function_failed(ctx.function_name, exc)
    return report_failure(exc, ctx.function_name, ctx.request_id, ctx=ctx)


def _close_quietly(generator: Generator[Any, None, None]) -> None:
    with contextlib.suppress(Exception):
        generator.close()


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
    if defaults is None and not sse and not isinstance(result, Response):
        handler.set_header("Content-Type", TEXT_TYPE)  # the usual case: nothing else to set
        return
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
    elif hasattr(connection, "abort"):  # under ASGI (laf_py/asgi/bridge.py)
        connection.abort()
    with contextlib.suppress(Exception):
        handler.finish()
