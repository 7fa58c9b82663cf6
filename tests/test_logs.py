"""Function logs: every line a function writes is tagged with its function and request id in
the server log, kept in ``laf_logs``, and read back with ``laf-py logs`` and ``/_/api/logs``."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import websockets

from laf_py.logs import store as log_store
from laf_py.logs.lines import parse_since

from .conftest import (
    CliServer,
    _postgres_database,
    _reset_postgres,
    run_to_exit,
    start_cli,
    wait_until,
    write_function,
)

pytestmark = pytest.mark.both_servers

CHATTY = """
import asyncio, logging, sys, threading

log = logging.getLogger(__name__)


async def main(ctx):
    print("printed", ctx.query.get("n"))
    print("to stderr", file=sys.stderr)
    log.warning("logged by the module")
    logging.getLogger("some.library").info("logged by a library")

    async def later():
        print("from a task the call started")

    await asyncio.create_task(later())
    sys.stdout.write("no newline at the end")
    return {"ok": True}
"""

PLAIN = """
def main(ctx):
    print("from a plain def thread")
    raise ValueError("the plain def failed")
"""

SOCKET = """
def main(ctx):
    print("socket event", ctx.method)
    if ctx.method == "WebSocket:message":
        ctx.socket.send("echo")
"""

INIT = """
print("init ran")

def main(ctx):
    print("__init__ says hello")
"""


@pytest.fixture(autouse=True)
def _info_level(caplog: pytest.LogCaptureFixture) -> None:
    """In-process servers log through this process's root logger: at INFO, as the CLI does."""
    caplog.set_level("INFO")


def _app(tmp_path: Path) -> Path:
    functions = tmp_path / "functions"
    functions.mkdir()
    write_function(functions, "chatty", CHATTY)
    write_function(functions, "plain", PLAIN)
    write_function(functions, "__websocket__", SOCKET)
    write_function(functions, "__init__", INIT)
    return tmp_path


def _lines_with(log: str, text: str) -> list[str]:
    return [line for line in log.splitlines() if text in line]


async def test_every_line_a_call_writes_names_its_function_and_request(
    cli_server, tmp_path: Path
) -> None:
    server: CliServer = cli_server(cwd=_app(tmp_path))
    async with httpx.AsyncClient(timeout=10) as http:
        answer = await http.get(f"{server.url}/fn/chatty", params={"n": "7"})
        failed = await http.get(f"{server.url}/fn/plain")
    rid = answer.headers["x-request-id"]
    plain_rid = failed.headers["x-request-id"]
    async with websockets.connect(server.ws_url) as ws:
        await ws.send("hi")
        assert await ws.recv() == "echo"
    expected = [
        f"INFO    chatty {rid}: printed 7",
        f"WARNING chatty {rid}: to stderr",
        f"WARNING chatty {rid}: logged by the module",
        f"INFO    chatty {rid}: logged by a library",
        f"INFO    chatty {rid}: from a task the call started",
        f"INFO    chatty {rid}: no newline at the end",
        f"INFO    plain {plain_rid}: from a plain def thread",
        f"ERROR   plain {plain_rid}: function 'plain' (request {plain_rid}) raised ValueError",
        "INFO    __init__ ",
        "__websocket__ ",
    ]
    await wait_until(lambda: all(e in server.log for e in [*expected[:-2], "socket event"]))
    for text in expected:
        assert text in server.log, text
    # The access line of the call carries the same id.
    assert _lines_with(server.log, f"tornado.access {rid}: 200 GET /fn/chatty?n=7")
    # Each WebSocket event is a call of its own: three events, three request ids.
    events = _lines_with(server.log, ": socket event WebSocket:")
    await wait_until(lambda: len(_lines_with(server.log, ": socket event WebSocket:")) == 3)
    events = _lines_with(server.log, ": socket event WebSocket:")
    ids = {re.search(r"__websocket__ (\w+):", line).group(1) for line in events}  # type: ignore[union-attr]
    assert len(ids) == 3
    # What functions print never reaches the raw stdout untagged.
    assert not _lines_with(server.log, "printed 7")[0].startswith("printed")


async def test_json_log_format_is_one_object_per_line(cli_server, tmp_path: Path) -> None:
    server = cli_server("--log-format", "json", cwd=_app(tmp_path))
    async with httpx.AsyncClient(timeout=10) as http:
        rid = (await http.get(f"{server.url}/fn/plain")).headers["x-request-id"]
    await wait_until(
        lambda: "the plain def failed" in server.log and "tornado.access" in server.log
    )
    entries = [json.loads(line) for line in server.log.splitlines() if line.startswith("{")]
    printed = [e for e in entries if e.get("message") == "from a plain def thread"]
    assert printed and printed[0]["function"] == "plain" and printed[0]["request_id"] == rid
    assert printed[0]["level"] == "INFO" and printed[0]["time"].endswith("Z")
    error = next((e for e in entries if "raised ValueError" in e["message"]), None)
    assert error is not None, server.log
    assert "the plain def failed" in error["exception"] and error["request_id"] == rid
    access = next(e for e in entries if e["logger"] == "tornado.access")
    assert access["request_id"] == rid
    # Start-up lines, the banner included, are JSON too: nothing else is on the stream.
    assert all(line.startswith("{") for line in server.log.splitlines())


async def _call(url: str, name: str, **params: str) -> str:
    async with httpx.AsyncClient(timeout=10) as http:
        return (await http.get(f"{url}/fn/{name}", params=params)).headers["x-request-id"]


async def test_laf_py_logs_reads_what_the_server_kept(cli_server, tmp_path: Path) -> None:
    app = _app(tmp_path)
    server = cli_server(cwd=app)
    rid = await _call(server.url, "chatty", n="1")
    other = await _call(server.url, "plain")

    def logs(*args: str) -> str:
        code, output = run_to_exit("logs", *args, cwd=app)
        assert code == 0, output
        return output

    await wait_until(lambda: "from a task the call started" in logs("--request", rid))
    one_call = logs("--request", rid)
    assert "printed 1" in one_call and "from a plain def thread" not in one_call
    assert re.search(
        rf"^\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{{3}} INFO    chatty {rid}: ", one_call, re.M
    )
    await wait_until(lambda: "raised ValueError" in logs("--function", "plain"))
    plain = logs("--function", "plain")
    assert other in plain and "chatty" not in plain
    assert "Traceback" in plain and "the plain def failed" in plain
    warnings = logs("--level", "warning", "--request", rid)
    assert "to stderr" in warnings and "printed 1" not in warnings
    assert logs("--since", "2026-01-01T00:00", "--request", rid).count(rid) >= 6
    future = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() + 3600))
    assert logs("--since", future).strip() == "no function log lines match (yet)"
    entries = [json.loads(line) for line in logs("--json", "--request", rid).splitlines()]
    assert {e["function"] for e in entries} == {"chatty"}
    assert entries[0]["message"] == "printed 1" and entries[0]["level"] == "INFO"
    code, output = run_to_exit("logs", "--level", "loud", cwd=app)
    assert code == 2 and "unknown level 'loud'" in output


def test_laf_py_logs_says_when_there_is_nothing_to_read(tmp_path: Path) -> None:
    code, output = run_to_exit("logs", cwd=tmp_path)
    assert code == 1 and "no function logs here" in output and "laf.db does not exist" in output


async def test_laf_py_logs_follow_shows_new_lines_as_they_come(cli_server, tmp_path: Path) -> None:
    app = _app(tmp_path)
    server = cli_server(cwd=app)
    follower = start_cli("logs", "--follow", "--function", "chatty", cwd=app)
    seen: list[str] = []
    assert follower.stdout is not None
    stream = follower.stdout
    threading.Thread(target=lambda: seen.extend(stream), daemon=True).start()
    try:
        for n in ("first", "second"):
            wanted = f"{await _call(server.url, 'chatty', n=n)}: printed {n}"
            await wait_until(lambda w=wanted: any(w in line for line in seen), 15)
        assert not any("from a plain def thread" in line for line in seen)
    finally:
        follower.terminate()
        follower.wait(10)


async def test_the_api_has_a_calls_lines_as_soon_as_it_answered(serve, functions_dir, http) -> None:
    write_function(functions_dir, "chatty", CHATTY)
    async with serve(functions_dir) as server:
        rid = (await http.get(f"{server.url}/fn/chatty", params={"n": "2"})).headers["x-request-id"]
        answer = await http.get(f"{server.url}/_/api/logs", params={"request": rid})
        assert answer.status_code == 200
        lines = answer.json()["lines"]
        assert [line["message"] for line in lines][:1] == ["printed 2"]
        assert {line["request_id"] for line in lines} == {rid}
        assert {line["function"] for line in lines} == {"chatty"}
        assert lines[1]["level"] == "WARNING" and isinstance(lines[0]["time"], float)
        bad = await http.get(f"{server.url}/_/api/logs", params={"level": "loud"})
        assert bad.status_code == 400 and "unknown level" in bad.json()["error"]


async def test_the_log_stream_sends_new_lines_as_events(serve, functions_dir) -> None:
    write_function(functions_dir, "chatty", CHATTY)
    async with serve(functions_dir) as server:
        async with httpx.AsyncClient(timeout=20) as http:
            url = f"{server.url}/_/api/logs/stream"
            async with http.stream("GET", url, params={"function": "chatty"}) as stream:
                assert stream.headers["content-type"].startswith("text/event-stream")
                rid = (await http.get(f"{server.url}/fn/chatty", params={"n": "3"})).headers[
                    "x-request-id"
                ]
                events: list[dict[str, object]] = []
                last_id = ""
                async for line in stream.aiter_lines():
                    if line.startswith("id: "):
                        last_id = line[4:]
                    if line.startswith("data: "):
                        events.append(json.loads(line[6:]))
                        if events[-1]["message"] == "no newline at the end":
                            break
        assert events[0]["message"] == "printed 3" and events[0]["request_id"] == rid
        assert last_id == str(events[-1]["id"])
        # A reconnecting reader gets what it missed after its last id first.
        rid2 = (await http_get(f"{server.url}/fn/chatty", n="4")).headers["x-request-id"]
        async with httpx.AsyncClient(timeout=20) as http:
            headers = {"Last-Event-ID": last_id}
            async with http.stream("GET", url, headers=headers) as stream:
                async for line in stream.aiter_lines():
                    if line.startswith("data: "):
                        missed = json.loads(line[6:])
                        break
        assert missed["request_id"] == rid2 and missed["message"] == "printed 4"


async def http_get(url: str, **params: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.get(url, params=params)


async def test_zero_retention_keeps_nothing_but_still_tags_the_log(
    serve, functions_dir, http
) -> None:
    write_function(functions_dir, "chatty", CHATTY)
    async with serve(functions_dir, log_retention=0) as server:
        assert server.server.runtime.logs is None
        assert (await http.get(f"{server.url}/fn/chatty")).status_code == 200
        answer = await http.get(f"{server.url}/_/api/logs")
        assert answer.status_code == 404 and "--log-retention 0" in answer.json()["error"]


async def test_admin_token_guards_the_log_endpoints(serve, functions_dir, http) -> None:
    token = "a-long-enough-admin-token"
    async with serve(functions_dir, admin_token=token) as server:
        for path in ("/_/api/logs", "/_/api/logs/stream"):
            refused = await http.get(f"{server.url}{path}")
            assert refused.status_code == 401, path
            assert refused.headers["www-authenticate"].startswith("Bearer")
            wrong = await http.get(f"{server.url}{path}", headers={"Authorization": "Bearer no"})
            assert wrong.status_code == 401
        good = await http.get(
            f"{server.url}/_/api/logs", headers={"Authorization": f"Bearer {token}"}
        )
        assert good.status_code == 200 and "access-control-allow-origin" not in good.headers
        cross = await http.get(
            f"{server.url}/_/api/logs",
            headers={"Authorization": f"Bearer {token}", "Origin": "https://evil.example"},
        )
        assert cross.status_code == 403


async def test_a_chatty_function_is_bounded_and_the_server_says_so(
    serve, functions_dir, http, caplog: pytest.LogCaptureFixture
) -> None:
    write_function(
        functions_dir,
        "flood",
        "def main(ctx):\n    for i in range(3000):\n        print('line', i)\n",
    )
    async with serve(functions_dir) as server:
        rid = (await http.get(f"{server.url}/fn/flood")).headers["x-request-id"]
        store = server.server.runtime.logs
        assert store is not None
        lines = await store.query(request_id=rid, limit=10_000)
        # 1000 a second per function: the call spans one second, or two at most.
        assert 1000 <= len(lines) <= 2000, len(lines)
        store._last_report = 0.0  # say it now rather than after the interval
        await store.flush()
    said = [r.getMessage() for r in caplog.records if "not kept in the database" in r.getMessage()]
    assert said and "'flood': " in said[0]


async def test_sweep_drops_old_lines_and_keeps_each_functions_newest(
    serve, functions_dir, http, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_function(functions_dir, "talk", "def main(ctx):\n    print('said', ctx.query['n'])\n")
    monkeypatch.setattr(log_store, "MAX_LINES_PER_FUNCTION", 3)

    async def no_background_sweeps(self: log_store.LogStore) -> None:
        await asyncio.Event().wait()  # the server's own sweep at start-up would race this one

    monkeypatch.setattr(log_store.LogStore, "_sweep_forever", no_background_sweeps)
    async with serve(functions_dir, log_retention=3600) as server:
        store = server.server.runtime.logs
        assert store is not None
        for n in range(5):
            await http.get(f"{server.url}/fn/talk", params={"n": str(n)})
        await store.flush()
        assert await store.sweep() == 2
        kept = [line.message for line in await store.query(function="talk")]
        assert kept == ["said 2", "said 3", "said 4"]
        assert await store.sweep(now=time.time() + 3601) == 3  # past the retention
        assert await store.query(function="talk") == []


def test_since_reads_durations_and_iso_times() -> None:
    assert parse_since("10m", now=1000.0) == 400.0
    assert parse_since("2h", now=10_000.0) == 10_000.0 - 7200
    assert parse_since("2026-12-02T17:00:00Z") == parse_since("2026-12-02T17:00")
    with pytest.raises(ValueError, match="cannot read"):
        parse_since("yesterday")


@pytest.fixture
def postgres_url() -> str:
    """A clean schema on the real PostgreSQL (fails under LAF_REQUIRE_SERVICES=1 without it)."""
    dsn = _postgres_database()
    _reset_postgres(dsn)
    return dsn.replace("postgresql://", "postgresql+asyncpg://", 1)


async def test_two_nodes_on_postgresql_write_one_table(
    cli_server, tmp_path: Path, postgres_url: str
) -> None:
    database_url = postgres_url
    one, two = tmp_path / "one", tmp_path / "two"
    for app in (one, two):
        app.mkdir()
        _app(app)
    url = ["--database-url", database_url]
    first, second = cli_server(*url, cwd=one), cli_server(*url, cwd=two)
    rid1 = await _call(first.url, "chatty", n="one")
    rid2 = await _call(second.url, "chatty", n="two")

    def both() -> str:
        code, output = run_to_exit("logs", "--function", "chatty", *url, cwd=tmp_path)
        assert code == 0, output
        return output

    await wait_until(lambda: f"{rid1}: printed one" in both() and f"{rid2}: printed two" in both())
    nodes = {
        json.loads(x)["node"]
        for x in run_to_exit("logs", "--json", *url, cwd=tmp_path)[1].splitlines()
    }
    assert len(nodes) >= 2


def test_print_outside_any_call_goes_to_stdout_untouched(tmp_path: Path) -> None:
    """The wrapped stdout passes other writes through (a server's own prints, a REPL)."""
    script = (
        "from laf_py.logs.capture import capture_output, release_output\n"
        "import sys\n"
        "capture_output(); print('plain output'); sys.stdout.flush(); release_output()\n"
        "print('restored', type(sys.stdout).__name__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, env=os.environ
    )
    assert done.stdout == "plain output\nrestored TextIOWrapper\n", done.stderr


async def test_a_pause_in_printing_keeps_the_partial_line_for_its_call(
    serve, functions_dir, http
) -> None:
    """Two calls writing half lines at once: each line stays whole and in its own call."""
    write_function(
        functions_dir,
        "half",
        "import asyncio, sys\n"
        "async def main(ctx):\n"
        "    sys.stdout.write('start of ' + ctx.query['who'])\n"
        "    await asyncio.sleep(0.05)\n"
        "    sys.stdout.write(' and its end\\n')\n",
    )
    async with serve(functions_dir) as server:
        a, b = await asyncio.gather(
            http.get(f"{server.url}/fn/half", params={"who": "a"}),
            http.get(f"{server.url}/fn/half", params={"who": "b"}),
        )
        store = server.server.runtime.logs
        assert store is not None
        for answer, who in ((a, "a"), (b, "b")):
            lines = await store.query(request_id=answer.headers["x-request-id"])
            assert [line.message for line in lines] == [f"start of {who} and its end"]


async def test_a_reader_that_connects_just_after_a_call_still_gets_its_lines(
    serve, functions_dir
) -> None:
    """The writer batches lines for a second: a line made just before a reader
    connected reaches the table after that, and must still be sent to it."""
    write_function(functions_dir, "chatty", CHATTY)
    async with serve(functions_dir) as server, httpx.AsyncClient(timeout=20) as http:
        rid = (await http.get(f"{server.url}/fn/chatty", params={"n": "5"})).headers["x-request-id"]
        url = f"{server.url}/_/api/logs/stream"
        async with http.stream("GET", url, params={"request": rid}) as stream:
            async for line in stream.aiter_lines():
                if line.startswith("data: "):
                    first = json.loads(line[6:])
                    break
        assert first["message"] == "printed 5"


async def test_what_a_streaming_generator_prints_is_a_line_of_its_call(
    serve, functions_dir, http
) -> None:
    """The generator runs after main returned: async ones on the loop, plain ones in threads."""
    write_function(
        functions_dir,
        "ticker",
        "async def main(ctx):\n"
        "    async def items():\n"
        "        for n in range(2):\n"
        "            print('async item', n)\n"
        "            yield f'{n}\\n'\n"
        "        raise RuntimeError('the stream broke')\n"
        "    return items()\n",
    )
    write_function(
        functions_dir,
        "plainticker",
        "def main(ctx):\n"
        "    def items():\n"
        "        print('plain item')\n"
        "        yield 'x'\n"
        "    return items()\n",
    )
    async with serve(functions_dir) as server:
        store = server.server.runtime.logs
        assert store is not None
        async with http.stream("GET", f"{server.url}/fn/ticker") as answer:
            rid = answer.headers["x-request-id"]
            with pytest.raises(httpx.RemoteProtocolError):
                await answer.aread()  # ended mid-stream: no proper last chunk
        messages = [line.message for line in await store.query(request_id=rid)]
        assert messages[:2] == ["async item 0", "async item 1"]
        assert "raised RuntimeError" in messages[2] and "the stream broke" in messages[2]
        plain = await http.get(f"{server.url}/fn/plainticker")
        lines = await store.query(request_id=plain.headers["x-request-id"])
        assert [line.message for line in lines] == ["plain item"]
        metrics = await http.get(f"{server.url}/_/metrics")
        assert 'laf_function_errors_total{function="ticker",kind="error"} 1.0' in metrics.text


async def test_without_a_token_only_a_direct_loopback_request_naming_this_machine_gets_in(
    serve, functions_dir, http
) -> None:
    """A loopback address alone is not enough: a local proxy or tunnel relays everyone from
    127.0.0.1, and a rebound DNS name reaches it as another site."""
    async with serve(functions_dir, allowed_hosts=("*",)) as server:
        url = f"{server.url}/_/api/logs"
        assert (await http.get(url)).status_code == 200
        assert (await http.get(url, headers={"Host": "localhost"})).status_code == 200
        for headers in (
            {"X-Forwarded-For": "203.0.113.9"},
            {"X-Real-Ip": "203.0.113.9"},
            {"Forwarded": "for=203.0.113.9"},
            {"Host": "rebound.example"},
            {"Host": "rebound.example", "Origin": "http://rebound.example"},
        ):
            answer = await http.get(url, headers=headers)
            assert answer.status_code == 403, headers
        odd = await http.get(url, headers={"Origin": "http://127.0.0.1:99999"})
        assert odd.status_code == 403  # a port that is not one: refused, not a 500


async def test_odd_lines_and_a_logging_setup_of_the_functions_lose_nothing(
    serve, functions_dir, http
) -> None:
    write_function(
        functions_dir,
        "__init__",
        "import logging.config\n\n"
        "logging.config.dictConfig(\n"
        "    {'version': 1, 'disable_existing_loggers': False, 'root': {'handlers': []}}\n"
        ")\n"
        "logging.getLogger('print').disabled = True  # what disable_existing_loggers does\n\n"
        "def main(ctx):\n    pass\n",
    )
    write_function(
        functions_dir,
        "odd",
        "import logging, pickle\n"
        "def main(ctx):\n"
        "    print('a lone surrogate \\udc80 and a NUL \\x00 here')\n"
        "    logging.getLogger('mine').warning('after dictConfig')\n"
        "    record = logging.getLogger('mine').makeRecord('mine', 20, 'f', 1, 'm', (), None)\n"
        "    return {'pickled': len(pickle.dumps(record)) > 0}\n",
    )
    async with serve(functions_dir) as server:
        answer = await http.get(f"{server.url}/fn/odd")
        assert answer.json() == {"pickled": True}
        store = server.server.runtime.logs
        assert store is not None
        messages = [line.message for line in await store.query(function="odd")]
        assert messages == ["a lone surrogate \\udc80 and a NUL \\x00 here", "after dictConfig"]


async def test_a_reconnecting_reader_gets_every_line_it_missed(serve, functions_dir, http) -> None:
    write_function(
        functions_dir, "many", "def main(ctx):\n    for i in range(450):\n        print('n', i)\n"
    )
    async with serve(functions_dir) as server:
        store = server.server.runtime.logs
        assert store is not None
        rid = (await http.get(f"{server.url}/fn/many")).headers["x-request-id"]
        first = (await store.query(request_id=rid, limit=1000))[0]
        await http.get(f"{server.url}/fn/many")
        seen: list[str] = []
        headers = {"Last-Event-ID": str(first.id)}
        url = f"{server.url}/_/api/logs/stream"
        async with http.stream("GET", url, headers=headers, timeout=20) as stream:
            async for line in stream.aiter_lines():
                if line.startswith("data: "):
                    seen.append(json.loads(line[6:])["message"])
                    if len(seen) == 449 + 450:
                        break
        assert seen[0] == "n 1" and seen[448] == "n 449" and seen[449] == "n 0"
        # ?since= (it once failed the stream with a TypeError): the lines from then on.
        async with http.stream("GET", url, params={"since": "1h"}, timeout=20) as stream:
            async for line in stream.aiter_lines():
                if line.startswith("data: "):
                    assert json.loads(line[6:])["message"] == "n 0"
                    break
