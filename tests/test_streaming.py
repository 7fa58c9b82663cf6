"""Streamed responses and Server-Sent Events through a real server: the client sees each item
as it is produced, a client that leaves closes the generator at once, errors before the first
item are ordinary error responses and after it a broken response."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from httpx_sse import aconnect_sse

from laf_py import cloud
from laf_py.core.stream import Event, encode_event

from .conftest import wait_until, write_function

pytestmark = pytest.mark.both_servers

GATED = """
import asyncio
from laf_py import cloud

async def main(ctx):
    gate = asyncio.Event()
    cloud.shared.set("gate", gate)
    cloud.shared.set("closed", False)

    async def items():
        try:
            yield "first\\n"
            await gate.wait()
            yield b"second\\n"
        finally:
            cloud.shared.set("closed", True)

    return items()
"""

PLAIN = """
import threading
from laf_py import cloud

def main(ctx):
    gate = threading.Event()
    cloud.shared.set("gate", gate)

    def items():
        yield "one "
        gate.wait(10)  # a thread waits here, never the event loop
        cloud.shared.set("waited", True)
        yield "two"

    return items()
"""

EVENTS = """
from laf_py import Event, EventStream

async def main(ctx):
    async def events():
        yield "plain text"
        yield {"n": 1, "ok": True}
        yield Event("line one\\nline two", event="update", id=7, retry=1500)
        yield Event(ctx.headers.get("Last-Event-ID", "none"), event="resumed-from")

    return EventStream(events())
"""

PINGING = """
import asyncio
from laf_py import EventStream, cloud

async def main(ctx):
    gate = asyncio.Event()
    cloud.shared.set("gate", gate)

    async def events():
        await gate.wait()
        yield "after the wait"

    return EventStream(events(), ping=0.05)
"""

FAILING = """
from laf_py import HTTPError, Response

async def main(ctx):
    where = ctx.query.get("fail")

    async def items():
        if where == "before":
            raise RuntimeError("broken before the first item")
        if where == "http":
            raise HTTPError(409, "not now")
        yield "part one, "
        if where == "after":
            raise RuntimeError("broken after the first item")
        yield "part two"

    return Response(items(), status=201, headers={"X-Stream": "yes"}, content_type="text/csv")
"""

SLOW_START = """
import asyncio
timeout = 0.3

async def main(ctx):
    async def items():
        await asyncio.sleep(30)
        yield "never"
    return items()
"""

PLAIN_LEFT = """
import threading
from laf_py import cloud

def main(ctx):
    gate = threading.Event()
    cloud.shared.set("gate", gate)
    cloud.shared.set("closed", False)

    def items():
        try:
            yield "one "
            gate.wait(10)  # the client leaves while a thread is in here
            yield "two"
        finally:
            cloud.shared.set("closed", True)

    generator = items()
    cloud.shared.set("generator", generator)  # kept: only closing it runs its finally
    return generator
"""

MIXED = """
async def main(ctx):
    async def items():
        if ctx.query.get("empty"):
            return
        yield b"bytes, "
        yield "text, "
        yield b""  # nothing to send: not the end of the body
        yield bytearray(b"bytearray, ")
        yield ""
        yield memoryview(b"memoryview")
    return items()
"""

BIG = """
from laf_py import cloud

async def main(ctx):
    cloud.shared.set("closed", False)
    count = int(ctx.query.get("count", "0"))  # 0: for ever

    async def items():
        try:
            n = 0
            while not count or n < count:
                yield bytes([65 + n % 26]) * 262144  # 256 KiB of one letter each
                n += 1
        finally:
            cloud.shared.set("closed", True)

    return items()
"""

PLAIN_EVENTS = """
from laf_py import EventStream

def main(ctx):
    def events():
        yield "one"
        yield {"n": 2}
    return EventStream(events())
"""


@pytest.fixture
def functions(functions_dir: Path) -> Path:
    for name, source in [
        ("gated", GATED),
        ("plain", PLAIN),
        ("events", EVENTS),
        ("pinging", PINGING),
        ("failing", FAILING),
        ("slow_start", SLOW_START),
        ("plain_left", PLAIN_LEFT),
        ("mixed", MIXED),
        ("plain_events", PLAIN_EVENTS),
        ("big", BIG),
        ("hello", "def main(ctx):\n    return 'hello'\n"),
    ]:
        write_function(functions_dir, name, source)
    return functions_dir


async def test_each_item_reaches_the_client_as_it_is_produced(serve, http, functions) -> None:
    async with serve(functions) as server:
        async with http.stream("GET", server.fn_url("gated")) as response:
            assert response.status_code == 200
            assert response.headers["content-type"] == "text/plain; charset=utf-8"
            assert response.headers["transfer-encoding"] == "chunked"
            chunks = response.aiter_raw()
            assert await anext(chunks) == b"first\n"  # while the generator still waits
            assert cloud.shared.get("closed") is False
            cloud.shared.get("gate").set()
            rest = b"".join([chunk async for chunk in chunks])
        assert rest == b"second\n"
        await wait_until(lambda: cloud.shared.get("closed") is True)


async def test_a_client_that_leaves_closes_the_generator_at_once(serve, http, functions) -> None:
    """The generator is waiting for its next item (for ever): the client's leaving is what
    ends it, and its finally runs."""
    async with serve(functions) as server:
        async with http.stream("GET", server.fn_url("gated")) as response:
            assert await anext(response.aiter_raw()) == b"first\n"
        await wait_until(lambda: cloud.shared.get("closed") is True, timeout=5)
        assert (await http.get(server.fn_url("hello"))).text == "hello"


async def test_a_plain_generator_runs_in_a_thread(serve, http, functions) -> None:
    async with serve(functions) as server, http.stream("GET", server.fn_url("plain")) as response:
        chunks = response.aiter_raw()
        assert await anext(chunks) == b"one "
        # its next() blocks a thread: the server still answers meanwhile
        assert (await http.get(server.fn_url("hello"))).text == "hello"
        assert cloud.shared.get("waited") is None  # answered while the generator waited
        cloud.shared.get("gate").set()
        assert b"".join([chunk async for chunk in chunks]) == b"two"


async def test_a_plain_generator_left_in_a_thread_is_closed_once_the_thread_is_out(
    serve, http, functions
) -> None:
    """The client leaves while next() blocks a thread: the thread cannot be stopped, so the
    generator is closed (its finally runs) as soon as that next() returns."""
    async with serve(functions) as server:
        async with http.stream("GET", server.fn_url("plain_left")) as response:
            assert await anext(response.aiter_raw()) == b"one "
        assert (await http.get(server.fn_url("hello"))).text == "hello"  # the loop is free
        cloud.shared.get("gate").set()
        await wait_until(lambda: cloud.shared.get("closed") is True, timeout=5)


async def test_items_of_every_kind_and_none(serve, http, functions) -> None:
    async with serve(functions) as server:
        mixed = await http.get(server.fn_url("mixed"))
        empty = await http.get(server.fn_url("mixed"), params={"empty": "1"})
    assert mixed.status_code == 200 and mixed.text == "bytes, text, bytearray, memoryview"
    assert empty.status_code == 200 and empty.content == b""
    assert empty.headers["content-type"] == "text/plain; charset=utf-8"


async def test_items_larger_than_the_socket_takes_arrive_whole_and_in_order(
    serve, http, functions
) -> None:
    """12 MiB: the socket takes part of an item, the rest waits in the connection's buffer,
    and the next item goes after it."""
    async with serve(functions) as server:
        response = await http.get(server.fn_url("big"), params={"count": "48"})
    expected = b"".join(bytes([65 + n % 26]) * 262144 for n in range(48))
    assert response.status_code == 200 and response.content == expected


async def test_a_client_that_leaves_an_endless_stream_closes_it(serve, http, functions) -> None:
    """Items ready at once, for ever, faster than the client reads: its leaving ends them."""
    async with serve(functions) as server:
        async with http.stream("GET", server.fn_url("big")) as response:
            received = 0
            async for chunk in response.aiter_raw():
                received += len(chunk)
                if received > 1 << 20:
                    break
        await wait_until(lambda: cloud.shared.get("closed") is True, timeout=5)
        assert (await http.get(server.fn_url("hello"))).text == "hello"


@pytest.mark.tornado_only("uvicorn answers HTTP/1.0 clients with chunked encoding")
async def test_an_http_1_0_client_gets_the_items_unchunked(serve, functions) -> None:
    """No chunked encoding in HTTP/1.0: the body is the items, and the connection's end
    ends it."""
    async with serve(functions) as server:
        address = urlsplit(server.url)
        reader, writer = await asyncio.open_connection(address.hostname, address.port)
        writer.write(b"GET /fn/mixed HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 10)  # until the server closes
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0].endswith(b" 200 OK") and b"chunked" not in head.lower()
    assert body == b"bytes, text, bytearray, memoryview"


async def test_an_event_stream_of_a_plain_generator(serve, http, functions) -> None:
    async with serve(functions) as server:
        url = server.fn_url("plain_events")
        async with aconnect_sse(http, "GET", url) as source:
            events = [event.data async for event in source.aiter_sse()]
    assert events == ["one", '{"n":2}']


async def test_server_sent_events(serve, http, functions) -> None:
    async with serve(functions) as server:
        url = server.fn_url("events")
        async with aconnect_sse(http, "GET", url, headers={"Last-Event-ID": "6"}) as source:
            response = source.response
            assert response.headers["content-type"] == "text/event-stream"
            assert response.headers["cache-control"] == "no-cache"
            assert response.headers["x-accel-buffering"] == "no"
            events = [event async for event in source.aiter_sse()]
    assert [(e.event, e.data) for e in events] == [
        ("message", "plain text"),
        ("message", '{"n":1,"ok":true}'),
        ("update", "line one\nline two"),
        ("resumed-from", "6"),
    ]
    assert events[2].id == "7" and events[2].retry == 1500


async def test_an_idle_event_stream_is_kept_alive_with_comments(serve, http, functions) -> None:
    received = b""
    async with serve(functions) as server, http.stream("GET", server.fn_url("pinging")) as stream:
        chunks = stream.aiter_raw()
        while received.count(b": ping\n\n") < 2:
            received += await anext(chunks)
        cloud.shared.get("gate").set()
        async for chunk in chunks:
            received += chunk
    assert received.endswith(b"data: after the wait\n\n")


async def test_the_response_s_status_headers_and_type_apply(serve, http, functions) -> None:
    async with serve(functions) as server:
        response = await http.get(server.fn_url("failing"))
        head = await http.head(server.fn_url("failing"))
    assert response.status_code == 201 and response.text == "part one, part two"
    assert response.headers["x-stream"] == "yes"
    assert response.headers["content-type"] == "text/csv"
    assert head.status_code == 201 and head.content == b""


async def test_errors_before_the_first_item_are_error_responses(
    serve, http, functions, caplog: pytest.LogCaptureFixture
) -> None:
    async with serve(functions) as server:
        broken = await http.get(server.fn_url("failing"), params={"fail": "before"})
        refused = await http.get(server.fn_url("failing"), params={"fail": "http"})
        slow = await http.get(server.fn_url("slow_start"))
    assert broken.status_code == 500 and broken.json()["request_id"]
    assert refused.status_code == 409 and refused.json()["error"] == "not now"
    assert slow.status_code == 504
    assert "broken before the first item" in caplog.text


async def test_an_error_after_the_first_item_breaks_the_response(
    serve, http, functions, caplog: pytest.LogCaptureFixture
) -> None:
    """The status is out: the client must not take "part one, " for the whole body."""
    caplog.set_level(logging.ERROR)
    async with serve(functions) as server:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.get(server.fn_url("failing"), params={"fail": "after"})
        assert (await http.get(server.fn_url("hello"))).text == "hello"
    failure = next(r for r in caplog.records if "failing" in r.getMessage())
    assert "request" in failure.getMessage()
    assert failure.exc_info and "broken after the first item" in str(failure.exc_info[1])


def test_event_encoding_rules() -> None:
    assert encode_event("a\r\nb\rc\nd") == b"data: a\ndata: b\ndata: c\ndata: d\n\n"
    assert encode_event(b"bytes") == b"data: bytes\n\n"
    assert encode_event(Event("", event="ping")) == b"event: ping\ndata: \n\n"
    for bad in (Event("x", event="a\nb"), Event("x", id="1\r2"), Event("x", id="a\0b")):
        with pytest.raises(ValueError):
            encode_event(bad)
    with pytest.raises(ValueError):
        encode_event(Event("x", retry=-1))


async def test_two_streams_and_a_call_at_once(serve, http, functions) -> None:
    """Streams share the loop with everything else: two open at once, both served."""
    async with (
        serve(functions) as server,
        http.stream("GET", server.fn_url("pinging")) as one,
        http.stream("GET", server.fn_url("events")) as two,
    ):
        assert b"data: plain text" in await anext(two.aiter_raw())
        assert b": ping" in await anext(one.aiter_raw())
        assert (await http.get(server.fn_url("hello"))).text == "hello"
