"""The fast path of HTTP functions (server/fast_http.py): plain ``/fn/`` calls answered without
a RequestHandler must be answered exactly as the handler answers them, and everything that is
not plain must reach the handler."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from laf_py.server.fast_http import FastFunctions

from .conftest import wait_until, write_function

FUNCTIONS = {
    "text": "async def main(ctx):\n    return 'Hello, world!'\n",
    "json": "async def main(ctx):\n    return {'a': 1, 'query': ctx.query, 'method': ctx.method}\n",
    "plain_def": "def main(ctx):\n    return b'bytes'\n",
    "headers": (
        "from laf_py import Response\n"
        "async def main(ctx):\n"
        "    return Response('made', status=201, content_type='text/x-made',\n"
        "                    headers={'x-custom': 'one', 'cache-control': 'no-store',\n"
        "                             'server': 'mine', 'X-Request-Id': 'theirs'})\n"
    ),
    "touched": (
        "async def main(ctx):\n"
        "    ctx.response.status = 202\n"
        "    ctx.response.headers['X-Touched'] = 'yes'\n"
        "    return [1, 2]\n"
    ),
    "empty": "async def main(ctx):\n    return ''\n",
    "none": "async def main(ctx):\n    return None\n",
    "fails": "async def main(ctx):\n    raise ValueError('no')\n",
    "refused": (
        "from laf_py import HTTPError\nasync def main(ctx):\n    raise HTTPError(409, 'taken')\n"
    ),
    "bad_header": (
        "from laf_py import Response\n"
        "async def main(ctx):\n"
        "    return Response('x', headers={'X-Bad': 'a\\x01b'})\n"
    ),
    "stream": "async def main(ctx):\n    for i in range(3):\n        yield f'{i}\\n'\n",
    "waits": (
        "import asyncio\nasync def main(ctx):\n    await asyncio.sleep(0.01)\n    return 'waited'\n"
    ),
    "user": "async def main(ctx):\n    return {'user': ctx.user}\n",
}


async def exchange(port: int, request: bytes) -> bytes:
    """Send raw bytes, read until the server closes (every request here ends with a
    ``Connection: close`` one)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


def normalized(response: bytes) -> bytes:
    """A response without what differs from one answer to the next: Date and request ids."""
    response = re.sub(rb"(?mi)^Date: [^\r]*", b"Date: -", response)
    return re.sub(rb"[0-9a-f]{24}", b"<id>", response)


def fast_functions(server: Any) -> FastFunctions:
    functions = server.server._http.functions
    assert isinstance(functions, FastFunctions)
    return functions


@pytest.mark.parametrize(
    "target",
    [
        "GET /fn/text",
        "HEAD /fn/text",
        "GET /fn/json?x=1&y=%20",
        "DELETE /fn/json",
        "POST /fn/json",
        "GET /fn/json/",
        "GET /fn/plain_def",
        "GET /fn/headers",
        "GET /fn/touched",
        "GET /fn/empty",
        "GET /fn/none",
        "GET /fn/fails",
        "GET /fn/refused",
        "GET /fn/bad_header",
        "GET /fn/stream",
        "HEAD /fn/stream",
        "GET /fn/waits",
    ],
)
@pytest.mark.both_servers
async def test_fast_answer_is_the_handlers_answer(
    serve, functions_dir: Path, target: str, caplog: pytest.LogCaptureFixture, server_kind: str
) -> None:
    """The same request, plain (fast path) and made not plain by a same-origin ``Origin``
    (which FunctionHandler treats as no Origin at all): byte for byte the same response but
    for Date and the request id, and the same access line. Under uvicorn too: laf_py.asgi
    answers plain calls itself (asgi/functions.py), the others through the bridge."""
    for name, source in FUNCTIONS.items():
        write_function(functions_dir, name, source)
    async with serve(functions_dir) as server:
        port = server.server.port
        host = f"127.0.0.1:{port}"
        plain = f"{target} HTTP/1.1\r\nHost: {host}\r\nX-A: b\r\n\r\n"
        handled = f"{target} HTTP/1.1\r\nHost: {host}\r\nOrigin: http://{host}\r\nX-A: b\r\n\r\n"
        close = f"GET /fn/text HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        if server_kind == "tornado":
            functions = fast_functions(server)
            assert functions.plain(plain.encode()) is not None
            assert functions.plain(handled.encode()) is None
        else:
            calls = server.server.app._plain
            scope = {"method": target.split()[0], "query_string": b"", "http_version": "1.1"}
            path = target.split()[1].partition("?")[0]
            asked = [(b"host", host.encode()), (b"x-a", b"b")]
            assert calls.decide({**scope, "headers": asked}, path) is not None
            origin = (b"origin", f"http://{host}".encode())
            assert calls.decide({**scope, "headers": [*asked, origin]}, path) is None
        # Twice each way on one connection: keep-alive after either path.
        caplog.clear()
        with caplog.at_level("INFO", logger="tornado.access"):
            fast = await exchange(port, (plain * 2 + close).encode())
            slow = await exchange(port, (handled * 2 + close).encode())
        lines = [
            re.sub(r"[0-9.]+ms$", "ms", r.getMessage())
            for r in caplog.records
            if r.name == "tornado.access"
        ]
    assert normalized(fast) == normalized(slow)
    assert fast.count(b"HTTP/1.1 ") == 3, fast
    assert lines[:3] == lines[3:], lines


async def test_requests_that_are_not_plain(serve, functions_dir: Path) -> None:
    """What the fast path leaves to Tornado and the handler: anything with a body or its
    framing, browser rules, closing, other versions, other routes, every refusal."""
    for name, source in FUNCTIONS.items():
        write_function(functions_dir, name, source)
    write_function(functions_dir, "only_post", "methods = ['POST']\ndef main(ctx):\n    return 1\n")
    write_function(functions_dir, "broken", "def main(ctx) return 1\n")
    async with serve(functions_dir) as server:
        functions = fast_functions(server)
        token = server.server.runtime.tokens.issue({"uid": "u1"})
        host = f"127.0.0.1:{server.server.port}"

        def plain(line: str = "GET /fn/text HTTP/1.1", *headers: str) -> bool:
            head = "\r\n".join([line, *headers]) + "\r\n\r\n"
            return functions.plain(head.encode()) is not None

        assert plain("GET /fn/text HTTP/1.1", f"Host: {host}")
        assert plain("GET /fn/text HTTP/1.1", f"Host: {host}", "Connection: keep-alive")
        assert plain("GET /fn/user HTTP/1.1", f"Host: {host}", f"Authorization: Bearer {token}")
        assert plain("GET /fn/nothing-here HTTP/1.1", f"Host: {host}") is False  # 404
        not_plain = [
            ("GET /fn/text HTTP/1.1", "Host: evil.example"),  # --allowed-hosts
            ("GET /fn/text HTTP/1.1",),  # no Host: 400
            ("GET /fn/text HTTP/1.1", "Host: a,b"),
            ("GET /fn/text HTTP/1.0", f"Host: {host}"),
            ("GET /fn/text HTTP/1.1", f"Host: {host}", "Connection: close"),
            ("GET /fn/text HTTP/1.1", f"Host: {host}", "Content-Length: 0"),
            ("POST /fn/text HTTP/1.1", f"Host: {host}", "Transfer-Encoding: chunked"),
            ("GET /fn/text HTTP/1.1", f"Host: {host}", "Expect: 100-continue"),
            ("GET /fn/text HTTP/1.1", f"Host: {host}", "Origin: https://elsewhere.example"),
            ("OPTIONS /fn/text HTTP/1.1", f"Host: {host}"),
            ("TRACE /fn/text HTTP/1.1", f"Host: {host}"),
            ("GET /fn/ HTTP/1.1", f"Host: {host}"),  # the listing
            ("GET /fn/%2F HTTP/1.1", f"Host: {host}"),
            ("GET /fn/only_post HTTP/1.1", f"Host: {host}"),  # 405
            ("GET /fn/broken HTTP/1.1", f"Host: {host}"),  # 500: failed to load
            ("GET /fn/_private HTTP/1.1", f"Host: {host}"),
            ("GET /fn/user HTTP/1.1", f"Host: {host}", "Authorization: Bearer nope"),  # 401
            ("GET http://127.0.0.1/fn/text HTTP/1.1", f"Host: {host}"),  # absolute form
            ("GET /_/healthz HTTP/1.1", f"Host: {host}"),
            ("GET /fn/text HTTP/1.1", f"Host: {host}", " folded"),  # malformed: Tornado's 400
            ("GET /fn/text  HTTP/1.1", f"Host: {host}"),
        ]
        for case in not_plain:
            assert not plain(*case), case
        server.server.activity.draining = True
        try:
            assert not plain("GET /fn/text HTTP/1.1", f"Host: {host}")
        finally:
            server.server.activity.draining = False


async def test_pipelined_fast_and_handled_requests_keep_their_order(
    serve, functions_dir: Path
) -> None:
    """One write, five requests on both paths: five answers, in order."""
    for name, source in FUNCTIONS.items():
        write_function(functions_dir, name, source)
    async with serve(functions_dir) as server:
        port = server.server.port
        host = f"Host: 127.0.0.1:{port}"
        requests = [
            f"GET /fn/text HTTP/1.1\r\n{host}\r\n\r\n",
            f"GET /fn/missing HTTP/1.1\r\n{host}\r\n\r\n",
            f"POST /fn/json HTTP/1.1\r\n{host}\r\nContent-Length: 2\r\n\r\n{{}}",
            f"GET /fn/waits HTTP/1.1\r\n{host}\r\n\r\n",
            f"GET /fn/stream HTTP/1.1\r\n{host}\r\n\r\n",
            f"GET /fn/json?n=5 HTTP/1.1\r\n{host}\r\nConnection: close\r\n\r\n",
        ]
        answer = await exchange(port, "".join(requests).encode())
    statuses = re.findall(rb"HTTP/1.1 (\d+)", answer)
    assert statuses == [b"200", b"404", b"200", b"200", b"200", b"200"], answer
    assert answer.index(b"Hello, world!") < answer.index(b"not found")
    assert answer.index(b"waited") < answer.index(b"0\n") < answer.index(b'"n":"5"')


async def test_each_call_has_its_own_context(serve, http, functions_dir: Path) -> None:
    """A context variable a function sets is not seen by the next call on the connection,
    as with Tornado's task per request."""
    write_function(
        functions_dir,
        "var",
        "import contextvars\n"
        "seen = contextvars.ContextVar('seen', default=None)\n"
        "async def main(ctx):\n"
        "    before = seen.get()\n"
        "    seen.set(ctx.request_id)\n"
        "    return {'before': before}\n",
    )
    async with serve(functions_dir) as server:
        answers = [(await http.get(server.fn_url("var"))).json() for _ in range(3)]
    assert answers == [{"before": None}] * 3


async def test_client_leaving_a_waiting_call_frees_its_connection(
    serve, functions_dir: Path
) -> None:
    """While a plain call waits, a client that leaves stops counting against
    --max-http-connections at once, as it does with a handler; the call still finishes."""
    write_function(
        functions_dir,
        "hold",
        "import asyncio\n"
        "from laf_py import cloud\n"
        "async def main(ctx):\n"
        "    cloud.shared['started'] = True\n"
        "    while not cloud.shared.get('release'):\n"
        "        await asyncio.sleep(0.01)\n"
        "    cloud.shared['done'] = True\n"
        "    return 'late'\n",
    )
    from laf_py import cloud

    async with serve(functions_dir) as server:
        http_server = server.server._http
        port = server.server.port
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET /fn/hold HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        await writer.drain()
        await wait_until(lambda: cloud.shared.get("started"))
        assert http_server.open_connections == 1
        writer.close()
        await wait_until(lambda: http_server.open_connections == 0)
        assert not cloud.shared.get("done")
        cloud.shared["release"] = True
        await wait_until(lambda: cloud.shared.get("done"))
        await wait_until(lambda: server.server.activity.requests == 0)


async def test_shutdown_does_not_wait_for_a_waiting_plain_call(serve, functions_dir: Path) -> None:
    """A plain call still waiting when the grace runs out does not hold the server's stop
    (its connection is closed and forgotten, as a handler's would be)."""
    write_function(
        functions_dir,
        "forever",
        "import asyncio\n"
        "from laf_py import cloud\n"
        "async def main(ctx):\n"
        "    cloud.shared['started'] = True\n"
        "    await asyncio.Event().wait()\n",
    )
    from laf_py import cloud

    server_cm = serve(functions_dir, shutdown_grace=0.1, timeout=60)
    server = await server_cm.__aenter__()
    port = server.server.port
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET /fn/forever HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        await writer.drain()
        await wait_until(lambda: cloud.shared.get("started"))
        await asyncio.wait_for(server_cm.__aexit__(None, None, None), 10)
    finally:
        writer.close()
