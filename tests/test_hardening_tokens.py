"""Hardening round 2: tokens in logs, user ids, DNS rebinding (``--allowed-hosts``), canonical
token spellings, and tokens that expire on open sockets.

Real servers on ephemeral ports; real clients (httpx, websockets) and raw TCP clients where a
library would not send what an attacker does (a chosen ``Host``, a malformed request line).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import httpx
import jwt
import pytest
import tornado
import websockets
from jwt.utils import base64url_decode
from websockets.exceptions import InvalidStatus

from laf_py import cloud
from laf_py.cloud.tokens import hide_tokens_in_uri
from laf_py.config import Settings
from laf_py.server import connection
from laf_py.testing import TestClient

from .conftest import run_to_exit, wait_until, write_function

pytestmark = pytest.mark.both_servers

SECRET = "h" * 40
WS_KEY = "dGhlIHNhbXBsZSBub25jZQ=="

WHOAMI = """
async def main(ctx):
    return {"user": ctx.user}
"""

BOOM = """
async def main(ctx):
    raise RuntimeError("boom")
"""

# Records every event; echoes messages; ?reject=1 refuses in the connection event; ?hold=1
# makes the connection event wait until the test sets cloud.shared["go"].
WEBSOCKET = """
import asyncio
from laf_py import cloud, HTTPError

async def main(ctx):
    cloud.shared.setdefault("events", []).append(
        {"method": ctx.method, "params": dict(ctx.params), "user_id": ctx.socket.user_id}
    )
    if ctx.method == "WebSocket:connection":
        if ctx.query.get("reject"):
            raise HTTPError(401, "not you")
        if ctx.query.get("hold"):
            cloud.shared["holding"] = True
            for _ in range(1000):  # until the test says go (at most 10 s)
                if cloud.shared.get("go"):
                    break
                await asyncio.sleep(0.01)
    elif ctx.method == "WebSocket:message":
        ctx.socket.send("echo:" + ctx.params["data"])
"""


def events(method: str | None = None) -> list[dict[str, Any]]:
    found = list(cloud.shared.get("events", []))
    return [e for e in found if method is None or e["method"] == method]


def token_for(claims: dict[str, Any]) -> str:
    """A token signed with the server's secret, whatever its claims (get_token checks them)."""
    return jwt.encode(claims, SECRET, algorithm="HS256")


async def raw_request(
    port: int,
    target: str,
    host: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    websocket: bool = False,
) -> tuple[int, bytes, bytes]:
    """Send one request with exactly this ``Host``; (status, head, body)."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    if websocket:
        lines += [
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {WS_KEY}",
            "Sec-WebSocket-Version: 13",
        ]
    else:
        lines.append("Connection: close")
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await asyncio.wait_for(reader.readexactly(length), 5) if length else b""
        return status, head, body
    finally:
        writer.close()


async def send_raw(port: int, data: bytes) -> bytes:
    """Write ``data`` as it is and read until the server closes (or 5 s)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        return await asyncio.wait_for(reader.read(65536), 5)
    finally:
        writer.close()


# -- item 5: no valid token in any log line -----------------------------------------------------


async def test_no_valid_token_reaches_any_log_line(
    serve,
    functions_dir: Path,
    http: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
    server_kind: str,
) -> None:
    """Every way a client may put a valid token in a request — query parameter under a
    percent-encoded name, after ``;``, repeated, in the Authorization header, in the path,
    percent-encoded (once, twice) under another name, on error paths (404, 405, 500, a broken
    query, a malformed request line, a refused Host) and in handshakes that are refused — leaves
    no trace of the token in any log line, decoded or not."""
    for name in ("", "tornado.access", "tornado.general", "tornado.application", "laf_py"):
        caplog.set_level(logging.DEBUG, logger=name or None)
    write_function(functions_dir, "whoami", WHOAMI)
    write_function(functions_dir, "boom", BOOM)
    write_function(functions_dir, "__websocket__", WEBSOCKET)
    async with serve(functions_dir, secret=SECRET) as server:
        port = server.server.port
        base, ws = server.url, server.ws_url
        tokens = [cloud.get_token({"uid": f"user{i}"}) for i in range(24)]
        t = iter(tokens)
        once = "".join(f"%{b:02X}" for b in next(t).encode())
        twice = quote(once)

        # HTTP, answered by the function
        for url in (
            f"{base}/fn/whoami?token={next(t)}",
            f"{base}/fn/whoami?%74oken={next(t)}",
            f"{base}/fn/whoami?a=1;token={next(t)}",
            f"{base}/fn/whoami?token=x&token={next(t)}&token=y",
            f"{base}/fn/whoami?q={once}",
            f"{base}/fn/whoami?q={twice}",
        ):
            assert (await http.get(url)).status_code == 200
        bearer = next(t)
        response = await http.get(
            f"{base}/fn/whoami?access_token={bearer}", headers={"Authorization": f"Bearer {bearer}"}
        )
        assert response.json()["user"]["uid"] == bearer_uid(bearer)
        # HTTP error paths
        assert (await http.get(f"{base}/fn/{next(t)}")).status_code == 404
        assert (await http.get(f"{base}/elsewhere/{next(t)}")).status_code == 404
        assert (await http.get(f"{base}/fn/boom?token={next(t)}")).status_code == 500
        assert (await http.request("TRACE", f"{base}/fn/whoami?t={next(t)}")).status_code == 405
        status, _, _ = await raw_request(port, f"/fn/whoami?token={next(t)}", "evil.example")
        assert status == 400
        status, _, _ = await raw_request(port, "/fn/whoami", "localhost", method=next(t))
        # A method is any token of characters, dots included (uvicorn's parser knows a
        # fixed list of methods, and refuses the others itself).
        assert status == (405 if server_kind == "tornado" else 400)
        answer = await send_raw(port, f"GET /fn/whoami {next(t)}\r\nHost: x\r\n\r\n".encode())
        assert answer.startswith(b"HTTP/1.1 400")
        broken = (
            f"GET /fn/whoami HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {next(t)}\x01\r\n\r\n"
        )
        assert (await send_raw(port, broken.encode())).startswith(b"HTTP/1.1 400")
        # WebSocket: accepted, accepted under an encoded name, refused by the function,
        # refused for a broken query
        async with websockets.connect(f"{ws}?token={next(t)}") as client:
            await client.send("hi")
            assert await client.recv() == "echo:hi"
        async with websockets.connect(f"{ws}?%74oken={next(t)}") as client:
            await client.send("hi")
            assert await client.recv() == "echo:hi"
        async with websockets.connect(f"{ws}?reject=1&token={next(t)}") as client:
            await asyncio.wait_for(client.wait_closed(), 5)
            assert client.close_code == 4401
        with pytest.raises(InvalidStatus):
            await websockets.connect(f"{ws}?token={next(t)}%FF")
        encoded = "".join(f"%{b:02X}" for b in next(t).encode())
        with pytest.raises(InvalidStatus):  # Tornado's own error line quotes the URL
            await websockets.connect(f"{ws}?q={encoded}&token=%FF")
        await wait_until(lambda: caplog.text.count("GET /__websocket__") >= 5)
    # Everything the server side logged (the client libraries' own debug lines show what
    # they sent, token included: they are the client, not the server).
    clients = ("websockets", "httpx", "httpcore")
    text = "\n".join(
        caplog.handler.format(record)
        for record in caplog.records
        if not record.name.startswith(clients)
    )
    assert "token=***" in text and "/fn/***" in text  # the requests were logged, masked
    # Before 6.5 Tornado did not check header values; uvicorn refuses them without a word.
    if tornado.version_info >= (6, 5) and server_kind == "tornado":
        assert "Invalid header value 'Bearer ***" in text  # Tornado's own line, masked
    for token in tokens:
        for shown in (text, unquote(text), unquote(unquote(text))):
            assert token not in shown


@pytest.mark.parametrize(
    ("uri", "logged"),
    [
        ("/fn/hello", "/fn/hello"),
        ("/fn/hello?name=ada&page=2", "/fn/hello?name=ada&page=2"),
        ("/__websocket__?token=opaque", "/__websocket__?token=***"),
        ("/__websocket__?%74oken=opaque", "/__websocket__?%74oken=***"),
        ("/__websocket__?%2574oken=opaque", "/__websocket__?%2574oken=***"),
        ("/__websocket__?TOKEN=opaque&a=1", "/__websocket__?TOKEN=***&a=1"),
        ("/__websocket__?a=1;token=opaque", "/__websocket__?a=1;token=***"),
        ("/__websocket__?a=1;access_token=opaque", "/__websocket__?a=1;access_token=***"),
        ("/__websocket__?token", "/__websocket__?token"),
    ],
)
def test_token_parameters_are_masked_under_any_spelling(uri: str, logged: str) -> None:
    """A parameter named token (percent-encoded once or twice, any case, after ``&`` or ``;``)
    is masked whatever its value looks like; the rest of the target is kept as it came."""
    assert hide_tokens_in_uri(uri) == logged


def bearer_uid(token: str) -> str:
    return str(jwt.decode(token, options={"verify_signature": False})["uid"])


# -- item 6: user ids are non-empty strings -----------------------------------------------------

NOT_USER_IDS = [1, 0, "", [1, 2], {"id": 1}, True, 1.5, None]


@pytest.mark.parametrize("claim", ["uid", "sub"])
@pytest.mark.parametrize("value", NOT_USER_IDS, ids=repr)
async def test_token_whose_user_is_not_a_nonempty_string_is_refused(
    serve, functions_dir: Path, http: httpx.AsyncClient, claim: str, value: Any
) -> None:
    """uid/sub of 1, "", a list, a dict, a bool, a float or null: 401 over HTTP and at the
    WebSocket handshake (query and header), and parse_token gives None. ``1`` and ``"1"`` are
    never one user, and no user is called "True" or "[1, 2]"."""
    write_function(functions_dir, "whoami", WHOAMI)
    write_function(functions_dir, "__websocket__", WEBSOCKET)
    token = token_for({claim: value})
    async with serve(functions_dir, secret=SECRET) as server:
        parsed = cloud.parse_token(token)
        response = await http.get(
            server.fn_url("whoami"), headers={"Authorization": f"Bearer {token}"}
        )
        statuses = []
        for how in ("query", "header"):
            url = f"{server.ws_url}?token={token}" if how == "query" else server.ws_url
            headers = {"Authorization": f"Bearer {token}"} if how == "header" else {}
            with pytest.raises(InvalidStatus) as info:
                await websockets.connect(url, additional_headers=headers)
            statuses.append(info.value.response.status_code)
        ran = events()
    assert parsed is None
    assert response.status_code == 401
    assert statuses == [401, 401]
    assert ran == []


async def test_string_user_ids_still_bind(serve, functions_dir: Path) -> None:
    """The refusal is only of what is not a user id: uid "1" binds the socket to "1"."""
    write_function(functions_dir, "__websocket__", WEBSOCKET)
    async with serve(functions_dir, secret=SECRET) as server:
        async with websockets.connect(f"{server.ws_url}?token={token_for({'uid': '1'})}") as ws:
            await ws.send("hi")
            assert await ws.recv() == "echo:hi"
        assert events("WebSocket:connection")[0]["user_id"] == "1"


@pytest.mark.parametrize(
    ("value", "error"),
    [(1, TypeError), ([1], TypeError), (True, TypeError), (None, TypeError), ("", ValueError)],
    ids=repr,
)
async def test_get_token_refuses_user_ids_that_are_not_strings(
    serve, functions_dir: Path, value: Any, error: type[Exception]
) -> None:
    async with serve(functions_dir, secret=SECRET):
        for claim in ("uid", "sub"):
            with pytest.raises(error):
                cloud.get_token({claim: value})


BINDER = """
from laf_py import cloud

{define} main(ctx):
    if ctx.method != "WebSocket:connection":
        return
    raised = []
    for value in (1, "", [1, 2], True, 1.5):
        for how in ("attribute", "bind_user"):
            try:
                if how == "attribute":
                    ctx.socket.user_id = value
                else:
                    cloud.sockets.bind_user(ctx.socket, value)
            except (TypeError, ValueError) as exc:
                raised.append(type(exc).__name__)
            else:
                raised.append(None)
    cloud.shared["raised"] = raised
    cloud.shared["user_id"] = ctx.socket.user_id
    ctx.socket.user_id = "alice"  # a string binds
    cloud.shared["bound"] = ctx.socket.user_id
"""


@pytest.mark.parametrize("define", ["async def", "def"])
async def test_setting_a_user_id_that_is_not_a_string_raises(
    serve, functions_dir: Path, define: str
) -> None:
    """socket.user_id = 1 / bind_user(socket, []) raise TypeError in the function ("" raises
    ValueError), in an async function and in a plain def (a worker thread) alike."""
    write_function(functions_dir, "__websocket__", BINDER.format(define=define))
    async with serve(functions_dir) as server, websockets.connect(server.ws_url):
        await wait_until(lambda: "bound" in cloud.shared)
        online = await cloud.sockets.online_users()
    pairs = ["TypeError", "TypeError"]
    assert cloud.shared["raised"] == [*pairs, "ValueError", "ValueError", *pairs * 3]
    assert cloud.shared["user_id"] is None
    assert cloud.shared["bound"] == "alice"
    assert online == ["alice"]


SEND_TO = """
from laf_py import cloud

async def main(ctx):
    outcomes = {}
    for value in (1, "", ["1"], True, 1.0, None):
        for call in (
            lambda v: cloud.sockets.send_to_user(v, "to 1"),
            lambda v: cloud.sockets.is_online(v),
        ):
            try:
                await call(value)
            except (TypeError, ValueError) as exc:
                outcome = type(exc).__name__
            else:
                outcome = None
            outcomes.setdefault(repr(value), []).append(outcome)
    return {
        "outcomes": outcomes,
        "delivered": await cloud.sockets.send_to_user("1", "to 1"),
        "online": await cloud.sockets.is_online("1"),
    }
"""


async def test_send_to_user_and_is_online_take_only_string_user_ids(
    serve, functions_dir: Path, http: httpx.AsyncClient
) -> None:
    """send_to_user(1, ...) and is_online(1) raise TypeError in the function ("" ValueError),
    as bind_user does: 1 never reaches user "1", who gets only what was sent to "1"."""
    write_function(functions_dir, "__websocket__", WEBSOCKET)
    write_function(functions_dir, "send_to", SEND_TO)
    token = token_for({"uid": "1"})
    async with (
        serve(functions_dir, secret=SECRET) as server,
        websockets.connect(f"{server.ws_url}?token={token}") as ws,
    ):
        await wait_until(lambda: cloud.sockets.is_online("1"))
        response = await http.post(server.fn_url("send_to"))
        assert await ws.recv() == "to 1"
        await ws.send("hi")
        assert await ws.recv() == "echo:hi"  # nothing else was sent to "1"
    assert response.status_code == 200, response.text
    both = ["TypeError", "TypeError"]
    assert response.json() == {
        "outcomes": {
            "1": both,
            "''": ["ValueError", "ValueError"],
            "['1']": both,
            "True": both,
            "1.0": both,
            "None": both,
        },
        "delivered": 1,
        "online": True,
    }


# -- item 7: DNS rebinding: --allowed-hosts -----------------------------------------------------

ROUTES = ["/fn/whoami", "/_/healthz", "/", "/nowhere"]

RECORDING_WHOAMI = """
from laf_py import cloud

async def main(ctx):
    cloud.shared["ran"] = True
    return {"user": ctx.user}
"""


async def test_rebinding_host_is_refused_on_every_route(serve, functions_dir: Path) -> None:
    """A page on http://evil.example:PORT whose name resolves to 127.0.0.1 sends
    ``Host: evil.example:PORT``: every route answers 400 with a JSON error naming
    --allowed-hosts, the function never runs, and its WebSocket handshake (same-origin in the
    browser's eyes) is refused before the connection event."""
    write_function(functions_dir, "whoami", RECORDING_WHOAMI)
    write_function(functions_dir, "__websocket__", WEBSOCKET)
    async with serve(functions_dir) as server:
        port = server.server.port
        evil = f"evil.example:{port}"
        answers = [await raw_request(port, route, evil) for route in ROUTES]
        answers.append(
            await raw_request(
                port,
                "/__websocket__",
                evil,
                websocket=True,
                headers={"Origin": f"http://{evil}", "Sec-Fetch-Site": "same-origin"},
            )
        )
        answers.append(await raw_request(port, "/fn/whoami", evil, method="POST"))
        ran, sockets = cloud.shared.get("ran"), events()
    for status, head, body in answers:
        assert status == 400, head
        assert b"application/json" in head
        error = json.loads(body)
        assert "--allowed-hosts" in error["error"]
        assert "evil.example" in error["error"]
        assert error["request_id"]
    assert ran is None
    assert sockets == []


@pytest.mark.parametrize(
    "host",
    ["localhost", "LOCALHOST", "app.localhost", "127.0.0.1", "[::1]", "localhost."],
)
async def test_loopback_names_are_served_by_default(serve, functions_dir: Path, host) -> None:
    """Bound to 127.0.0.1 without --allowed-hosts: the loopback names, with or without a port."""
    write_function(functions_dir, "whoami", WHOAMI)
    async with serve(functions_dir) as server:
        port = server.server.port
        assert (await raw_request(port, "/fn/whoami", f"{host}:{port}"))[0] == 200
        assert (await raw_request(port, "/fn/whoami", host))[0] == 200


async def test_allowed_hosts_patterns(serve, functions_dir: Path) -> None:
    """--allowed-hosts *.example.com,api.test: those names (any port, any case), and the
    address the server is bound to; nothing else, not even localhost."""
    write_function(functions_dir, "whoami", WHOAMI)
    async with serve(functions_dir, allowed_hosts=("*.example.com", "api.test")) as server:
        port = server.server.port
        statuses = {
            host: (await raw_request(port, "/fn/whoami", host))[0]
            for host in (
                "app.example.com",
                "A.B.Example.COM:443",
                "api.test",
                f"127.0.0.1:{port}",
                "example.com",
                "example.com.evil.org",
                "api.test.evil.org",
                "localhost",
            )
        }
    assert statuses == {
        "app.example.com": 200,
        "A.B.Example.COM:443": 200,
        "api.test": 200,
        f"127.0.0.1:{port}": 200,
        "example.com": 400,
        "example.com.evil.org": 400,
        "api.test.evil.org": 400,
        "localhost": 400,
    }


async def test_bound_to_every_interface_any_host_is_served(serve, functions_dir: Path) -> None:
    """--host 0.0.0.0 without --allowed-hosts: any name (set --allowed-hosts to narrow it)."""
    write_function(functions_dir, "whoami", WHOAMI)
    async with serve(functions_dir, host="0.0.0.0") as server:
        port = server.server.port
        assert (await raw_request(port, "/fn/whoami", "evil.example"))[0] == 200
        assert (await raw_request(port, "/fn/whoami", f"10.1.2.3:{port}"))[0] == 200


async def test_star_serves_any_host(serve, functions_dir: Path) -> None:
    write_function(functions_dir, "whoami", WHOAMI)
    async with serve(functions_dir, allowed_hosts=("*",)) as server:
        port = server.server.port
        assert (await raw_request(port, "/fn/whoami", "evil.example"))[0] == 200


async def test_forwarded_host_is_checked_behind_a_trusted_proxy(serve, functions_dir: Path) -> None:
    """With --trust-proxy-headers the host the browser asked for is X-Forwarded-Host: it is
    what --allowed-hosts checks and what a browser's Origin is compared with. Without that
    flag the header is ignored."""
    write_function(functions_dir, "whoami", WHOAMI)
    write_function(functions_dir, "__websocket__", WEBSOCKET)
    settings = {"allowed_hosts": ("app.example.com",), "trust_proxy_headers": True}
    async with serve(functions_dir, **settings) as server:
        port = server.server.port
        local = f"127.0.0.1:{port}"

        async def status(forwarded: str, **extra: Any) -> int:
            headers = {"X-Forwarded-Host": forwarded, **extra.pop("headers", {})}
            return (await raw_request(port, "/fn/whoami", local, headers=headers, **extra))[0]

        async def handshake(forwarded: str, origin: str) -> int:
            headers = {"X-Forwarded-Host": forwarded, "Origin": origin}
            return (
                await raw_request(port, "/__websocket__", local, headers=headers, websocket=True)
            )[0]

        assert await status("app.example.com") == 200
        assert await status("evil.example") == 400
        assert await status("evil.example, app.example.com") == 200  # the proxy's own: last
        assert await status("app.example.com, evil.example") == 400
        assert await handshake("app.example.com", "https://app.example.com") == 101
        assert await handshake("app.example.com", "https://evil.example") == 403
        assert await handshake("evil.example", "https://evil.example") == 400
    async with serve(functions_dir, allowed_hosts=("app.example.com",)) as server:
        port = server.server.port
        headers = {"X-Forwarded-Host": "app.example.com"}
        answer = await raw_request(port, "/fn/whoami", "evil.example", headers=headers)
        assert answer[0] == 400


async def test_origin_is_compared_with_an_allowed_host(serve, functions_dir: Path) -> None:
    """A browser on the server's own (allowed) name connects; a page of another name that
    reaches the same address with a Host of its own does not (400 before the origin check)."""
    write_function(functions_dir, "__websocket__", WEBSOCKET)
    async with serve(functions_dir) as server:
        port = server.server.port
        own = f"localhost:{port}"
        origin = {"Origin": f"http://{own}"}
        assert (await raw_request(port, "/__websocket__", own, headers=origin, websocket=True))[
            0
        ] == 101
        other = {"Origin": f"http://rebound.example:{port}"}
        assert (await raw_request(port, "/__websocket__", own, headers=other, websocket=True))[
            0
        ] == 403
        assert (
            await raw_request(
                port, "/__websocket__", f"rebound.example:{port}", headers=other, websocket=True
            )
        )[0] == 400


def test_allowed_hosts_and_require_token_exp_from_the_environment(functions_dir: Path) -> None:
    env = {
        "LAF_ALLOWED_HOSTS": "App.Example.com., *.example.org, [::1]",
        "LAF_REQUIRE_TOKEN_EXP": "1",
    }
    settings = Settings.load({"functions_dir": functions_dir}, env)
    assert settings.allowed_hosts == ("app.example.com", "*.example.org", "::1")
    assert settings.require_token_exp is True
    assert Settings.load({"functions_dir": functions_dir}, {}).allowed_hosts is None


@pytest.mark.parametrize("value", ["https://app.example.com", "app.example.com:8000", "a/b", ""])
def test_bad_allowed_hosts_is_refused_by_the_cli(functions_dir: Path, value: str) -> None:
    code, output = run_to_exit(
        "serve",
        "--functions",
        str(functions_dir),
        "--allowed-hosts",
        value,
        cwd=functions_dir.parent,
    )
    assert code == 2, output
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert "--allowed-hosts" in lines[0]
    assert "LAF_ALLOWED_HOSTS" in lines[0]


# -- item 8: one spelling per token -------------------------------------------------------------


def spellings(token: str) -> dict[str, str]:
    """The same header, payload and signature bytes, spelled otherwise."""
    header, payload, signature = token.split(".")
    last = signature[-1]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    # 43 characters for 32 bytes: the last one carries 2 unused bits
    same_bits = alphabet[alphabet.index(last) ^ 1]
    stray = f"{header}.{payload}.{signature[:-1]}{same_bits}"
    assert base64url_decode(stray.split(".")[2]) == base64url_decode(signature)
    dashed = next(i for i, c in enumerate(signature) if c in "-_")
    std = signature[:dashed] + {"-": "+", "_": "/"}[signature[dashed]] + signature[dashed + 1 :]
    return {
        "padded": token + "=",
        "padded twice": token + "==",
        "padded header": f"{header}=.{payload}.{signature}",
        "padded payload": f"{header}.{payload}==.{signature}",
        "stray bits": stray,
        "outside the alphabet": f"{header}.{payload}.{signature[:10]}!{signature[10:]}",
        "standard base64": f"{header}.{payload}.{std}",
        "space inside": f"{header}.{payload}.{signature[:10]} {signature[10:]}",
    }


async def test_tokens_spelled_otherwise_are_refused(
    serve, functions_dir: Path, http: httpx.AsyncClient
) -> None:
    """A valid token with "=" appended, padding inside, a character outside base64url, the
    standard alphabet, or other unused bits is refused (401 over HTTP and at the handshake,
    None from parse_token), while the token itself is accepted."""
    write_function(functions_dir, "whoami", WHOAMI)
    write_function(functions_dir, "__websocket__", WEBSOCKET)
    async with serve(functions_dir, secret=SECRET) as server:
        token = next(
            t
            for t in (cloud.get_token({"uid": "alice", "n": n}) for n in range(1000))
            if any(c in "-_" for c in t.split(".")[2])
        )
        assert cloud.parse_token(token) is not None
        ok = await http.get(server.fn_url("whoami"), headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200
        results = {}
        for name, spelled in spellings(token).items():
            parsed = cloud.parse_token(spelled)
            response = await http.get(
                server.fn_url("whoami"), headers={"Authorization": f"Bearer {spelled}"}
            )
            with pytest.raises(InvalidStatus) as info:
                await websockets.connect(f"{server.ws_url}?token={quote(spelled, safe='')}")
            results[name] = (parsed, response.status_code, info.value.response.status_code)
    assert results == {name: (None, 401, 401) for name in results}


# -- item 11: tokens that expire on open sockets ------------------------------------------------


async def test_socket_is_closed_4401_when_its_token_expires(serve, functions_dir: Path) -> None:
    """A socket opened with a token that expires is closed with 4401 "token expired" at its
    exp, not before; the close event hears it. A socket whose token expires later stays."""
    write_function(functions_dir, "__websocket__", WEBSOCKET)
    async with serve(functions_dir) as server:
        short = cloud.get_token({"uid": "alice"}, expires_in=1)
        exp = jwt.decode(short, options={"verify_signature": False})["exp"]
        long = cloud.get_token({"uid": "bob"}, expires_in=3600)
        async with (
            websockets.connect(f"{server.ws_url}?token={short}") as expiring,
            websockets.connect(f"{server.ws_url}?token={long}") as staying,
        ):
            await expiring.send("hi")
            assert await expiring.recv() == "echo:hi"
            await asyncio.wait_for(expiring.wait_closed(), 6)
            closed_at = time.time()
            assert expiring.close_code == 4401
            assert expiring.close_reason == "token expired"
            await staying.send("still here")
            assert await staying.recv() == "echo:still here"
        await wait_until(lambda: len(events("WebSocket:close")) == 2)
    assert closed_at >= exp - 0.05  # not before the token's exp (clocks: a little slack)
    closes = {e["user_id"]: e["params"] for e in events("WebSocket:close")}
    assert closes["alice"] == {"code": 4401, "reason": "token expired"}
    assert closes["bob"]["code"] == 1000


async def test_far_expiry_is_watched_in_steps_and_still_closes_at_exp(
    serve, functions_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exp further away than one timer may wait (MAX_TIMER, a day; here 0.2 s) is looked at
    again at each step: the socket stays open until its exp, then closes 4401."""
    monkeypatch.setattr(connection, "MAX_TIMER", 0.2)
    write_function(functions_dir, "__websocket__", WEBSOCKET)
    async with serve(functions_dir) as server:
        token = cloud.get_token({"uid": "dora"}, expires_in=1.5)
        exp = jwt.decode(token, options={"verify_signature": False})["exp"]
        async with websockets.connect(f"{server.ws_url}?token={token}") as client:
            await asyncio.wait_for(client.wait_closed(), 6)
            closed_at = time.time()
    assert client.close_code == 4401
    assert closed_at >= exp - 0.05


async def test_token_expiring_during_the_connection_event_rejects_the_socket(
    serve, functions_dir: Path
) -> None:
    """The token expires while the connection event still runs: the handshake completes and
    closes at once with 4401; the socket was never findable and its user never online."""
    write_function(functions_dir, "__websocket__", WEBSOCKET)
    async with serve(functions_dir) as server:
        token = cloud.get_token({"uid": "carol"}, expires_in=1)
        exp = jwt.decode(token, options={"verify_signature": False})["exp"]
        connecting = asyncio.ensure_future(
            websockets.connect(f"{server.ws_url}?hold=1&token={token}")
        )
        await wait_until(lambda: cloud.shared.get("holding"))
        await wait_until(lambda: time.time() > exp + 0.2, timeout=5)
        cloud.shared["go"] = True
        client = await asyncio.wait_for(connecting, 5)
        await asyncio.wait_for(client.wait_closed(), 5)
        online = await cloud.sockets.online_users()
        await wait_until(lambda: events("WebSocket:close"))
    assert client.close_code == 4401
    assert online == []
    assert events("WebSocket:close")[0]["params"] == {"code": 4401, "reason": "token expired"}


async def test_require_token_exp_refuses_tokens_that_never_expire(
    serve, functions_dir: Path, http: httpx.AsyncClient
) -> None:
    """--require-token-exp: a token without exp gets 401 over HTTP and at the handshake; one
    with exp is accepted. Without the option both are accepted."""
    write_function(functions_dir, "whoami", WHOAMI)
    write_function(functions_dir, "__websocket__", WEBSOCKET)
    forever = token_for({"uid": "alice"})
    expiring = token_for({"uid": "alice", "exp": int(time.time()) + 3600})

    async def outcome(server: Any, token: str) -> tuple[int, int]:
        response = await http.get(
            server.fn_url("whoami"), headers={"Authorization": f"Bearer {token}"}
        )
        try:
            async with websockets.connect(f"{server.ws_url}?token={token}"):
                handshake = 101
        except InvalidStatus as exc:
            handshake = exc.response.status_code
        return response.status_code, handshake

    async with serve(functions_dir, secret=SECRET, require_token_exp=True) as server:
        assert await outcome(server, forever) == (401, 401)
        assert await outcome(server, expiring) == (200, 101)
        # cloud.parse_token agrees; cloud.get_token issues no token that never expires
        assert cloud.parse_token(forever) is None
        assert cloud.parse_token(expiring) is not None
        with pytest.raises(ValueError, match="expires_in"):
            cloud.get_token({"uid": "alice"})
        issued = cloud.get_token({"uid": "alice"}, expires_in=60)
        assert 0 < cloud.parse_token(issued)["exp"] - time.time() <= 61  # type: ignore[index]
        assert await outcome(server, issued) == (200, 101)
        with_exp = cloud.get_token({"uid": "alice", "exp": int(time.time()) + 60})
        assert await outcome(server, with_exp) == (200, 101)
    async with serve(functions_dir, secret=SECRET) as server:
        assert await outcome(server, forever) == (200, 101)
        assert cloud.parse_token(cloud.get_token({"uid": "alice"})) is not None


def test_test_client_signs_expiring_tokens_under_require_token_exp(functions_dir: Path) -> None:
    """laf_py.testing.TestClient(..., require_token_exp=True): ``user="ada"`` still connects
    (its token expires in an hour); a hand-made token without exp is refused."""
    write_function(functions_dir, "whoami", WHOAMI)
    with TestClient(functions_dir, require_token_exp=True) as client:
        response = client.get("whoami", user="ada")
        assert response.status_code == 200, response.text
        user = response.json()["user"]
        assert user["uid"] == "ada"
        assert 3500 < user["exp"] - time.time() <= 3601
        with pytest.raises(ValueError):
            client.token({"uid": "ada"})
        forever = jwt.encode({"uid": "ada"}, client.server.secret, algorithm="HS256")
        refused = client.get("whoami", headers={"Authorization": f"Bearer {forever}"})
        assert refused.status_code == 401
