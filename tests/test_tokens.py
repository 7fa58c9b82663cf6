"""``cloud.get_token`` / ``cloud.parse_token`` and how tokens reach functions.

Tokens are made and checked from the test body, which runs in the server's process while it
serves; HTTP and WebSocket clients then present them the way users do.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from laf_py import cloud

from .conftest import run_to_exit, wait_until, write_function

pytestmark = pytest.mark.both_servers

SECRET = "x" * 40
OTHER_SECRET = "y" * 40

WHOAMI = """
async def main(ctx):
    return {"user": ctx.user}
"""

# Records, per WebSocket event, what ctx says about the user; answers "ready" and "got".
RECORDER = """
from laf_py import cloud

async def main(ctx):
    cloud.shared.setdefault("events", []).append(
        {"method": ctx.method, "user": ctx.user, "user_id": ctx.socket.user_id}
    )
    if ctx.method == "WebSocket:connection":
        ctx.socket.send("ready")
    elif ctx.method == "WebSocket:message":
        ctx.socket.send("got")
"""


def secret_file(functions_dir: Path) -> Path:
    return functions_dir.parent / ".laf" / "secret"


def events() -> list[dict[str, Any]]:
    return list(cloud.shared.get("events", []))


async def recv(ws: Any, timeout: float = 5.0) -> str | bytes:
    return await asyncio.wait_for(ws.recv(), timeout)


def b64url(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def forged(secret: str) -> str:
    return jwt.encode({"uid": "alice"}, OTHER_SECRET, algorithm="HS256")


def expired(secret: str) -> str:
    past = int(time.time()) - 60
    return jwt.encode({"uid": "alice", "iat": past - 60, "exp": past}, secret, algorithm="HS256")


def tampered(secret: str) -> str:
    header, _, signature = jwt.encode({"uid": "alice"}, secret, algorithm="HS256").split(".")
    return f"{header}.{b64url({'uid': 'admin'})}.{signature}"


def alg_none(secret: str) -> str:
    return jwt.encode({"uid": "alice"}, None, algorithm="none")


def garbage(secret: str) -> str:
    return "not-a-token"


def dotted_garbage(secret: str) -> str:
    return "a.b.c"


INVALID: list[Callable[[str], str]] = [
    forged,
    expired,
    tampered,
    alg_none,
    garbage,
    dotted_garbage,
]


# -- cloud.get_token / cloud.parse_token ------------------------------------------------------


async def test_round_trip_returns_the_payload(serve, functions_dir: Path) -> None:
    """parse_token(get_token(payload)) gives the payload back, plus iat."""
    async with serve(functions_dir):
        token = cloud.get_token({"uid": "alice", "role": "admin", "n": [1, 2]})
        payload = cloud.parse_token(token)
    assert payload is not None
    assert {k: v for k, v in payload.items() if k != "iat"} == {
        "uid": "alice",
        "role": "admin",
        "n": [1, 2],
    }


async def test_iat_is_added_and_no_exp_without_expires_in(serve, functions_dir: Path) -> None:
    """get_token adds iat (now, in whole seconds) and no exp by default."""
    async with serve(functions_dir):
        before = int(time.time())
        payload = cloud.parse_token(cloud.get_token({"uid": "alice"}))
        after = int(time.time())
    assert payload is not None
    assert before <= payload["iat"] <= after
    assert "exp" not in payload


async def test_expires_in_sets_exp(serve, functions_dir: Path) -> None:
    """expires_in=N gives an exp N seconds after issue (whole seconds, never sooner)."""
    async with serve(functions_dir):
        issued = time.time()
        payload = cloud.parse_token(cloud.get_token({"uid": "alice"}, expires_in=3600))
    assert payload is not None
    assert issued + 3600 <= payload["exp"] <= issued + 3601
    assert payload["exp"] - payload["iat"] in (3600, 3601)


async def test_fractional_expires_in_is_valid_right_after_issue(serve, functions_dir) -> None:
    """expires_in=0.5 is accepted (> 0), so the token must be valid when just issued."""
    async with serve(functions_dir):
        token = cloud.get_token({"uid": "alice"}, expires_in=0.5)
        payload = cloud.parse_token(token)
    assert payload is not None
    assert payload["uid"] == "alice"


async def test_token_expires(serve, functions_dir: Path) -> None:
    """A token with expires_in=1 parses at first and is None once it has expired."""
    async with serve(functions_dir):
        token = cloud.get_token({"uid": "alice"}, expires_in=1)
        assert cloud.parse_token(token) is not None
        await wait_until(lambda: cloud.parse_token(token) is None, timeout=5)


@pytest.mark.parametrize("make", INVALID, ids=lambda f: f.__name__)
async def test_invalid_tokens_parse_to_none(serve, functions_dir: Path, make) -> None:
    """Forged, expired, tampered, alg none and garbage tokens: parse_token gives None."""
    async with serve(functions_dir):
        secret = secret_file(functions_dir).read_text().strip()
        assert cloud.parse_token(make(secret)) is None


async def test_sub_that_is_not_a_string_is_a_type_error(serve, functions_dir: Path) -> None:
    """JWT wants sub to be a string: get_token refuses an int sub with TypeError."""
    async with serve(functions_dir):
        with pytest.raises(TypeError):
            cloud.get_token({"sub": 42})


@pytest.mark.parametrize("expires_in", [0, -1, -0.5])
async def test_expires_in_not_positive_is_a_value_error(serve, functions_dir, expires_in) -> None:
    """expires_in <= 0 makes no sense: ValueError."""
    async with serve(functions_dir):
        with pytest.raises(ValueError):
            cloud.get_token({"uid": "alice"}, expires_in=expires_in)


# -- HTTP: Authorization: Bearer ---------------------------------------------------------------


async def test_http_bearer_token_becomes_ctx_user(serve, http, functions_dir: Path) -> None:
    """A valid Bearer token: ctx.user is its payload."""
    write_function(functions_dir, "whoami", WHOAMI)
    async with serve(functions_dir) as server:
        token = cloud.get_token({"uid": "alice"})
        response = await http.get(
            server.fn_url("whoami"), headers={"Authorization": f"Bearer {token}"}
        )
        expected = cloud.parse_token(token)
    assert response.status_code == 200
    assert response.json() == {"user": expected}


async def test_http_without_token_user_is_none(serve, http, functions_dir: Path) -> None:
    """No Authorization header: ctx.user is None."""
    write_function(functions_dir, "whoami", WHOAMI)
    async with serve(functions_dir) as server:
        response = await http.get(server.fn_url("whoami"))
    assert response.status_code == 200
    assert response.json() == {"user": None}


@pytest.mark.parametrize("make", INVALID, ids=lambda f: f.__name__)
async def test_http_invalid_token_is_401(serve, http, functions_dir: Path, make) -> None:
    """An invalid or expired Bearer token: 401 JSON error with WWW-Authenticate: Bearer."""
    write_function(functions_dir, "whoami", WHOAMI)
    async with serve(functions_dir) as server:
        token = make(secret_file(functions_dir).read_text().strip())
        response = await http.get(
            server.fn_url("whoami"), headers={"Authorization": f"Bearer {token}"}
        )
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json() == {
        "error": "Invalid or expired token",
        "request_id": response.headers["x-request-id"],
    }


async def test_http_basic_authorization_is_ignored(serve, http, functions_dir: Path) -> None:
    """A non-Bearer Authorization header (Basic) is not a token: ctx.user is None."""
    write_function(functions_dir, "whoami", WHOAMI)
    async with serve(functions_dir) as server:
        response = await http.get(server.fn_url("whoami"), auth=("alice", "password"))
    assert response.status_code == 200
    assert response.json() == {"user": None}


# -- WebSocket: ?token= or Authorization -------------------------------------------------------


def ws_connect(server: Any, token: str, how: str) -> Any:
    if how == "query":
        return websockets.connect(f"{server.ws_url}?token={token}")
    return websockets.connect(
        server.ws_url, additional_headers={"Authorization": f"Bearer {token}"}
    )


@pytest.mark.parametrize("how", ["query", "header"])
async def test_ws_token_is_ctx_user_on_every_event(serve, functions_dir: Path, how) -> None:
    """The handshake's token is ctx.user on connection, message and close."""
    write_function(functions_dir, "__websocket__", RECORDER)
    async with serve(functions_dir) as server:
        token = cloud.get_token({"uid": "alice"})
        expected = cloud.parse_token(token)
        async with ws_connect(server, token, how) as ws:
            assert await recv(ws) == "ready"
            await ws.send("hi")
            assert await recv(ws) == "got"
        await wait_until(lambda: len(events()) == 3)
        recorded = events()
    assert [e["method"] for e in recorded] == [
        "WebSocket:connection",
        "WebSocket:message",
        "WebSocket:close",
    ]
    assert all(e["user"] == expected for e in recorded)


@pytest.mark.parametrize(
    ("claims", "user_id"),
    [
        ({"uid": "alice"}, "alice"),
        ({"sub": "bob"}, "bob"),
        ({"uid": "carol", "sub": "someone-else"}, "carol"),
    ],
    ids=["uid", "sub", "uid-before-sub"],
)
async def test_ws_token_binds_socket_before_connection_event(
    serve, functions_dir: Path, claims, user_id
) -> None:
    """uid, else sub, is ctx.socket.user_id already in the connection event. (A uid that is
    not a non-empty string is refused: tests/test_hardening_tokens.py.)"""
    write_function(functions_dir, "__websocket__", RECORDER)
    async with serve(functions_dir) as server:
        async with ws_connect(server, cloud.get_token(claims), "query") as ws:
            assert await recv(ws) == "ready"
        recorded = events()
    assert recorded[0]["method"] == "WebSocket:connection"
    assert recorded[0]["user_id"] == user_id


@pytest.mark.parametrize("how", ["query", "header"])
@pytest.mark.parametrize("make", INVALID, ids=lambda f: f.__name__)
async def test_ws_invalid_token_refused_401(serve, functions_dir: Path, make, how) -> None:
    """An invalid or expired token: the handshake is refused with 401 and no event runs."""
    write_function(functions_dir, "__websocket__", RECORDER)
    async with serve(functions_dir) as server:
        token = make(secret_file(functions_dir).read_text().strip())
        with pytest.raises(InvalidStatus) as info:
            await ws_connect(server, token, how)
        recorded = events()
        connected = len(cloud.sockets)
    assert info.value.response.status_code == 401
    assert recorded == []
    assert connected == 0


# -- the secret --------------------------------------------------------------------------------


async def test_secret_file_is_created_with_mode_0600(serve, functions_dir: Path) -> None:
    """No secret configured: .laf/secret beside the functions folder, readable by owner only."""
    async with serve(functions_dir):
        pass
    path = secret_file(functions_dir)
    assert path.is_file()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert len(path.read_text().strip()) >= 32


async def test_a_generated_secret_is_no_news_on_a_laptop(
    serve, functions_dir: Path, caplog
) -> None:
    """One process, no Redis: generating the secret logs no warning (a cluster node is warned
    in its banner: tests/test_app_folder.py)."""
    caplog.set_level(logging.WARNING, logger="laf_py")
    async with serve(functions_dir):
        pass
    assert secret_file(functions_dir).is_file()
    assert not [r for r in caplog.records if "secret" in r.getMessage()]


async def test_token_survives_restart_on_the_same_folder(serve, functions_dir: Path) -> None:
    """A token from one server is valid on the next one started on the same folder."""
    async with serve(functions_dir):
        token = cloud.get_token({"uid": "alice"})
    async with serve(functions_dir):
        payload = cloud.parse_token(token)
    assert payload is not None
    assert payload["uid"] == "alice"


async def test_configured_secret_signs_tokens(serve, functions_dir: Path) -> None:
    """serve(..., secret=...) signs and verifies with that secret."""
    async with serve(functions_dir, secret=SECRET):
        token = cloud.get_token({"uid": "alice"})
        outside = jwt.encode({"uid": "bob"}, SECRET, algorithm="HS256")
        parsed_outside = cloud.parse_token(outside)
    assert jwt.decode(token, SECRET, algorithms=["HS256"])["uid"] == "alice"
    assert parsed_outside == {"uid": "bob"}


async def test_configured_secret_rejects_file_secret_tokens(serve, http, functions_dir) -> None:
    """A token signed with .laf/secret is invalid once a different secret is configured."""
    write_function(functions_dir, "whoami", WHOAMI)
    async with serve(functions_dir):
        token = cloud.get_token({"uid": "alice"})
    async with serve(functions_dir, secret=SECRET) as server:
        parsed = cloud.parse_token(token)
        response = await http.get(
            server.fn_url("whoami"), headers={"Authorization": f"Bearer {token}"}
        )
    assert parsed is None
    assert response.status_code == 401


async def test_configured_secret_creates_no_secret_file(serve, functions_dir: Path) -> None:
    """With a secret configured, nothing is written to .laf/secret."""
    async with serve(functions_dir, secret=SECRET):
        pass
    assert not secret_file(functions_dir).exists()


@pytest.mark.parametrize("where", ["flag", "env"])
def test_short_secret_exits_2_in_one_line(functions_dir: Path, tmp_path: Path, where) -> None:
    """A secret under 32 characters: one line naming --secret and LAF_SECRET, exit code 2."""
    write_function(functions_dir, "hello", "def main(ctx):\n    return 'hi'\n")
    short = "s" * 31
    args = ["serve", "--functions", str(functions_dir), "--port", "0"]
    env = {}
    if where == "flag":
        args += ["--secret", short]
    else:
        env["LAF_SECRET"] = short
    code, output = run_to_exit(*args, env=env, cwd=tmp_path)
    assert code == 2, output
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert "--secret" in lines[0]
    assert "LAF_SECRET" in lines[0]
    assert "Traceback" not in output
