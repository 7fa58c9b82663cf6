"""One WebSocket connection: its ``connection`` event before the handshake answer, then frames in
and out, its events in order, and the closing handshake.

The connection runs its own RFC 6455 protocol on Tornado's IOStream (frames are parsed by
:mod:`laf_py.core.frame_parser`), for three reasons Tornado's ``WebSocketHandler`` cannot meet:

- **Live when open.** The ``connection`` event runs before the client is answered. Frames sent
  meanwhile (by the event, or to the socket once it is accepted) are held and go out right
  behind the ``101``, so the client sees them first, and a socket is findable the moment the
  client sees it open.
- **Reading never stops for a slow event.** Frames are read while a ``message`` event runs, so a
  pong always counts. Messages that arrive meanwhile wait their turn (events of one connection
  never overlap); past ``MAX_WAITING`` of them the server stops reading from that client until it
  catches up, so a flood costs bounded memory.
- **The close event knows why.** Whoever closed first (the client, the server with a code of its
  own, a limit) is what the ``close`` event hears.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Mapping
from typing import Any

from tornado.ioloop import IOLoop
from tornado.iostream import IOStream, StreamBufferFullError, StreamClosedError
from tornado.util import _websocket_mask

from ..cloud.delivery import WRITTEN
from ..cloud.tokens import TOKEN_EXPIRED, expires_at, user_id_of
from ..core import frame_parser as parsing
from ..core import frames
from ..core.context import WS_CLOSE, WS_CONNECTION, WS_MESSAGE, FunctionContext, new_request_id
from ..core.failures import report_failure
from ..core.flood import FloodGuard
from ..core.registry import WEBSOCKET, Function
from ..core.response import error_body
from ..exceptions import HTTPError
from ..runtime import Runtime
from .activity import Activity
from .keepalive import Keepalive

__all__ = ["CLOSE_TIMEOUT", "MAX_WAITING", "SocketConnection"]

log = logging.getLogger("laf_py")

SWITCHING_PROTOCOLS = 101
FORBIDDEN = 4403
POLICY_VIOLATION = 1008
SLOW_CONSUMER = 1008
INTERNAL_ERROR = 1011
PING_TIMEOUT = 1011  # as the websockets library does
MESSAGE_TIMEOUT = "message timeout"  # close 1008: a message not complete in --message-timeout

READ_CHUNK = 65536
MAX_WAITING = 16  # messages waiting behind the one being handled before reading pauses
RESUME_AT = 4  # ... and reading resumes when this few are left (the websockets library's 16/4)
CLOSE_TIMEOUT = 5.0  # how long a close frame waits for the client's answer
SEND_STALL = 5.0  # unsent data over --max-send-buffer the client takes no byte of: 1008 after this
TOKEN_EXPIRED_CODE = 4401  # the socket's token expired (4000 + 401, like a rejection)
MAX_TIMER = 86400.0  # an expiry timer waits at most this long, then looks again


class SocketConnection:
    """One connection, from its ``connection`` event to its ``close`` event.

    It is the Transport of its ``Socket``, a Pingable for Keepalive, and a Connection for
    Activity (shutdown). Use: ``await connect()``, then ``start(stream, response)`` once the
    handshake answer is ready.
    """

    # Slots: thousands of idle connections each pay only for their fields.
    __slots__ = (
        "_assembly",
        "_backlog",
        "_close",
        "_close_sent",
        "_closing_timer",
        "_direct",
        "_early",
        "_ended",
        "_event_ran",
        "_expiry",
        "_flood",
        "_headers",
        "_parser",
        "_paused",
        "_query",
        "_stream",
        "_task",
        "_user",
        "_waiting",
        "activity",
        "keepalive",
        "runtime",
        "socket",
    )

    def __init__(
        self,
        runtime: Runtime,
        activity: Activity,
        keepalive: Keepalive,
        headers: Mapping[str, str],
        query: Mapping[str, str],
        user: dict[str, Any] | None,
        remote_address: str | None = None,
    ) -> None:
        settings = runtime.settings
        self.runtime = runtime
        self.activity = activity
        self.keepalive = keepalive
        self._headers = headers
        self._query = query
        self._user = user
        self.socket = runtime.sockets.open(self, user_id_of(user))
        self.socket.remote_address = remote_address
        self._stream: IOStream | None = None
        self._early: list[bytes] | None = []  # frames held until the handshake answer is out
        self._parser = parsing.FrameParser(settings.max_message_size, _websocket_mask)
        self._assembly: asyncio.TimerHandle | None = None  # a message started: its deadline
        self._flood = FloodGuard(settings.max_messages_per_second)
        self._waiting: deque[str | bytes] | None = None  # made when a message has to wait
        self._task: asyncio.Task[None] | None = None  # handling messages, or the close event
        self._paused = False  # not reading: too many messages are waiting
        self._direct = False  # reading straight from the socket (see _read)
        self._event_ran = False  # the connection event reached the function: close follows
        self._close: tuple[int | None, str] | None = None  # who closed first, and why
        self._close_sent = False
        self._closing_timer: asyncio.TimerHandle | None = None
        self._expiry: asyncio.TimerHandle | None = None  # closes the socket when its token expires
        self._ended = False  # the TCP connection is closed
        self._backlog: asyncio.TimerHandle | None = None  # unsent data over --max-send-buffer

    # -- the handshake ---------------------------------------------------------------------

    async def connect(self) -> tuple[int, str]:
        """Run the ``connection`` event (through the interceptor) and accept or reject the
        socket by its outcome. Returns how the handshake ends for the access log (101 when
        accepted, else the close code) and the event's request id."""
        self.activity.begin_connection(self)
        self._watch_expiry()
        ctx = self._context(WS_CONNECTION, {})
        runtime = self.runtime
        function, interceptor = runtime.websocket, runtime.interceptor
        try:
            if function is None or function.error or (interceptor and interceptor.error):
                raise RuntimeError("WebSocket function or interceptor is unavailable")
            _, reached = await runtime.invoker.call(function, ctx, interceptor, self._reached)
        except HTTPError as exc:
            self.close(4000 + exc.status, exc.message)
        except Exception as exc:
            _, error = report_failure(exc, WEBSOCKET, ctx.request_id, self.socket.id, ctx)
            self._send_error_frame(error, ctx.request_id)
            self.close(INTERNAL_ERROR, error)
        else:
            if not reached:
                self.close(FORBIDDEN, "Forbidden")
            elif self._close is None:  # not closed meanwhile (by the event, or a shutdown)
                runtime.sockets.accept(self.socket)
                if runtime.metrics is not None:
                    runtime.metrics.websocket_opened()  # closed: _on_stream_closed
                return SWITCHING_PROTOCOLS, ctx.request_id
        code = self._close[0] if self._close is not None else None
        return code or SWITCHING_PROTOCOLS, ctx.request_id

    def _reached(self) -> None:
        self._event_ran = True

    def start(self, stream: IOStream, response: bytes) -> None:
        """The upgrade is done: send ``response`` (the ``101``) with the frames held since,
        then read frames."""
        self._stream = stream
        # The hard cap on unsent data (Tornado raises StreamBufferFullError past it); below
        # it, a backlog over --max-send-buffer is judged by whether it drains (_write).
        stream.max_write_buffer_size = self.runtime.settings.max_send_backlog
        held, self._early = self._early or [], None
        if stream.closed():  # the client left during the connection event
            self._on_stream_closed()
            return
        stream.set_close_callback(self._on_stream_closed)
        # Reading straight from the socket (see _read). Instance attributes: this stream only.
        stream._handle_read = self._handle_read  # type: ignore[method-assign]
        stream.reading = self._reading  # type: ignore[method-assign]
        self._write(b"".join([response, *held]))
        if self._close_sent:
            self._await_close_answer()
        self.keepalive.add(self)
        self._read()

    # -- reading ---------------------------------------------------------------------------
    #
    # Frames are read straight from the socket when it is readable: the stream's own
    # ``_handle_read`` (and ``reading``) are replaced on this stream (start), so a readable
    # socket costs one ``recv`` and the frames are handled in that same callback, with no
    # Future, no second ``recv`` that finds nothing and no extra turn of the loop per message.
    # Whenever that is not the mode (paused, closing, or data Tornado already holds in its
    # buffer), the stream behaves exactly as Tornado's own and is read through ``read_bytes``:
    # when paused, Tornado reads one chunk into its buffer and stops listening; what it holds
    # is read through it, in order, before reading straight from the socket again.

    def _read(self) -> None:
        """Read on: what the stream holds first, through a read of its own, else straight."""
        stream = self._stream
        assert stream is not None
        if stream._read_buffer_size:  # (Tornado's buffer, read directly: cheap)
            self._direct = False
            # (try/except and a type comment rather than contextlib.suppress and cast())
            try:
                reading: asyncio.Future[bytes] = stream.read_bytes(READ_CHUNK, partial=True)  # type: ignore[assignment]
            except StreamClosedError:
                return  # the close callback follows
            reading.add_done_callback(self._on_data)
            return
        self._direct = True
        stream._add_io_state(IOLoop.READ)  # listen (a no-op when it already does)

    def _on_data(self, future: asyncio.Future[bytes]) -> None:
        """What a read through the stream gave."""
        if future.cancelled() or future.exception() is not None:
            return  # the stream closed; its close callback follows
        if self._feed(future.result()) and not self._paused and not self._ended:
            self._read()

    def _handle_read(self) -> None:
        """The stream's ``_handle_read`` on this connection: its socket is readable."""
        stream = self._stream
        assert stream is not None
        if not self._direct:
            IOStream._handle_read(stream)  # Tornado's own
            return
        try:
            data = stream.socket.recv(READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # reset by the client: as Tornado's read, close
            stream.close(exc_info=exc)
            return
        if not data:
            stream.close()  # the client closed its side
            return
        self._feed(data)

    def _reading(self) -> bool:
        """The stream's ``reading`` on this connection: Tornado listens for reads while it is
        True, also while it writes."""
        stream = self._stream
        return self._direct or (stream is not None and stream._read_future is not None)

    def _feed(self, data: bytes) -> bool:
        """Handle what the client sent; False once it closed or failed: read no more."""
        completed = False  # a message ended in this read: the next one has a deadline of its own
        for kind, value in self._parser.feed(data):
            if kind == parsing.TEXT or kind == parsing.BINARY:
                completed = True
                self._received(value)
            elif kind == parsing.PONG:
                self.keepalive.answered(self)
            elif kind == parsing.PING:
                if not self._close_sent:
                    self._write(frames.frame(parsing.PONG, value))
            elif kind == parsing.CLOSE:
                self._direct = False
                self._client_closed(*value)
                return False
            else:  # FAILED: the client broke the protocol
                self._direct = False
                self._fail(*value)
                return False
        # A frame, or a message in fragments, begun and not complete: it must be within
        # --message-timeout. (The parser's state, read directly: this runs for every read.)
        parser = self._parser
        unfinished = parser._waiting or parser._fragments
        if self._assembly is not None and (completed or not unfinished):
            self._assembly.cancel()
            self._assembly = None
        if unfinished and self._assembly is None:
            timeout = self.runtime.settings.message_timeout
            loop = asyncio.get_running_loop()
            self._assembly = loop.call_later(timeout, self._message_timed_out)
        return True

    def _received(self, message: str | bytes) -> None:
        if self._close_sent:
            return  # we are closing: what the client sends meanwhile is dropped
        self.socket.messages_in += 1
        metrics = self.runtime.metrics
        if metrics is not None:
            metrics.message_in()
        if self._task is None:
            self._start_handling(message)
            return
        waiting = self._waiting
        if waiting is None:
            waiting = self._waiting = deque()
        elif waiting and not self._flood.allows():
            # Two or more behind: a client that waits for each reply never gets here, so
            # the rate limit counts only clients that send without waiting.
            self._refuse_flood()
            return
        waiting.append(message)
        if len(waiting) >= MAX_WAITING:
            self._paused = True
            self._direct = False  # Tornado reads one chunk more into its buffer, then stops

    def _start_handling(self, message: str | bytes) -> None:
        """No event is running: handle ``message`` (and those that arrive meanwhile) in a
        task of their own, while reading goes on."""
        self._task = asyncio.get_running_loop().create_task(self._handle(message))

    async def _handle(self, message: str | bytes) -> None:
        """Handle ``message`` and every message that arrives meanwhile, one at a time."""
        try:
            while True:
                await self._message_event(message)
                waiting = self._waiting
                if not waiting:
                    break
                message = waiting.popleft()
                if self._paused and len(waiting) <= RESUME_AT:
                    self._paused = False
                    if not self._ended:
                        self._read()
        finally:
            self._task = None
            if self._ended:
                self._start_close_event()

    async def _message_event(self, message: str | bytes) -> None:
        ctx = self._context(WS_MESSAGE, {"data": message, "is_binary": isinstance(message, bytes)})
        try:
            await self.runtime.invoker.call(self._function(), ctx)
        except Exception as exc:
            _, error = report_failure(exc, WEBSOCKET, ctx.request_id, self.socket.id, ctx)
            self._send_error_frame(error, ctx.request_id)

    def _refuse_flood(self) -> None:
        if self._flood.persists():
            self.close(POLICY_VIOLATION, "too many messages")
        else:
            limit = self.runtime.settings.max_messages_per_second
            message = f"Too many messages: at most {limit:g} per second"
            self._send_error_frame(message, new_request_id())

    @property
    def reading_paused(self) -> bool:
        """For Keepalive: a client we stopped reading cannot be heard answering pings; nor
        can one whose ping waits behind a backlog (that one is judged by _check_backlog)."""
        return self._paused or self._backlog is not None

    # -- closing ---------------------------------------------------------------------------

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake (``socket.close``, a rejection, a limit): the close
        frame goes out, and the client's answer (or ``CLOSE_TIMEOUT``) ends the connection."""
        if self._close_sent or self._ended:
            return
        if self._close is None:
            self._close = (code, frames.close_reason(reason))
        self._close_sent = True
        frame = frames.close_frame(code, reason)
        if self._early is not None:
            self._early.append(frame)  # sent with the handshake answer
            return
        self._write(frame)
        self._await_close_answer()

    def _await_close_answer(self) -> None:
        if self._closing_timer is None and not self._ended:
            loop = asyncio.get_running_loop()
            self._closing_timer = loop.call_later(CLOSE_TIMEOUT, self._drop)

    def _client_closed(self, code: int | None, reason: str) -> None:
        """The client's close frame: the answer to ours, or its own close, which we echo."""
        if self._close is None:
            self._close = (code, reason)
        if not self._close_sent:
            self._close_sent = True
            payload = b"" if code is None else code.to_bytes(2, "big")
            self._write(frames.frame(parsing.CLOSE, payload))
        self._close_when_written()

    def _fail(self, code: int, reason: str) -> None:
        """The client broke RFC 6455: say why in a close frame and end the connection."""
        log.info("closing socket %s: %s (%d)", self.socket.id, reason, code)
        if self._close is None:
            self._close = (code, reason)
        if not self._close_sent:
            self._close_sent = True
            self._write(frames.close_frame(code, reason))
        self._close_when_written()

    def _close_when_written(self) -> None:
        """Close the TCP connection once what is queued (the close frame) is out; the server
        closes first, as RFC 6455 7.1.1 asks."""
        stream = self._stream
        if stream is None or stream.closed():
            return
        if stream.writing():
            stream.write(b"").add_done_callback(lambda _: stream.close())
        else:
            stream.close()

    def _drop(self) -> None:
        if self._stream is not None:
            self._stream.close()

    def abort(self, code: int, reason: str) -> None:
        """Shutdown (Activity): a closing handshake first; if one is already under way, drop
        the TCP connection."""
        if self._close_sent:
            self._drop()
        else:
            self.close(code, reason)

    def ping_timed_out(self) -> None:
        """For Keepalive: no pong in time. Say why in a close frame (a client that reads but
        does not answer pings sees it), then drop the connection without waiting for the
        client's reply, which is not coming. But while data is still queued for the client,
        its ping may be waiting behind it: the slow-consumer rule judges it instead, by
        whether it keeps taking bytes (_check_backlog)."""
        stream = self._stream
        if stream is not None and stream.writing() and not self._close_sent:
            if self._backlog is None:
                self._watch_backlog(stream._total_write_done_index, time.monotonic())
            return
        if self._close is None:
            self._close = (PING_TIMEOUT, "ping timeout")
        if not self._close_sent:
            self._close_sent = True
            self._write(frames.close_frame(PING_TIMEOUT, "ping timeout"))
        self._drop()

    def _watch_expiry(self) -> None:
        """A socket lives no longer than the token it was opened with: at the token's ``exp``
        it is closed with 4401 "token expired" (the client reconnects with a fresh token).
        One timer, only for sockets whose token expires."""
        deadline = expires_at(self._user)
        if deadline is not None and not self._ended:
            delay = min(max(deadline - time.time(), 0.0), MAX_TIMER)
            self._expiry = asyncio.get_running_loop().call_later(delay, self._token_expired)

    def _token_expired(self) -> None:
        self._expiry = None
        deadline = expires_at(self._user)
        if deadline is not None and deadline > time.time():
            self._watch_expiry()  # a far exp (past MAX_TIMER), or the clock moved: not yet
        else:
            self.close(TOKEN_EXPIRED_CODE, TOKEN_EXPIRED)

    def _message_timed_out(self) -> None:
        """A message began more than --message-timeout ago and is not complete: a client
        trickling a frame, or one that stalls mid-message (between fragments it can still
        answer pings, so the ping timeout would never end it). Close 1008 and drop at once:
        the client's answer would queue behind the frame it is not finishing."""
        self._assembly = None
        if self._ended:
            return
        timeout = self.runtime.settings.message_timeout
        if self._paused:  # we stopped reading it, so it cannot finish: judge it later
            self._assembly = asyncio.get_running_loop().call_later(timeout, self._message_timed_out)
            return
        log.info("closing socket %s: a message not complete after %gs", self.socket.id, timeout)
        if self._close is None:
            self._close = (POLICY_VIOLATION, MESSAGE_TIMEOUT)
        if not self._close_sent:
            self._close_sent = True
            self._write(frames.close_frame(POLICY_VIOLATION, MESSAGE_TIMEOUT))
        self._drop()

    def _on_stream_closed(self) -> None:
        if self._ended:
            return
        self._ended = True
        self._direct = False
        if self._assembly is not None:
            self._assembly.cancel()
        if self._closing_timer is not None:
            self._closing_timer.cancel()
        if self._expiry is not None:
            self._expiry.cancel()
        self.keepalive.discard(self)
        sockets = self.runtime.sockets
        if self.runtime.metrics is not None and self.socket in sockets:  # it was accepted
            self.runtime.metrics.websocket_closed()
        sockets.discard(self.socket)
        if self._task is None:  # else the messages still waiting go first
            self._start_close_event()

    def _start_close_event(self) -> None:
        self._task = asyncio.ensure_future(self._close_event())

    async def _close_event(self) -> None:
        try:
            if self._event_ran:
                code, reason = self._close or (None, "")
                ctx = self._context(WS_CLOSE, {"code": code, "reason": reason})
                try:
                    await self.runtime.invoker.call(self._function(), ctx)
                except Exception as exc:
                    report_failure(exc, WEBSOCKET, ctx.request_id, self.socket.id, ctx)
        finally:
            self.runtime.sockets.release(self.socket)
            self.activity.end_connection(self)

    # -- writing: the Transport of Socket ---------------------------------------------------

    def write_frame(self, frame: bytes) -> Awaitable[Any] | None:
        """A data message for the client (every delivery, and error frames)."""
        if self._close_sent or self._ended:
            return None
        if self._early is not None:
            self._early.append(frame)
            written: Awaitable[Any] | None = WRITTEN
        else:
            written = self._write(frame)
            if written is None:
                return None
        self.socket.messages_out += 1
        metrics = self.runtime.metrics
        if metrics is not None:
            metrics.message_out()
        return written

    def _write(self, data: bytes) -> Awaitable[Any] | None:
        stream = self._stream
        if stream is None or stream.closed():
            return None
        if not stream.writing():
            # Nothing queued before it, so the frame may go straight to the kernel: one
            # system call, where IOStream.write costs a buffer copy and a Future each time
            # (most of a broadcast's time). laf-py serves plain TCP, so this is the socket.
            try:
                sent = stream.socket.send(data)
            except OSError:  # would block, or the connection broke: IOStream handles both
                sent = 0
            if sent == len(data):
                return WRITTEN
            data = data[sent:]
        try:
            flushed = stream.write(data)
        except StreamBufferFullError:  # over the hard cap, --max-send-buffer x 16
            self._close_slow_consumer(stream)
            return None
        except StreamClosedError:
            return None
        # A backlog over --max-send-buffer: fine while the client keeps taking bytes (a big
        # message on its way), judged from now on. (Tornado's buffer, read directly: cheap;
        # None when the write found the connection broken.)
        if self._backlog is None:
            queued = stream._write_buffer
            if queued is not None and len(queued) > self.runtime.settings.max_send_buffer:
                self._watch_backlog(stream._total_write_done_index, time.monotonic())
        return flushed

    def _watch_backlog(self, written: int, since: float) -> None:
        """Look at the backlog again in a fifth of SEND_STALL: ``written`` is the stream's
        count of bytes sent when it was last seen to move, at ``since``."""
        loop = asyncio.get_running_loop()
        self._backlog = loop.call_later(SEND_STALL / 5, self._check_backlog, written, since)

    def _check_backlog(self, written: int, since: float) -> None:
        """The slow-consumer rule: a backlog (once over --max-send-buffer, or one a ping is
        waiting behind) of which the client has taken no byte for SEND_STALL seconds means a
        client that stopped reading. One that is reading, however slowly and however big the
        message, keeps its connection (the hard cap bounds the memory); the watch ends when
        everything is sent."""
        self._backlog = None
        stream = self._stream
        if self._ended or stream is None or stream.closed():
            return
        if not stream.writing():
            return  # all sent: a new backlog is judged afresh
        now = time.monotonic()
        if stream._total_write_done_index != written:  # it moved
            self._watch_backlog(stream._total_write_done_index, now)
        elif now - since >= SEND_STALL:
            self._close_slow_consumer(stream)
        else:
            self._watch_backlog(written, since)

    def _close_slow_consumer(self, stream: IOStream) -> None:
        """The client stopped reading (no byte of its backlog taken for SEND_STALL), or its
        unsent data passed the hard cap. Close it, so one client can never make the server's
        memory grow without bound."""
        log.warning("dropping socket %s: slow consumer", self.socket.id)
        if self.runtime.metrics is not None:
            self.runtime.metrics.slow_consumer_closed()
        if self._close is None:
            self._close = (SLOW_CONSUMER, "slow consumer")
        # A close frame would wait behind everything the client is not reading: drop the
        # connection now, so it leaves cloud.sockets (and its user's presence) at once.
        stream.close()

    def _send_error_frame(self, message: str, request_id: str) -> None:
        if self.runtime.settings.websocket_error_frames:
            self.write_frame(frames.frame(frames.TEXT, error_body(message, request_id)))

    # -- helpers ---------------------------------------------------------------------------

    def _context(self, method: str, params: dict[str, Any]) -> FunctionContext:
        return FunctionContext(
            method,
            WEBSOCKET,
            params=params,
            headers=self._headers,
            query=self._query,
            user=self._user,
            socket=self.socket,
        )

    def _function(self) -> Function:
        function = self.runtime.websocket
        if function is None or function.main is None:
            raise RuntimeError("functions/__websocket__.py is missing or failed to load")
        return function
