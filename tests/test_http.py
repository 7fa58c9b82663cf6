"""HTTP functions at ``/fn/<name>``: routing, ctx, bodies, responses, errors, settings,
time limits, sync functions, load errors, the interceptor, and the example functions."""

from __future__ import annotations

import ast
import asyncio
import json
import logging
import threading
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from laf_py import cloud

from .conftest import EXAMPLES, wait_until, write_function

pytestmark = pytest.mark.both_servers

# A function that shows ctx.body as a Python literal, so types survive (str vs bytes).
BODY_REPR = "def main(ctx):\n    return repr(ctx.body)\n"


def assert_error(response: httpx.Response, status: int, message: str | None = None) -> dict:
    """``{"error": ..., "request_id": ...}`` with that status and a matching X-Request-Id."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "request_id"}
    assert response.headers["x-request-id"] == body["request_id"]
    if message is not None:
        assert body["error"] == message
    return body


# -- routing -------------------------------------------------------------------------------


async def test_file_is_served_at_its_name(serve, http, functions_dir: Path) -> None:
    """``functions/hello.py`` → ``/fn/hello``."""
    write_function(functions_dir, "hello", "def main(ctx):\n    return 'hi'\n")
    async with serve(functions_dir) as server:
        response = await http.get(server.fn_url("hello"))
    assert response.status_code == 200
    assert response.text == "hi"


async def test_nested_file_is_served_at_its_path(serve, http, functions_dir: Path) -> None:
    """``functions/user/profile.py`` → ``/fn/user/profile``; ctx.function_name says so."""
    write_function(functions_dir, "user/profile", "def main(ctx):\n    return ctx.function_name\n")
    async with serve(functions_dir) as server:
        response = await http.get(server.fn_url("user/profile"))
    assert response.status_code == 200
    assert response.text == "user/profile"


async def test_file_and_folder_with_the_same_name(serve, http, functions_dir: Path) -> None:
    """``user.py`` and ``user/profile.py`` are two functions; neither hides the other."""
    write_function(functions_dir, "user", "def main(ctx):\n    return 'user'\n")
    write_function(functions_dir, "user/profile", "def main(ctx):\n    return 'profile'\n")
    async with serve(functions_dir) as server:
        user = await http.get(server.fn_url("user"))
        profile = await http.get(server.fn_url("user/profile"))
    assert (user.status_code, user.text) == (200, "user")
    assert (profile.status_code, profile.text) == (200, "profile")


async def test_unknown_function_is_404_json(serve, http, functions_dir: Path) -> None:
    """An unknown name answers 404 ``{"error", "request_id"}`` with the id in X-Request-Id."""
    async with serve(functions_dir) as server:
        response = await http.get(server.fn_url("nope"))
    assert_error(response, 404)


async def test_request_id_is_fresh_and_matches_header(serve, http, functions_dir: Path) -> None:
    """ctx.request_id is new on every call and equals the X-Request-Id response header."""
    write_function(functions_dir, "rid", "def main(ctx):\n    return ctx.request_id\n")
    async with serve(functions_dir) as server:
        first = await http.get(server.fn_url("rid"))
        second = await http.get(server.fn_url("rid"))
    assert first.text == first.headers["x-request-id"]
    assert second.text == second.headers["x-request-id"]
    assert first.text and first.text != second.text


# -- ctx -----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE"])
async def test_every_method_works_without_a_setting(serve, http, functions_dir, method) -> None:
    """No ``methods`` setting: every method reaches main, and ctx.method names it."""
    write_function(functions_dir, "m", "def main(ctx):\n    return ctx.method\n")
    async with serve(functions_dir) as server:
        response = await http.request(method, server.fn_url("m"))
    assert response.status_code == 200
    assert response.text == method


async def test_headers_are_case_insensitive(serve, http, functions_dir: Path) -> None:
    """ctx.headers["x-foo"] and ctx.headers["X-Foo"] are the same header."""
    source = """
        def main(ctx):
            return [ctx.headers["x-foo"], ctx.headers["X-Foo"], ctx.headers.get("X-FOO")]
    """
    write_function(functions_dir, "h", source)
    async with serve(functions_dir) as server:
        response = await http.get(server.fn_url("h"), headers={"X-Foo": "bar"})
    assert response.json() == ["bar", "bar", "bar"]


async def test_query_is_a_dict_of_str_last_value_wins(serve, http, functions_dir: Path) -> None:
    """ctx.query is ``dict[str, str]``; a repeated key keeps its last value."""
    source = """
        def main(ctx):
            assert all(isinstance(v, str) for v in ctx.query.values())
            return dict(ctx.query)
    """
    write_function(functions_dir, "q", source)
    async with serve(functions_dir) as server:
        response = await http.get(server.fn_url("q") + "?a=1&a=2&b=&c=x%20y")
    assert response.json() == {"a": "2", "b": "", "c": "x y"}


async def test_http_ctx_has_no_params_user_or_socket(serve, http, functions_dir: Path) -> None:
    """For HTTP: params == {}, user and socket are None, no body → None."""
    source = """
        def main(ctx):
            return {"params": ctx.params, "user": ctx.user,
                    "socket": ctx.socket, "body": ctx.body}
    """
    write_function(functions_dir, "c", source)
    async with serve(functions_dir) as server:
        response = await http.get(server.fn_url("c"))
    assert response.json() == {"params": {}, "user": None, "socket": None, "body": None}


# -- request bodies ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "content", "expected"),
    [
        ("application/json", b'{"a": 1, "b": [true, null]}', {"a": 1, "b": [True, None]}),
        ("application/json", b"[1, 2]", [1, 2]),
        ("application/json; charset=utf-8", '{"é": "ü"}'.encode(), {"é": "ü"}),
        ("application/vnd.api+json", b'{"a": 1}', {"a": 1}),
        ("application/x-www-form-urlencoded", b"name=Ada&x=1&x=2", {"name": "Ada", "x": "2"}),
        ("text/plain", "héllo".encode(), "héllo"),
        ("text/plain; charset=latin-1", "héllo".encode("latin-1"), "héllo"),
        ("application/octet-stream", b"\x00\xff", b"\x00\xff"),
        (None, b"raw", b"raw"),
        ("application/json", b"", None),
        ("text/plain", b"", None),
    ],
    ids=[
        "json-object",
        "json-array",
        "json-charset",
        "plus-json",
        "urlencoded-form",
        "text-utf8",
        "text-latin1",
        "octet-stream",
        "no-content-type",
        "empty-json",
        "empty-text",
    ],
)
async def test_body_is_parsed_by_content_type(
    serve, http, functions_dir, content_type, content, expected
) -> None:
    """JSON → dict/list, form → dict, text → str (its charset), other → bytes, empty → None."""
    write_function(functions_dir, "body", BODY_REPR)
    headers = {"Content-Type": content_type} if content_type else {}
    async with serve(functions_dir) as server:
        response = await http.post(server.fn_url("body"), content=content, headers=headers)
    assert response.status_code == 200, response.text
    assert ast.literal_eval(response.text) == expected
    assert type(ast.literal_eval(response.text)) is type(expected)


async def test_multipart_form_with_a_file(serve, http, functions_dir: Path) -> None:
    """Multipart: a field as str, a file as {"filename", "content_type", "body": bytes}."""
    write_function(functions_dir, "body", BODY_REPR)
    async with serve(functions_dir) as server:
        response = await http.post(
            server.fn_url("body"),
            data={"name": "Ada"},
            files={"upload": ("notes.txt", b"\x00hi", "text/plain")},
        )
    assert response.status_code == 200, response.text
    assert ast.literal_eval(response.text) == {
        "name": "Ada",
        "upload": {"filename": "notes.txt", "content_type": "text/plain", "body": b"\x00hi"},
    }


@pytest.mark.parametrize(
    ("content_type", "content", "message"),
    [
        ("application/json", b'{"a": ', "Invalid JSON body"),
        ("application/problem+json", b"nope", "Invalid JSON body"),
        ("text/plain", b"\xff\xfe bad", "Body is not valid utf-8"),
        ("text/plain; charset=klingon", b"qapla", "Unsupported charset 'klingon'"),
    ],
    ids=["json", "plus-json", "invalid-utf8", "unknown-charset"],
)
async def test_bad_body_is_400(serve, http, functions_dir, content_type, content, message) -> None:
    """A body that does not match its content type is a 400 before main runs."""
    write_function(functions_dir, "body", "def main(ctx):\n    raise AssertionError('ran')\n")
    async with serve(functions_dir) as server:
        response = await http.post(
            server.fn_url("body"), content=content, headers={"Content-Type": content_type}
        )
    body = assert_error(response, 400)
    assert body["error"].startswith(message)


# -- responses -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "status", "content_type", "content"),
    [
        ('{"a": 1}', 200, "application/json", b'{"a":1}'),
        ("[1, 2]", 200, "application/json", b"[1,2]"),
        ('"héllo"', 200, "text/plain; charset=utf-8", "héllo".encode()),
        ('b"\\x00\\x01"', 200, "application/octet-stream", b"\x00\x01"),
        ("None", 204, None, b""),
        ("Response(None, status=200)", 200, None, b""),
        ('Response("a,b", status=201, content_type="text/csv")', 201, "text/csv", b"a,b"),
        ('Response({"id": 1}, status=201)', 201, "application/json", b'{"id":1}'),
    ],
    ids=["dict", "list", "str", "bytes", "none-204", "response-none-200", "csv-201", "json-201"],
)
async def test_return_value_becomes_the_response(
    serve, http, functions_dir, expression, status, content_type, content
) -> None:
    """dict/list → JSON, str → text, bytes → octet-stream, None → 204, Response as told."""
    source = f"from laf_py import Response\n\ndef main(ctx):\n    return {expression}\n"
    write_function(functions_dir, "r", source)
    async with serve(functions_dir) as server:
        response = await http.get(server.fn_url("r"))
    assert response.status_code == status
    assert response.headers.get("content-type") == content_type
    assert response.content == content


async def test_response_headers(serve, http, functions_dir: Path) -> None:
    """``Response(..., headers={...})`` sends those headers."""
    source = """
        from laf_py import Response

        def main(ctx):
            return Response("x", status=201, headers={"X-A": "1"}, content_type="text/csv")
    """
    write_function(functions_dir, "r", source)
    async with serve(functions_dir) as server:
        response = await http.get(server.fn_url("r"))
    assert response.status_code == 201
    assert response.headers["x-a"] == "1"
    assert response.headers["content-type"] == "text/csv"


async def test_ctx_response_sets_status_and_headers(serve, http, functions_dir: Path) -> None:
    """``ctx.response.status`` / ``.headers`` apply to a plain returned dict."""
    source = """
        def main(ctx):
            ctx.response.status = 202
            ctx.response.headers["X-B"] = "2"
            return {"queued": True}
    """
    write_function(functions_dir, "r", source)
    async with serve(functions_dir) as server:
        response = await http.get(server.fn_url("r"))
    assert response.status_code == 202
    assert response.headers["x-b"] == "2"
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"queued": True}


@pytest.mark.parametrize("expression", ["1j", "object()", "{'tags': {object()}}"])
async def test_unsupported_return_type_is_500(
    serve, http, functions_dir, caplog, expression
) -> None:
    """A value with no wire form is a 500, logged with the function name."""
    write_function(functions_dir, "odd", f"def main(ctx):\n    return {expression}\n")
    async with serve(functions_dir) as server:
        response = await http.get(server.fn_url("odd"))
    body = assert_error(response, 500, "Internal Server Error")
    errors = [r for r in caplog.records if r.name == "laf_py" and r.levelno >= logging.ERROR]
    assert any("'odd'" in r.getMessage() and body["request_id"] in r.getMessage() for r in errors)


# -- errors --------------------------------------------------------------------------------


async def test_http_error_sets_status_and_message(serve, http, functions_dir: Path) -> None:
    """``raise HTTPError(418, "teapot")`` → 418 ``{"error": "teapot", "request_id"}``."""
    source = "from laf_py import HTTPError\n\ndef main(ctx):\n    raise HTTPError(418, 'teapot')\n"
    write_function(functions_dir, "tea", source)
    async with serve(functions_dir) as server:
        response = await http.get(server.fn_url("tea"))
    assert_error(response, 418, "teapot")


async def test_http_error_without_message_uses_reason(serve, http, functions_dir: Path) -> None:
    """``HTTPError(404)`` says "Not Found"."""
    source = "from laf_py import HTTPError\n\nasync def main(ctx):\n    raise HTTPError(404)\n"
    write_function(functions_dir, "gone", source)
    async with serve(functions_dir) as server:
        response = await http.get(server.fn_url("gone"))
    assert_error(response, 404, "Not Found")


@pytest.mark.parametrize("kind", ["def", "async def"])
async def test_exception_is_500_and_logged_not_leaked(
    serve, http, functions_dir, caplog, kind
) -> None:
    """Any other exception → bare 500; the log has function, request id and traceback."""
    source = f"""
        def helper():
            raise RuntimeError("db password is hunter2")

        {kind} main(ctx):
            helper()
    """
    write_function(functions_dir, "boom", source)
    async with serve(functions_dir) as server:
        response = await http.get(server.fn_url("boom"))
    body = assert_error(response, 500, "Internal Server Error")
    assert "hunter2" not in response.text
    assert "Traceback" not in response.text
    assert "RuntimeError" not in response.text
    records = [r for r in caplog.records if r.name == "laf_py" and r.exc_info]
    assert len(records) == 1
    record = records[0]
    assert "'boom'" in record.getMessage()
    assert body["request_id"] in record.getMessage()
    assert "Traceback" in caplog.text
    assert "in helper" in caplog.text
    assert "hunter2" in caplog.text


# -- methods setting -----------------------------------------------------------------------


async def test_methods_setting_refuses_others_with_405(serve, http, functions_dir: Path) -> None:
    """``methods = ["POST"]``: GET → 405 with ``Allow: POST``; POST works."""
    source = "methods = ['POST']\n\ndef main(ctx):\n    return 'posted'\n"
    write_function(functions_dir, "only_post", source)
    async with serve(functions_dir) as server:
        get = await http.get(server.fn_url("only_post"))
        post = await http.post(server.fn_url("only_post"))
    assert_error(get, 405)
    assert get.headers["allow"] == "POST"
    assert (post.status_code, post.text) == (200, "posted")


async def test_lowercase_methods_setting_works(serve, http, functions_dir: Path) -> None:
    """``methods = ["get", "post"]`` means GET and POST."""
    source = "methods = ['get', 'post']\n\ndef main(ctx):\n    return ctx.method\n"
    write_function(functions_dir, "lower", source)
    async with serve(functions_dir) as server:
        get = await http.get(server.fn_url("lower"))
        post = await http.post(server.fn_url("lower"))
        put = await http.put(server.fn_url("lower"))
    assert (get.status_code, get.text) == (200, "GET")
    assert (post.status_code, post.text) == (200, "POST")
    assert_error(put, 405)
    assert put.headers["allow"] == "GET, HEAD, POST"  # HEAD comes with GET


# -- time limits ---------------------------------------------------------------------------

SLOW_ASYNC = """
    import asyncio

    {setting}

    async def main(ctx):
        if ctx.query.get("fast"):
            return "fast"
        await asyncio.sleep(30)
        return "slow"
"""


async def test_timeout_setting_answers_504(serve, http, functions_dir: Path) -> None:
    """``timeout = 0.2``: a call past it is 504; the next calls still work."""
    write_function(functions_dir, "slow", SLOW_ASYNC.format(setting="timeout = 0.2"))
    write_function(functions_dir, "hello", "async def main(ctx):\n    return 'hi'\n")
    async with serve(functions_dir) as server:
        started = time.monotonic()
        response = await http.get(server.fn_url("slow"))
        elapsed = time.monotonic() - started
        assert_error(response, 504, "Function 'slow' timed out after 0.2s")
        assert elapsed < 5
        assert (await http.get(server.fn_url("hello"))).text == "hi"
        assert (await http.get(server.fn_url("slow"), params={"fast": "1"})).text == "fast"


async def test_server_default_timeout_applies(serve, http, functions_dir: Path) -> None:
    """``serve(folder, timeout=0.2)`` limits a function that sets no timeout."""
    write_function(functions_dir, "slow", SLOW_ASYNC.format(setting=""))
    async with serve(functions_dir, timeout=0.2) as server:
        response = await http.get(server.fn_url("slow"))
    assert_error(response, 504, "Function 'slow' timed out after 0.2s")


async def test_file_timeout_overrides_server_default(serve, http, functions_dir: Path) -> None:
    """A file's own ``timeout`` wins over the server default."""
    write_function(functions_dir, "slow", SLOW_ASYNC.format(setting="timeout = 0.2"))
    async with serve(functions_dir, timeout=30) as server:
        response = await http.get(server.fn_url("slow"))
    assert_error(response, 504, "Function 'slow' timed out after 0.2s")


async def test_sync_function_over_its_timeout_is_504(serve, http, functions_dir: Path) -> None:
    """A plain def past its limit still answers 504 at once; its thread finishes later."""
    source = """
        from laf_py import cloud

        timeout = 0.2

        def main(ctx):
            cloud.shared["gate"].wait(10)
            return "late"
    """
    write_function(functions_dir, "stuck", source)
    gate = threading.Event()
    async with serve(functions_dir) as server:
        cloud.shared["gate"] = gate
        try:
            started = time.monotonic()
            response = await http.get(server.fn_url("stuck"))
            assert time.monotonic() - started < 5
        finally:
            gate.set()
    assert_error(response, 504, "Function 'stuck' timed out after 0.2s")


# -- sync functions ------------------------------------------------------------------------


async def test_sync_function_runs_in_the_pool(serve, http, functions_dir: Path) -> None:
    """A plain ``def main`` runs on a ``laf-fn`` worker thread, not the loop's thread."""
    source = "import threading\n\ndef main(ctx):\n    return threading.current_thread().name\n"
    write_function(functions_dir, "where", source)
    async with serve(functions_dir) as server:
        response = await http.get(server.fn_url("where"))
    assert response.text.startswith("laf-fn")
    assert response.text != threading.current_thread().name


async def test_blocking_sync_function_does_not_stall_others(
    serve, http, functions_dir: Path
) -> None:
    """While one plain def blocks, another call is answered."""
    source = """
        from laf_py import cloud

        def main(ctx):
            cloud.shared["entered"] = True
            return {"released": cloud.shared["gate"].wait(5)}
    """
    write_function(functions_dir, "block", source)
    write_function(functions_dir, "ping", "def main(ctx):\n    return 'pong'\n")
    gate = threading.Event()
    async with serve(functions_dir) as server:
        cloud.shared["gate"] = gate
        blocked = asyncio.ensure_future(http.get(server.fn_url("block")))
        try:
            await wait_until(lambda: cloud.shared.get("entered"))
            ping = await http.get(server.fn_url("ping"))
            assert (ping.status_code, ping.text) == (200, "pong")
            assert not blocked.done()
        finally:
            gate.set()
        response = await blocked
    assert response.json() == {"released": True}


async def test_plain_def_returning_a_coroutine_is_awaited(serve, http, functions_dir: Path) -> None:
    """``def main(ctx): return some_coroutine()`` answers with what it resolves to."""
    source = """
        import asyncio

        async def later():
            await asyncio.sleep(0)
            return {"awaited": True}

        def main(ctx):
            return later()
    """
    write_function(functions_dir, "co", source)
    async with serve(functions_dir) as server:
        response = await http.get(server.fn_url("co"))
    assert response.status_code == 200
    assert response.json() == {"awaited": True}


# -- load errors ---------------------------------------------------------------------------

LOAD_FAILED = "Function 'broken' failed to load; see server log"


@pytest.mark.parametrize(
    ("source", "logged"),
    [
        ("x = 1\n\ndef main(ctx)\n    return 1\n", "broken.py, line 3"),
        ("import os\nimport laf_py_no_such_module\n", "broken.py, line 2"),
        ("x = 1\ny = 1 / 0\n", "broken.py, line 2"),
    ],
    ids=["syntax-error", "import-error", "error-at-import"],
)
async def test_file_that_fails_to_import(serve, http, functions_dir, caplog, source, logged):
    """A file that cannot be imported answers 500, and the log names file and line."""
    (functions_dir / "broken.py").write_text(source)
    async with serve(functions_dir) as server:
        response = await http.get(server.fn_url("broken"))
    assert_error(response, 500, LOAD_FAILED)
    assert "laf_py_no_such_module" not in response.text
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(logged in message for message in errors), errors


@pytest.mark.parametrize(
    ("source", "logged"),
    [
        ("def helper(ctx):\n    return 1\n", "defines no main"),
        ("main = 42\n", "defines no main"),
        ("methods = 'GET'\n\ndef main(ctx):\n    return 1\n", "methods must be"),
        ("methods = ['GET', 1]\n\ndef main(ctx):\n    return 1\n", "methods must be"),
        ("timeout = -1\n\ndef main(ctx):\n    return 1\n", "timeout must be"),
        ("timeout = '5'\n\ndef main(ctx):\n    return 1\n", "timeout must be"),
    ],
)
async def test_file_with_a_bad_definition(serve, http, functions_dir, caplog, source, logged):
    """No main, or a bad ``methods``/``timeout`` setting: 500, with the reason in the log."""
    (functions_dir / "broken.py").write_text(source)
    async with serve(functions_dir) as server:
        response = await http.get(server.fn_url("broken"))
    assert_error(response, 500, LOAD_FAILED)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(logged in m and "broken.py" in m for m in errors), errors


async def test_other_functions_work_beside_a_broken_one(serve, http, functions_dir) -> None:
    """One broken file fails alone."""
    (functions_dir / "broken.py").write_text("def main(ctx)\n")
    write_function(functions_dir, "hello", "def main(ctx):\n    return 'hi'\n")
    async with serve(functions_dir) as server:
        broken = await http.get(server.fn_url("broken"))
        hello = await http.get(server.fn_url("hello"))
    assert broken.status_code == 500
    assert (hello.status_code, hello.text) == (200, "hi")


# -- interceptor ---------------------------------------------------------------------------

TARGET = """
    from laf_py import cloud

    async def main(ctx):
        cloud.shared["ran"] = True
        return {"name": ctx.function_name}
"""


async def test_interceptor_wraps_the_function(serve, http, functions_dir: Path) -> None:
    """The interceptor sees ctx.function_name and can add to the result of ``next``."""
    interceptor = """
        async def main(ctx, next):
            result = await next(ctx)
            return {**result, "via": "interceptor:" + ctx.function_name}
    """
    write_function(functions_dir, "__interceptor__", interceptor)
    write_function(functions_dir, "user/profile", TARGET)
    async with serve(functions_dir) as server:
        response = await http.get(server.fn_url("user/profile"))
    assert response.json() == {"name": "user/profile", "via": "interceptor:user/profile"}


async def test_interceptor_can_answer_without_next(serve, http, functions_dir: Path) -> None:
    """Not calling ``next`` and returning a value: that value is the response."""
    write_function(
        functions_dir, "__interceptor__", "async def main(ctx, next):\n    return 'no'\n"
    )
    write_function(functions_dir, "target", TARGET)
    async with serve(functions_dir) as server:
        response = await http.get(server.fn_url("target"))
        assert not cloud.shared.has("ran")
    assert (response.status_code, response.text) == (200, "no")


async def test_interceptor_http_error_rejects(serve, http, functions_dir: Path) -> None:
    """``raise HTTPError(401, "login first")`` in the interceptor → 401; main never runs."""
    interceptor = """
        from laf_py import HTTPError

        async def main(ctx, next):
            if ctx.headers.get("authorization") != "yes":
                raise HTTPError(401, "login first")
            return await next(ctx)
    """
    write_function(functions_dir, "__interceptor__", interceptor)
    write_function(functions_dir, "target", TARGET)
    async with serve(functions_dir) as server:
        refused = await http.get(server.fn_url("target"))
        assert not cloud.shared.has("ran")
        allowed = await http.get(server.fn_url("target"), headers={"Authorization": "yes"})
    assert_error(refused, 401, "login first")
    assert allowed.json() == {"name": "target"}


async def test_sync_interceptor(serve, http, functions_dir: Path) -> None:
    """A plain-def interceptor gets a blocking ``next`` that returns the result."""
    interceptor = """
        import threading

        def main(ctx, next):
            result = next(ctx)
            return {**result, "thread": threading.current_thread().name}
    """
    write_function(functions_dir, "__interceptor__", interceptor)
    write_function(functions_dir, "target", TARGET)
    async with serve(functions_dir) as server:
        response = await http.get(server.fn_url("target"))
    body = response.json()
    assert body["name"] == "target"
    assert body["thread"].startswith("laf-fn")


async def test_broken_interceptor_fails_closed(serve, http, functions_dir: Path) -> None:
    """An interceptor that cannot load makes every HTTP function answer 500."""
    (functions_dir / "__interceptor__.py").write_text("async def main(ctx, next)\n")
    write_function(functions_dir, "target", TARGET)
    write_function(functions_dir, "user/profile", TARGET)
    async with serve(functions_dir) as server:
        for name in ("target", "user/profile"):
            response = await http.get(server.fn_url(name))
            assert_error(response, 500, "Interceptor failed to load; see server log")
        assert not cloud.shared.has("ran")


# -- health, index page and unknown routes -------------------------------------------------


async def test_healthz(serve, http, functions_dir: Path) -> None:
    """``GET /_/healthz`` → 200 ``{"status": "ok", ...}``."""
    async with serve(functions_dir) as server:
        response = await http.get(server.url + "/_/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


async def test_index_page(serve, http) -> None:
    """The examples' ``GET /`` is their public/index.html, a page that talks to
    ``/__websocket__`` (tests/test_static.py: the rules of public/)."""
    async with serve(EXAMPLES) as server:
        response = await http.get(server.url + "/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "__websocket__" in response.text


async def test_unknown_route_is_404_json(serve, http, functions_dir: Path) -> None:
    """Outside ``/fn/``, an unknown path is a JSON 404 too."""
    async with serve(functions_dir) as server:
        response = await http.get(server.url + "/nope")
    assert_error(response, 404)


# -- the example functions -----------------------------------------------------------------


async def test_example_hello(serve, http) -> None:
    async with serve(EXAMPLES) as server:
        response = await http.get(server.fn_url("hello"))
    assert (response.status_code, response.text) == (200, "Hello, world!")


async def test_example_echo(serve, http) -> None:
    async with serve(EXAMPLES) as server:
        response = await http.post(server.fn_url("echo") + "?a=1", json={"x": [1, "two"]})
    body = response.json()
    assert response.status_code == 200
    assert body["method"] == "POST"
    assert body["query"] == {"a": "1"}
    assert body["body"] == {"x": [1, "two"]}
    assert body["request_id"] == response.headers["x-request-id"]


async def test_example_time_sync(serve, http) -> None:
    async with serve(EXAMPLES) as server:
        response = await http.get(server.fn_url("time_sync"))
    assert response.status_code == 200
    assert datetime.fromisoformat(response.json()["now"]).utcoffset() is not None


@pytest.mark.parametrize(
    ("method", "name", "payload", "status", "message"),
    [
        ("POST", "chat/send", {}, 400, "text (a string) is required"),
        (
            "POST",
            "push",
            {"userID": "nobody", "message": "hi"},
            404,
            "user nobody is not connected",
        ),
        ("GET", "admin/stats", None, 403, "forbidden"),
    ],
)
async def test_example_errors(serve, http, monkeypatch, method, name, payload, status, message):
    """The examples' documented refusals."""
    monkeypatch.setenv("LAF_ADMIN_TOKEN", "s3cret")
    async with serve(EXAMPLES) as server:
        response = await http.request(
            method,
            server.fn_url(name),
            content=json.dumps(payload) if payload is not None else None,
            headers={"Content-Type": "application/json"} if payload is not None else {},
        )
    assert_error(response, status, message)


# -- HEAD and trailing slashes -------------------------------------------------------------

# Records every call's ctx.method in cloud.shared["calls"], answers with a body and a header.
RECORDS_CALLS = """
    from laf_py import Response, cloud

    {setting}

    def main(ctx):
        cloud.shared.setdefault("calls", []).append(ctx.method)
        return Response({{"hello": "world"}}, headers={{"X-Ran": "yes"}})
"""


@pytest.mark.parametrize(
    ("setting", "seen"),
    [
        pytest.param("", "GET", id="no-methods-setting"),
        pytest.param("methods = ['GET']", "GET", id="get-only"),
        pytest.param("methods = ['GET', 'HEAD']", "HEAD", id="head-listed"),
    ],
)
async def test_head_answers_like_get_without_a_body(
    serve, http, functions_dir: Path, setting: str, seen: str
) -> None:
    """HEAD of a function that allows GET: the function runs (as a GET, unless it lists HEAD
    itself), and the answer has the GET's status and headers, Content-Length of the GET body
    included, and no body."""
    write_function(functions_dir, "page", RECORDS_CALLS.format(setting=setting))
    async with serve(functions_dir) as server:
        get = await http.get(server.fn_url("page"))
        head = await http.head(server.fn_url("page"))
        calls = list(cloud.shared.get("calls", []))
    assert calls == ["GET", seen]
    assert (get.status_code, head.status_code) == (200, 200)
    assert head.content == b""
    assert head.headers["content-length"] == str(len(get.content)) == get.headers["content-length"]
    for header in ("content-type", "x-ran"):
        assert head.headers[header] == get.headers[header]
    assert head.headers["x-request-id"] != get.headers["x-request-id"]


async def test_head_on_a_function_without_get_is_405(serve, http, functions_dir: Path) -> None:
    """``methods = ["POST"]``: HEAD → 405 with ``Allow: POST``, no body, the function not run."""
    write_function(functions_dir, "only_post", RECORDS_CALLS.format(setting="methods = ['POST']"))
    async with serve(functions_dir) as server:
        head = await http.head(server.fn_url("only_post"))
        calls = cloud.shared.get("calls")
    assert head.status_code == 405
    assert head.headers["allow"] == "POST"
    assert head.headers["content-type"] == "application/json"
    assert head.content == b""
    assert calls is None


async def test_head_of_an_unknown_function_is_404(serve, http, functions_dir: Path) -> None:
    async with serve(functions_dir) as server:
        head = await http.head(server.fn_url("nope"))
    assert (head.status_code, head.content) == (404, b"")


@pytest.mark.parametrize("name", ["echo", "user/profile"])
async def test_trailing_slash_serves_the_function(serve, http, functions_dir, name) -> None:
    """``/fn/<name>/`` is ``/fn/<name>``, served (no redirect): a GET, and a POST whose JSON
    body arrives intact."""
    source = """
        def main(ctx):
            return {"name": ctx.function_name, "method": ctx.method, "body": ctx.body}
    """
    write_function(functions_dir, name, source)
    async with serve(functions_dir) as server:
        get = await http.get(server.fn_url(name) + "/")
        post = await http.post(server.fn_url(name) + "/", json={"a": [1, 2]})
    assert get.status_code == 200, get.text
    assert get.json() == {"name": name, "method": "GET", "body": None}
    assert post.status_code == 200, post.text
    assert post.json() == {"name": name, "method": "POST", "body": {"a": [1, 2]}}


async def test_fn_alone_lists_the_functions(serve, http, functions_dir: Path) -> None:
    """``/fn/`` names no function: it lists the public ones (sorted; reserved names, helpers
    and files that fail to load apart), so a developer sees what to call."""
    write_function(functions_dir, "hello", "def main(ctx):\n    return 'hi'\n")
    write_function(functions_dir, "user/profile", "def main(ctx):\n    return 'me'\n")
    write_function(functions_dir, "_helper", "X = 1\n")
    write_function(functions_dir, "__websocket__", "def main(ctx):\n    pass\n")
    write_function(functions_dir, "broken", "def main(ctx)\n")
    async with serve(functions_dir) as server:
        responses = [await http.get(server.url + path) for path in ("/fn/", "/fn//")]
        head = await http.head(server.url + "/fn/")
        post = await http.post(server.url + "/fn/", json={})
        missing = await http.get(server.fn_url("nope") + "/")
    for response in responses:
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/json")
        assert response.json() == {"functions": ["hello", "user/profile"], "failed": ["broken"]}
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == responses[0].headers["content-length"]
    assert_error(post, 405, "Method POST not allowed")
    assert post.headers["allow"] == "GET, HEAD"
    assert_error(missing, 404, "Function 'nope' not found")


async def test_fn_alone_without_functions_says_where_they_go(
    serve, http, functions_dir: Path
) -> None:
    async with serve(functions_dir) as server:
        response = await http.get(server.url + "/fn/")
    assert response.status_code == 200, response.text
    folder = functions_dir.resolve()
    assert response.json() == {
        "functions": [],
        "message": f"No functions yet: add a .py file to {folder} (each is served at /fn/<name>)",
    }
