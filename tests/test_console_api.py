"""The console over plain HTTP: who may use it, what its API answers and does, and what it
never gives away. Real in-process servers, real httpx and websockets clients.

Browser-level behaviour (the page really running in Chromium) is in test_console_browser.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import websockets

from laf_py.server.console import ASSETS_DIR, CSP

from .conftest import _postgres_database, _reset_postgres, wait_until, write_function

pytestmark = pytest.mark.both_servers

ADMIN_TOKEN = "console-admin-token-0123456789"
SECRET = "console-secret-" + "s" * 40
DB_PASSWORD = "db-pass-hunter2-console"

HELLO = """
methods = ["GET", "POST"]
timeout = 5

def main(ctx):
    print("hello ran for", ctx.query.get("name"))
    return {"hello": ctx.query.get("name", "world")}
"""
BROKEN = """
x = 1

def main(ctx):
    return 1 +
"""
TICK = """
schedule = "*/5 * * * *"
methods = ["GET"]

def main(ctx):
    return "tick"
"""
WEBSOCKET = """
def main(ctx):
    if ctx.method == "WebSocket:connection" and "user" in ctx.query:
        ctx.socket.user_id = ctx.query["user"]
"""

PAGES = ["/_/console", "/_/console/", "/_/console/console.js", "/_/console/metrics.js",
         "/_/console/console.css"]  # fmt: skip
READS = ["/_/api/info", "/_/api/functions", "/_/api/sockets", "/_/api/logs", "/_/metrics"]
Action = tuple[str, dict[str, Any]]


def actions(socket_id: str) -> list[Action]:
    """Every POST of the console's API, with a body that makes it act."""
    return [
        ("/_/api/token", {"user": "ada"}),
        (f"/_/api/sockets/{socket_id}/send", {"message": "from the console"}),
        ("/_/api/users/ada/send", {"message": {"to": "ada"}}),
        (f"/_/api/sockets/{socket_id}/close", {}),  # last: it ends the socket
    ]


@pytest.fixture
def app(functions_dir: Path) -> Path:
    write_function(functions_dir, "hello", HELLO)
    write_function(functions_dir, "broken", BROKEN)
    write_function(functions_dir, "tick", TICK)
    write_function(functions_dir, "__websocket__", WEBSOCKET)
    return functions_dir


async def connect(server: Any, user: str = "ada") -> Any:
    """A WebSocket client bound to ``user``, and its socket id once the server lists it."""
    ws = await websockets.connect(f"{server.ws_url}?user={user}")
    return ws


async def socket_id_of(server: Any, http: httpx.AsyncClient, **headers: str) -> str:
    async def listed() -> str | None:
        answer = (await http.get(f"{server.url}/_/api/sockets", headers=headers)).json()
        return answer["sockets"][0]["id"] if answer["sockets"] else None

    return str(await wait_until(listed))


async def first_message_is(ws: Any, server: Any, http: httpx.AsyncClient, headers: Any) -> None:
    """After refused actions: an accepted send is the first frame the client gets (frames of
    one socket keep their order, so a refused send that got through would come first) and the
    socket is still open (a refused close did nothing)."""
    rows = (await http.get(f"{server.url}/_/api/sockets", headers=headers)).json()["sockets"]
    url = f"{server.url}/_/api/sockets/{rows[0]['id']}/send"
    answer = await http.post(url, json={"message": "accepted"}, headers=headers)
    assert answer.json() == {"delivered": 1}
    assert await asyncio.wait_for(ws.recv(), 5) == "accepted"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def no_cors(response: httpx.Response) -> None:
    cors = [name for name in response.headers if name.lower().startswith("access-control-")]
    assert cors == [], (response.request.url, cors)


# -- no --admin-token: loopback only ------------------------------------------------------------


async def test_without_a_token_loopback_clients_use_everything(serve, app, http) -> None:
    async with serve(app) as server:
        for path in PAGES + READS:
            response = await http.get(server.url + path)
            assert response.status_code == 200, (path, response.text)
            no_cors(response)
        ws = await connect(server)
        socket_id = await socket_id_of(server, http)
        for path, body in actions(socket_id):
            response = await http.post(server.url + path, json=body)
            assert response.status_code == 200, (path, response.text)
            no_cors(response)
        await ws.close()


async def test_without_a_token_other_addresses_are_refused(serve, app, http) -> None:
    """Behind a proxy (--trust-proxy-headers) the client's address decides: a remote one is
    refused on the page, its assets, every read and every action."""
    async with serve(app, trust_proxy_headers=True) as server:
        ws = await connect(server)
        socket_id = await socket_id_of(server, http)
        remote = {"X-Forwarded-For": "203.0.113.7", "X-Real-Ip": "203.0.113.7"}
        for path in PAGES + READS:
            response = await http.get(server.url + path, headers=remote)
            assert response.status_code == 403, (path, response.text)
            assert "loopback" in response.json()["error"]
        for path, body in actions(socket_id):
            response = await http.post(server.url + path, json=body, headers=remote)
            assert response.status_code == 403, (path, response.text)
        await first_message_is(ws, server, http, {})  # the refused ones did nothing
        await ws.close()


def outward_address() -> str | None:
    """This machine's address on a non-loopback interface, if it has one."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a route
        address = str(probe.getsockname()[0])
    except OSError:
        return None
    finally:
        probe.close()
    return None if address.startswith("127.") else address


async def test_without_a_token_a_real_remote_address_is_refused(serve, app, http) -> None:
    address = outward_address()
    if address is None:
        pytest.skip("this machine has no non-loopback interface")
    async with serve(app, host="0.0.0.0") as server:
        port = server.url.rsplit(":", 1)[1]
        for path in ["/_/console", "/_/api/functions"]:
            response = await http.get(f"http://{address}:{port}{path}")
            assert response.status_code == 403, (path, response.text)
        response = await http.post(f"http://{address}:{port}/_/api/token", json={"user": "x"})
        assert response.status_code == 403
        assert (await http.get(f"http://127.0.0.1:{port}/_/api/functions")).status_code == 200


# -- --admin-token: the token on every request ------------------------------------------------


async def test_with_a_token_every_api_request_needs_it(serve, app, http) -> None:
    async with serve(app, admin_token=ADMIN_TOKEN) as server:
        ws = await connect(server)
        socket_id = await socket_id_of(server, http, **bearer(ADMIN_TOKEN))
        wrong = [
            {},
            bearer("not-the-admin-token-0123456789"),
            bearer(ADMIN_TOKEN[:-1]),
            {"Authorization": ADMIN_TOKEN},
            {"Authorization": f"Basic {ADMIN_TOKEN}"},
            bearer(SECRET),
        ]
        for path in READS:
            for headers in wrong:
                response = await http.get(server.url + path, headers=headers)
                assert response.status_code == 401, (path, headers, response.text)
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
                no_cors(response)
            response = await http.get(server.url + path, headers=bearer(ADMIN_TOKEN))
            assert response.status_code == 200, (path, response.text)
        for path, body in actions(socket_id):
            for headers in wrong:
                response = await http.post(server.url + path, json=body, headers=headers)
                assert response.status_code == 401, (path, headers, response.text)
                assert "token" not in response.json()  # no token was signed
        await first_message_is(ws, server, http, bearer(ADMIN_TOKEN))
        for path, body in actions(socket_id):
            response = await http.post(server.url + path, json=body, headers=bearer(ADMIN_TOKEN))
            assert response.status_code == 200, (path, response.text)
        await ws.close()


async def test_with_a_token_the_page_is_a_shell_and_the_api_is_not(serve, app, http) -> None:
    """A browser cannot put a Bearer token on a navigation, so with a token set the page and
    its assets are served without one (from any address); they hold no data of the server."""
    async with serve(app, admin_token=ADMIN_TOKEN, trust_proxy_headers=True) as server:
        write_function(app, "zebra_ledger", "def main(ctx):\n    return 1\n")
        remote = {"X-Forwarded-For": "203.0.113.7"}
        info = (await http.get(server.url + "/_/api/info", headers=bearer(ADMIN_TOKEN))).json()
        for path in PAGES:
            response = await http.get(server.url + path, headers=remote)
            assert response.status_code == 200, path
            for leaked in ["zebra_ledger", "SyntaxError", info["node"], info["database"], str(app)]:
                assert leaked not in response.text, (path, leaked)
        # The token works from anywhere; without it, nothing.
        assert (await http.get(server.url + "/_/api/functions", headers=remote)).status_code == 401
        response = await http.get(
            server.url + "/_/api/functions", headers={**remote, **bearer(ADMIN_TOKEN)}
        )
        assert response.status_code == 200


# -- same origin only -----------------------------------------------------------------------------


async def test_cross_origin_requests_are_refused_and_get_no_cors_headers(serve, app, http) -> None:
    """Even with the right token and with functions open to every origin
    (--allowed-origins '*'), a request another site's page makes is refused."""
    async with serve(app, admin_token=ADMIN_TOKEN, allowed_origins=("*",)) as server:
        ws = await connect(server)
        socket_id = await socket_id_of(server, http, **bearer(ADMIN_TOKEN))
        foreign = [
            {"Origin": "http://evil.example"},
            {"Origin": "null"},
            {"Origin": server.url.replace("127.0.0.1", "localhost")},  # another origin
            {"Sec-Fetch-Site": "cross-site"},
        ]
        for headers in foreign:
            for path in PAGES + READS:
                response = await http.get(
                    server.url + path, headers={**headers, **bearer(ADMIN_TOKEN)}
                )
                assert response.status_code == 403, (path, headers, response.text)
                no_cors(response)
            for path, body in actions(socket_id):
                response = await http.post(
                    server.url + path, json=body, headers={**headers, **bearer(ADMIN_TOKEN)}
                )
                assert response.status_code == 403, (path, headers, response.text)
                no_cors(response)
        # A preflight from another site gets no permission either.
        response = await http.request(
            "OPTIONS",
            server.url + "/_/api/token",
            headers={
                "Origin": "http://evil.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        assert response.status_code >= 400
        no_cors(response)
        # The page's own origin is fine, and functions still answer other origins.
        same = {"Origin": server.url, "Sec-Fetch-Site": "same-origin", **bearer(ADMIN_TOKEN)}
        assert (await http.get(server.url + "/_/api/info", headers=same)).status_code == 200
        response = await http.get(server.fn_url("hello"), headers={"Origin": "http://x.example"})
        assert response.headers["Access-Control-Allow-Origin"] in ("*", "http://x.example")
        await ws.close()


async def test_actions_need_a_json_body(serve, app, http) -> None:
    """A plain HTML form (urlencoded, multipart, text/plain) cannot send application/json."""
    async with serve(app) as server:
        for content_type in ["application/x-www-form-urlencoded", "text/plain", ""]:
            response = await http.post(
                server.url + "/_/api/token",
                content=b'{"user": "ada"}',
                headers={"Content-Type": content_type},
            )
            assert response.status_code == 415, content_type
        response = await http.post(
            server.url + "/_/api/token",
            content=b"{nope",
            headers={"Content-Type": "application/json"},
        )
        assert response.status_code == 400


# -- the page ---------------------------------------------------------------------------------


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.script_text = ""
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.script_text += data


async def test_the_page_runs_only_its_own_script(serve, app, http) -> None:
    async with serve(app) as server:
        response = await http.get(server.url + "/_/console")
        assert response.headers["Content-Type"] == "text/html; charset=utf-8"
        policy = response.headers["Content-Security-Policy"]
        assert policy == CSP
        directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
        assert directives["script-src"] == "'self'"
        assert directives["default-src"] == "'none'"
        assert directives["frame-ancestors"] == "'none'"
        assert directives["connect-src"] == "'self'"
        assert "unsafe" not in policy
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Cache-Control"] == "no-store"
        page = _Tags()
        page.feed(response.text)
        scripts = [attrs for tag, attrs in page.tags if tag == "script"]
        assert scripts and all(attrs.get("src", "").startswith("/_/console/") for attrs in scripts)
        assert page.script_text.strip() == ""  # no inline script
        handlers = [(t, a) for t, attrs in page.tags for a in attrs if a.startswith("on")]
        assert handlers == []
        for name, kind in [("console.js", "text/javascript"), ("console.css", "text/css")]:
            asset = await http.get(f"{server.url}/_/console/{name}")
            assert asset.headers["Content-Type"].startswith(kind)
            assert asset.headers["Content-Security-Policy"] == CSP
        assert (await http.get(server.url + "/_/console/secret.js")).status_code == 404
        for outside in ["..%2Fserver%2Fconsole.py", "%2e%2e/%2e%2e/config.py", "index.html"]:
            response = await http.get(f"{server.url}/_/console/{outside}")
            assert response.status_code == 404, outside


def test_the_scripts_never_build_html_from_strings() -> None:
    """What the console shows goes in with textContent: no innerHTML, outerHTML,
    insertAdjacentHTML, document.write or eval anywhere in its scripts."""
    for script in ASSETS_DIR.glob("*.js"):
        source = script.read_text()
        for sink in ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("]:
            assert sink not in source, (script.name, sink)
        assert not re.search(r"new Function\s*\(", source), script.name


# -- what the API answers -------------------------------------------------------------------


async def test_functions_list_their_settings_and_load_errors(serve, app, http) -> None:
    async with serve(app) as server:
        listed = (await http.get(server.url + "/_/api/functions")).json()
        functions = {f["name"]: f for f in listed["functions"]}
        assert set(functions) == {"hello", "broken", "tick", "__websocket__"}
        hello = functions["hello"]
        assert hello["loaded"] and hello["error"] is None and hello["callable"]
        assert hello["methods"] == ["GET", "POST"] and hello["timeout"] == 5
        assert hello["path"] == "functions/hello.py"
        broken = functions["broken"]
        assert broken["loaded"] is False
        assert broken["error"]["file"] == "functions/broken.py"
        assert broken["error"]["line"] == 4
        assert "SyntaxError" in broken["error"]["message"]
        assert functions["tick"]["schedule"] == "at '*/5 * * * *' (UTC)"
        assert functions["__websocket__"]["kind"] == "websocket"
        assert functions["__websocket__"]["callable"] is False
        assert listed["default_timeout"] == 60

        # Hot reload: a new file, then the broken one fixed.
        write_function(app, "fresh", "def main(ctx):\n    return 'new'\n")
        write_function(app, "broken", "def main(ctx):\n    return 'fixed'\n")

        async def reloaded() -> bool:
            now = (await http.get(server.url + "/_/api/functions")).json()["functions"]
            names = {f["name"]: f for f in now}
            return "fresh" in names and names["broken"]["loaded"]

        await wait_until(reloaded, timeout=15)


async def test_the_console_signs_tokens_for_users(serve, app, http) -> None:
    async with serve(app, secret=SECRET) as server:
        answer = (await http.post(server.url + "/_/api/token", json={"user": "ada"})).json()
        payload = jwt.decode(answer["token"], SECRET, algorithms=["HS256"])
        assert payload["uid"] == "ada" and payload["exp"] > payload["iat"]
        claims = {"user": "bob", "claims": {"role": "admin", "uid": "mallory"}}
        answer = (await http.post(server.url + "/_/api/token", json=claims)).json()
        payload = jwt.decode(answer["token"], SECRET, algorithms=["HS256"])
        assert payload["uid"] == "bob" and payload["role"] == "admin"  # the user field wins
        response = await http.get(server.fn_url("hello"), headers=bearer(answer["token"]))
        assert response.status_code == 200
        for bad in [{"user": ""}, {"user": 7}, {}, {"user": "x", "claims": [1]}]:
            response = await http.post(server.url + "/_/api/token", json=bad)
            assert response.status_code == 400, bad


async def test_sockets_send_and_close_from_the_console(serve, app, http, caplog) -> None:
    caplog.set_level(logging.INFO, logger="laf_py")
    async with serve(app) as server:
        ws = await connect(server, user="ada")
        other = await connect(server, user="bob")
        listed: dict[str, Any] = {}

        async def both() -> bool:
            listed.update((await http.get(server.url + "/_/api/sockets")).json())
            return len(listed["sockets"]) == 2

        await wait_until(both)
        rows = {row["user"]: row for row in listed["sockets"]}
        ada = rows["ada"]
        assert listed["count"] == 2 and listed["online_users"] == ["ada", "bob"]
        assert ada["remote_address"] == "127.0.0.1"
        assert ada["connected_at"] > 0 and ada["node"] == listed["node"]
        assert ada["messages_in"] == 0 and ada["rooms"] == []

        url = f"{server.url}/_/api/sockets/{ada['id']}/send"
        assert (await http.post(url, json={"message": "hi ada"})).json() == {"delivered": 1}
        assert await asyncio.wait_for(ws.recv(), 5) == "hi ada"
        answer = await http.post(url, json={"message": {"type": "ping", "n": 1}})
        assert answer.json() == {"delivered": 1}
        assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"type": "ping", "n": 1}

        url = f"{server.url}/_/api/users/bob/send"
        assert (await http.post(url, json={"message": "hi bob"})).json() == {"delivered": 1}
        assert await asyncio.wait_for(other.recv(), 5) == "hi bob"
        gone = await http.post(f"{server.url}/_/api/users/nobody/send", json={"message": "x"})
        assert gone.json() == {"delivered": 0}

        await http.post(f"{server.url}/_/api/sockets/{ada['id']}/close", json={})
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (
            1000,
            "closed from the console",
        )
        unknown = await http.post(
            f"{server.url}/_/api/sockets/{ada['id']}/send", json={"message": 1}
        )
        assert unknown.status_code == 404
        bad_code = await http.post(
            f"{server.url}/_/api/sockets/{rows['bob']['id']}/close", json={"code": 1006}
        )
        assert bad_code.status_code == 400
        no_message = await http.post(f"{server.url}/_/api/users/bob/send", json={})
        assert no_message.status_code == 400
        await other.close()
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("console:")]
    assert f"console: sent a test message to socket {ada['id']} (delivered: 1)" in logged
    assert "console: sent a test message to user 'bob' (delivered: 1)" in logged
    assert any(m.startswith(f"console: closed socket {ada['id']}") for m in logged)


# -- never a secret ------------------------------------------------------------------------------


@pytest.fixture
def postgres_with_password() -> str:
    dsn = _postgres_database()
    _reset_postgres(dsn)
    # The server trusts loopback connections, so any password works, and must never show.
    return dsn.replace("postgresql://postgres@", f"postgresql+asyncpg://postgres:{DB_PASSWORD}@")


async def test_no_answer_holds_a_secret_or_a_password(
    serve, app, http, postgres_with_password: str
) -> None:
    async with serve(
        app, admin_token=ADMIN_TOKEN, secret=SECRET, database_url=postgres_with_password
    ) as server:
        ws = await connect(server)
        socket_id = await socket_id_of(server, http, **bearer(ADMIN_TOKEN))
        await http.get(server.fn_url("hello"))
        answers: list[str] = []
        for path in PAGES + READS:
            answers.append((await http.get(server.url + path, headers=bearer(ADMIN_TOKEN))).text)
        for path, body in actions(socket_id):
            response = await http.post(server.url + path, json=body, headers=bearer(ADMIN_TOKEN))
            answers.append(response.text + json.dumps(dict(response.headers)))
        info = json.loads(answers[len(PAGES)])
        assert info["database"].startswith("postgresql+asyncpg://postgres:***@")
        for text in answers:
            for secret in [SECRET, ADMIN_TOKEN, DB_PASSWORD]:
                assert secret not in text
        await ws.close()
