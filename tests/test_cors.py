"""One origin policy for browsers (--allowed-origins): CORS for HTTP functions, the same rule
for WebSocket handshakes, and __default__ for unknown function names. Real server, real
HTTP; the browser's side of it is in tests/test_browser.py."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest
import websockets

from laf_py import cloud

from .conftest import write_function

pytestmark = pytest.mark.both_servers

COUNTED = """
from laf_py import cloud

methods = ["POST", "PUT"]

def main(ctx):
    cloud.shared.set("runs", cloud.shared.get("runs", 0) + 1)
    return {"method": ctx.method, "body": ctx.body}
"""

ANY_METHOD = """
def main(ctx):
    return {"method": ctx.method}
"""

BROKEN = """
def main(ctx):
    raise RuntimeError("boom")
"""

DEFAULT = """
methods = ["GET", "POST"]

def main(ctx):
    return {"fallback_for": ctx.function_name, "method": ctx.method}
"""

APP = "http://app.example"
PREFLIGHT = {
    "Origin": APP,
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "Authorization, Content-Type",
}


@pytest.fixture
def functions(functions_dir: Path) -> Path:
    write_function(functions_dir, "counted", COUNTED)
    write_function(functions_dir, "any", ANY_METHOD)
    write_function(functions_dir, "broken", BROKEN)
    write_function(functions_dir, "__websocket__", "async def main(ctx):\n    pass\n")
    return functions_dir


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "--allowed-origins" in r.getMessage()]


async def test_by_default_other_origins_are_refused_before_any_function_runs(
    serve, http, functions, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    async with serve(functions) as server:
        preflight = await http.options(server.fn_url("counted"), headers=PREFLIGHT)
        post = await http.post(server.fn_url("counted"), json={}, headers={"Origin": APP})
        runs = cloud.shared.get("runs", 0)
    assert preflight.status_code == 403 and post.status_code == 403
    assert "access-control-allow-origin" not in preflight.headers
    assert post.json()["error"] == f"Origin {APP!r} not allowed; see --allowed-origins"
    assert runs == 0
    lines = refusals(caplog)
    assert len(lines) == 2
    assert f"refused a CORS preflight from origin {APP!r} to OPTIONS /fn/counted" in lines[0]
    assert "LAF_ALLOWED_ORIGINS" in lines[0]
    assert "a cross-origin request" in lines[1]


async def test_same_origin_and_non_browser_requests_are_not_affected(
    serve, http, functions
) -> None:
    async with serve(functions) as server:
        own = server.url  # http://127.0.0.1:PORT: the page's origin is the server's
        same = await http.post(server.fn_url("counted"), json=1, headers={"Origin": own})
        fetch_site = await http.post(
            server.fn_url("counted"),
            json=2,
            headers={"Origin": "http://elsewhere", "Sec-Fetch-Site": "same-origin"},
        )
        plain = await http.post(server.fn_url("counted"), json=3)
    assert [r.status_code for r in (same, fetch_site, plain)] == [200, 200, 200]
    assert "access-control-allow-origin" not in same.headers


async def test_an_allowed_origin_gets_its_preflight_answered_without_the_function(
    serve, http, functions
) -> None:
    async with serve(functions, allowed_origins=(APP,)) as server:
        response = await http.options(server.fn_url("counted"), headers=PREFLIGHT)
        runs = cloud.shared.get("runs", 0)
        any_method = await http.options(server.fn_url("any"), headers=PREFLIGHT)
        unknown = await http.options(server.fn_url("nope"), headers=PREFLIGHT)
    assert response.status_code == 204 and response.content == b""
    headers = response.headers
    assert headers["access-control-allow-origin"] == APP
    assert headers["access-control-allow-methods"] == "POST, PUT"  # the function's methods
    assert headers["access-control-allow-headers"] == "Authorization, Content-Type"
    assert headers["access-control-max-age"] == "600"
    assert "Origin" in headers["vary"]
    assert "access-control-allow-credentials" not in headers
    assert runs == 0
    allowed = any_method.headers["access-control-allow-methods"]
    assert allowed == "DELETE, GET, HEAD, PATCH, POST, PUT"
    assert unknown.status_code == 404
    assert unknown.headers["access-control-allow-origin"] == APP  # the page can read why


async def test_allowed_responses_carry_the_headers_errors_included(serve, http, functions) -> None:
    async with serve(functions, allowed_origins=("http://*.example",)) as server:
        ok = await http.post(server.fn_url("counted"), json={"a": 1}, headers={"Origin": APP})
        failed = await http.get(server.fn_url("broken"), headers={"Origin": APP})
        unauthorized = await http.post(
            server.fn_url("counted"),
            json={},
            headers={"Origin": APP, "Authorization": "Bearer not-a-token"},
        )
        other = await http.post(
            server.fn_url("counted"), json={}, headers={"Origin": "http://example.evil"}
        )
    assert ok.status_code == 200 and ok.json()["body"] == {"a": 1}
    for response in (ok, failed, unauthorized):
        assert response.headers["access-control-allow-origin"] == APP
        assert response.headers["access-control-expose-headers"] == "X-Request-Id"
        assert response.headers["vary"] == "Origin"
    assert failed.status_code == 500 and unauthorized.status_code == 401
    assert other.status_code == 403  # the pattern matches subdomains only


async def test_credentials_only_when_asked_for(serve, http, functions) -> None:
    async with serve(functions, allowed_origins=("*",), allow_credentials=True) as server:
        response = await http.post(server.fn_url("counted"), json={}, headers={"Origin": APP})
    assert response.headers["access-control-allow-origin"] == APP
    assert response.headers["access-control-allow-credentials"] == "true"


async def test_a_plain_options_request_still_reaches_the_function(serve, http, functions) -> None:
    async with serve(functions) as server:
        response = await http.options(server.fn_url("any"))
    assert response.json() == {"method": "OPTIONS"}


async def test_websocket_handshakes_follow_the_same_policy(
    serve, functions, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    async with serve(functions) as server:
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(server.ws_url, origin=APP)
    assert refused.value.response.status_code == 403
    assert any("a WebSocket handshake" in line for line in refusals(caplog))
    async with (
        serve(functions, allowed_origins=(APP,)) as server,
        websockets.connect(server.ws_url, origin=APP) as ws,
    ):
        assert ws.protocol.state.name == "OPEN"


async def test_default_function_answers_unknown_names(serve, http, functions) -> None:
    write_function(functions, "__default__", DEFAULT)
    async with serve(functions) as server:
        unknown = await http.get(server.fn_url("no/such/thing"))
        own = await http.post(server.fn_url("counted"), json=None)
        private = await http.get(server.fn_url("_helper"))
        escaping = await http.get(server.url + "/fn/../etc/passwd")
        wrong_method = await http.delete(server.fn_url("nope"))
        listing = await http.get(server.url + "/fn/")
    assert unknown.json() == {"fallback_for": "no/such/thing", "method": "GET"}
    assert own.json()["method"] == "POST"  # a function's own file still wins
    assert private.status_code == 404 and escaping.status_code == 404
    assert wrong_method.status_code == 405
    assert wrong_method.headers["allow"] == "GET, HEAD, POST"
    assert "__default__" not in listing.json()["functions"]


async def test_a_broken_default_function_says_which_file(serve, http, functions) -> None:
    write_function(functions, "__default__", "def main(ctx:\n")
    async with serve(functions) as server:
        response = await http.get(server.fn_url("nope"))
    assert response.status_code == 500
    assert response.json()["error"] == "Function '__default__' failed to load; see server log"


async def test_no_origin_header_means_no_cors_headers(serve, functions) -> None:
    """(A cache in front must not hand one origin's answer to another: Vary: Origin.)"""
    async with serve(functions, allowed_origins=(APP,)) as server, httpx.AsyncClient() as http:
        response = await http.get(server.fn_url("any"))
    assert "access-control-allow-origin" not in response.headers
