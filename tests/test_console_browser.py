"""The console in a real browser: headless Chromium, driven over the DevTools Protocol
(tests/cdp.py), against a real server with ``--admin-token``, real HTTP calls and real
WebSocket clients. Nothing sleeps: every wait polls the page with a deadline.

Each test also checks that the page threw nothing and that the browser reported no
Content-Security-Policy violation. Screenshots land in the test's tmp_path; the run-panel test
also copies them to /tmp/console-screenshot*.png for a person to look at (the run panel at
1280x800 and on a phone, the connections, logs and health tabs). Needs Debian's
``chromium``: without it these tests skip, or fail under ``LAF_REQUIRE_SERVICES=1``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from .cdp import Browser, Page, find_chromium
from .conftest import CliServer, service_missing, wait_until, write_function

ADMIN_TOKEN = "browser-admin-token-0123456789"

HELLO = """
methods = ["GET", "POST"]
timeout = 5

def main(ctx):
    who = ctx.user["uid"] if ctx.user else "nobody"
    print(f"hello ran for {ctx.query.get('name')} as {who}")
    return {"hello": ctx.query.get("name", "world"), "user": who, "body": ctx.body}
"""
BROKEN = """
x = 1

def main(ctx):
    return 1 +
"""
BOOM = """
def main(ctx):
    raise ValueError("boom")
"""
# What a function might return that a careless console would run.
HOSTILE = """
from laf_py import Response

def main(ctx):
    html = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'
    print("logged:", html)
    return Response(html, headers={"Content-Type": "text/html", "X-Html": "<b>bold</b>"})
"""
WEBSOCKET = """
def main(ctx):
    if ctx.method == "WebSocket:connection" and "user" in ctx.query:
        ctx.socket.user_id = ctx.query["user"]
"""


@pytest.fixture(autouse=True)
def _chromium() -> None:
    if find_chromium() is None:
        service_missing("chromium is not installed (apt-get install chromium)")


@pytest.fixture
def app(functions_dir: Path) -> Path:
    write_function(functions_dir, "hello", HELLO)
    write_function(functions_dir, "broken", BROKEN)
    write_function(functions_dir, "hostile", HOSTILE)
    write_function(functions_dir, "boom", BOOM)
    write_function(functions_dir, "__websocket__", WEBSOCKET)
    return functions_dir


@contextlib.asynccontextmanager
async def console(
    cli_server: Any, app: Path, tmp_path: Path
) -> AsyncIterator[tuple[CliServer, Page]]:
    """``laf-py serve`` with an admin token (from LAF_ADMIN_TOKEN), and a 1280x800 tab logged
    in to its console. The page must have thrown nothing and broken no CSP rule by the end."""
    server = start(cli_server, app)
    async with Browser.launch(tmp_path) as browser:
        page = await browser.new_page(1280, 800)
        await log_in(page, server.url)
        yield server, page
        assert page.errors == [], page.errors
        assert page.security == [], page.security


def start(cli_server: Any, app: Path) -> CliServer:
    server: CliServer = cli_server(cwd=app.parent, env={"LAF_ADMIN_TOKEN": ADMIN_TOKEN})
    return server


async def log_in(page: Page, url: str) -> None:
    await page.navigate(f"{url}/_/console")
    await page.wait_for("!document.querySelector('#login').hidden")
    await page.fill("#token-input", ADMIN_TOKEN)
    await page.click("#login-button")
    await page.wait_for("!document.querySelector('#app').hidden")


def js(value: str) -> str:
    return json.dumps(value)


async def function_item(page: Page, name: str) -> Any:
    """The functions list's entry for ``name`` once it is there: its text and state."""
    selector = js(f'#functions li[data-name="{name}"]')
    return await page.wait_for(
        f"(() => {{ const li = document.querySelector({selector});"
        " return li && {text: li.textContent, failed: li.classList.contains('failed')}; })()"
    )


async def test_log_in_with_the_token(cli_server: Any, app: Path, tmp_path: Path) -> None:
    """A wrong token is refused on the page; the right one opens it and stays for the tab
    (a reload needs no typing); "Forget token" asks again."""
    server = start(cli_server, app)
    async with Browser.launch(tmp_path) as browser:
        page = await browser.new_page(1280, 800)
        await page.navigate(f"{server.url}/_/console")
        await page.wait_for("!document.querySelector('#login').hidden")
        assert await page.evaluate("document.querySelector('#app').hidden")
        await page.fill("#token-input", "not-the-admin-token-0123456789")
        await page.click("#login-button")
        await page.wait_for("document.querySelector('#login-error').textContent !== ''")
        assert "not the admin token" in await page.text("#login-error")
        assert await page.evaluate("document.querySelector('#app').hidden")

        await page.fill("#token-input", ADMIN_TOKEN)
        await page.click("#login-button")
        await page.wait_for("!document.querySelector('#app').hidden")
        await function_item(page, "hello")
        await page.navigate(f"{server.url}/_/console")  # the same tab, reloaded
        await function_item(page, "hello")
        assert await page.evaluate("document.querySelector('#login').hidden")

        await page.click("#logout")
        await page.wait_for("!document.querySelector('#login').hidden")
        assert await page.evaluate("sessionStorage.length") == 0
        assert page.errors == [] and page.security == []


async def test_functions_list_shows_a_broken_one_and_follows_hot_reload(
    cli_server: Any, app: Path, tmp_path: Path
) -> None:
    async with console(cli_server, app, tmp_path) as (_server, page):
        hello = await function_item(page, "hello")
        assert "GET POST" in hello["text"] and "timeout 5s" in hello["text"]
        assert not hello["failed"]
        broken = await function_item(page, "broken")
        assert broken["failed"]
        assert "functions/broken.py, line 4" in broken["text"]
        assert "SyntaxError" in broken["text"]

        write_function(app, "fresh", 'schedule = 30\n\ndef main(ctx):\n    return "new"\n')
        fresh = await function_item(page, "fresh")
        assert "schedule every 30s" in fresh["text"]
        write_function(app, "broken", "def main(ctx):\n    return 'fixed'\n")
        broken_item = js('#functions li[data-name="broken"]')
        await page.wait_for(f"!document.querySelector({broken_item}).classList.contains('failed')")
        # The new function can be picked in the run panel at once.
        await page.wait_for("[...document.querySelector('#run-function').options]"
                            ".some((o) => o.value === 'fresh')")  # fmt: skip


async def test_run_a_function_and_see_its_body_and_its_log_line(
    cli_server: Any, app: Path, tmp_path: Path
) -> None:
    async with console(cli_server, app, tmp_path) as (_server, page):
        await function_item(page, "hello")
        await page.click('#functions li[data-name="hello"] button.fn-name')
        await page.fill("#run-method", "POST")
        await page.fill("#run-query", "name=Ada")
        await page.fill("#run-user", "ada")
        await page.fill("#run-headers", "X-Trace: on")
        await page.fill("#run-body-type", "json")
        await page.fill("#run-body", '{"n": 1}')
        await page.click("#run-button")
        await page.wait_for("document.querySelector('#run-status').textContent.startsWith('200')")
        body = json.loads(await page.text("#run-body-out"))
        assert body == {"hello": "Ada", "user": "ada", "body": {"n": 1}}
        assert "\n  " in await page.text("#run-body-out")  # pretty-printed
        request_id = await page.text("#run-request-id")
        assert len(request_id) == 24
        assert "ms" in await page.text("#run-duration")
        assert "x-request-id: " + request_id in await page.text("#run-response-headers")
        line = await page.wait_for(
            "(() => { const li = document.querySelector('#run-logs li.log');"
            " return li && {text: li.textContent, request: li.dataset.request}; })()"
        )
        assert "hello ran for Ada as ada" in line["text"]
        assert line["request"] == request_id

        shots = [await page.screenshot(tmp_path / "console-1280x800.png")]
        # Click-through: the request id opens Logs filtered to that call.
        await page.click("#run-request-id")
        await page.wait_for("location.hash === '#logs'")
        assert await page.evaluate("document.querySelector('#logs-request').value") == request_id
        await page.wait_for(
            f"[...document.querySelectorAll('#logs-lines li.log')].some("
            f"(li) => li.dataset.request === {js(request_id)} && "
            f"li.textContent.includes('hello ran for Ada'))"
        )
        await page.evaluate("location.hash = '#run'")
        await page.resize(390, 844, mobile=True)
        await page.wait_for("document.documentElement.clientWidth === 390")
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the page is {width}px wide on a 390px phone"
        shots.append(await page.screenshot(tmp_path / "console-phone.png", full_page=True))
        keep(shots[0], "")
        keep(shots[1], "-phone")


def keep(shot: Path, suffix: str) -> None:
    """A copy of a screenshot where a person can look at it after the run."""
    shutil.copy(shot, f"/tmp/console-screenshot{suffix}.png")


async def test_a_functions_html_is_shown_as_text_and_never_runs(
    cli_server: Any, app: Path, tmp_path: Path
) -> None:
    async with console(cli_server, app, tmp_path) as (_server, page):
        await function_item(page, "hostile")
        await page.click('#functions li[data-name="hostile"] button.fn-name')
        await page.click("#run-button")
        await page.wait_for("document.querySelector('#run-status').textContent.startsWith('200')")
        shown = await page.text("#run-body-out")
        assert shown.startswith("<script>window.pwned = 1</script><img src=x")
        assert "x-html: <b>bold</b>" in await page.text("#run-response-headers")
        # The same HTML in a log line, in the run panel and in the live logs.
        line = "#run-logs li.log .msg"
        await page.wait_for(f"!!document.querySelector({js(line)})")
        assert (await page.text(line)).startswith("logged: <script>window.pwned = 1</script>")
        await page.evaluate("location.hash = '#logs'")
        await page.wait_for(
            "[...document.querySelectorAll('#logs-lines .msg')]"
            ".some((m) => m.textContent.startsWith('logged: <script>'))"
        )
        # Nothing of it became an element, and nothing ran.
        elements = (
            "#run-body-out *, #run-response-headers *, .log .msg *, img, b, script:not([src])"
        )
        assert await page.evaluate(f"document.querySelectorAll({js(elements)}).length") == 0
        assert await page.evaluate("window.pwned === undefined")


async def test_a_websocket_client_appears_and_gets_a_message_from_the_console(
    cli_server: Any, app: Path, tmp_path: Path
) -> None:
    async with console(cli_server, app, tmp_path) as (server, page):
        await page.evaluate("location.hash = '#connections'")
        async with websockets.connect(f"{server.ws_url}?user=grace") as ws:
            row = await page.wait_for(
                """(() => { const tr = document.querySelector('#sockets tr[data-socket-id]');
                     return tr && {id: tr.dataset.socketId, text: tr.textContent}; })()"""
            )
            assert "grace" in row["text"] and "127.0.0.1" in row["text"]
            assert await page.wait_for("document.querySelector('#online-users').textContent") == (
                "grace"
            )
            await page.click(f'#sockets tr[data-socket-id="{row["id"]}"] button')  # "Message"
            assert await page.evaluate("document.querySelector('#send-to').value") == row["id"]
            await page.fill("#send-message", '{"type": "hello", "from": "console"}')
            await page.evaluate("document.querySelector('#send-json').checked = true")
            await page.click("#send-button")
            frame = await asyncio.wait_for(ws.recv(), 10)
            assert json.loads(frame) == {"type": "hello", "from": "console"}
            await page.wait_for(
                "document.querySelector('#send-result').textContent === 'delivered to 1 connection'"
            )
            # The message counts show in the row (one out).
            await page.wait_for(
                f'document.querySelector(\'#sockets tr[data-socket-id="{row["id"]}"] '
                "td:nth-child(6)').textContent === '1'"
            )
            keep(await page.screenshot(tmp_path / "connections.png"), "-connections")
            # To the user, as text.
            await page.click('#online-users li[data-user="grace"] button')
            assert await page.evaluate("document.querySelector('#send-kind').value") == "user"
            await page.evaluate("document.querySelector('#send-json').checked = false")
            await page.fill("#send-message", "plain hello")
            await page.click("#send-button")
            assert await asyncio.wait_for(ws.recv(), 10) == "plain hello"
            # Close: one click asks, the second closes.
            close = f'#sockets tr[data-socket-id="{row["id"]}"] button:last-child'
            await page.click(close)
            await page.wait_for(
                f"document.querySelector({js(close)}).textContent === 'Really close?'"
            )
            await page.click(close)
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.reason == "closed from the console"
            await page.wait_for("!document.querySelector('#sockets tr[data-socket-id]')")


async def test_live_logs_follow_new_lines_with_filters_and_pause(
    cli_server: Any, app: Path, tmp_path: Path
) -> None:
    async with console(cli_server, app, tmp_path) as (server, page):
        await page.evaluate("location.hash = '#logs'")
        await page.wait_for("document.querySelector('#logs-status').textContent === 'live'")
        async with httpx.AsyncClient() as http:
            response = await http.get(f"{server.url}/fn/hello", params={"name": "live-one"})
            first = response.headers["x-request-id"]
            await page.wait_for(
                f"!!document.querySelector('#logs-lines li[data-request=\"{first}\"]')"
            )
            # Paused: new lines wait, and come on resume.
            await page.click("#logs-pause")
            second = (await http.get(f"{server.url}/fn/hello", params={"name": "two"})).headers
            await page.wait_for(
                "document.querySelector('#logs-pause').textContent.includes('1 new')"
            )
            selector = f'#logs-lines li[data-request="{second["x-request-id"]}"]'
            assert not await page.evaluate(f"!!document.querySelector({js(selector)})")
            await page.click("#logs-pause")
            await page.wait_for(f"!!document.querySelector({js(selector)})")
            # Filtered by level: the error line of a failing call shows, the info line of a
            # call made before it does not.
            await page.fill("#logs-level", "error")
            third = (await http.get(f"{server.url}/fn/hello", params={"name": "three"})).headers
            failed = (await http.get(f"{server.url}/fn/boom")).headers["x-request-id"]
            await page.wait_for(
                f"!!document.querySelector('#logs-lines li[data-request=\"{failed}\"]')"
            )
            levels = await page.evaluate(
                "[...document.querySelectorAll('#logs-lines li')].map((li) => li.className)"
            )
            assert levels and all("level-error" in level for level in levels), levels
            third_line = js(f'#logs-lines li[data-request="{third["x-request-id"]}"]')
            assert not await page.evaluate(f"!!document.querySelector({third_line})")
            await page.fill("#logs-level", "")
            await page.wait_for(f"!!document.querySelector({third_line})")
            keep(await page.screenshot(tmp_path / "logs.png"), "-logs")


async def test_health_shows_requests_and_durations_per_function(
    cli_server: Any, app: Path, tmp_path: Path
) -> None:
    async with console(cli_server, app, tmp_path) as (server, page):
        await page.evaluate("location.hash = '#health'")
        async with httpx.AsyncClient() as http:

            async def counted() -> Any:
                await http.get(f"{server.url}/fn/hello")  # keep traffic coming between scrapes
                return await page.evaluate(
                    "(() => { const tr = document.querySelector("
                    "'#latency tr[data-function=\"hello\"]');"
                    " return tr && Number(tr.children[1].textContent) > 0 && tr.textContent; })()"
                )

            row = await wait_until(counted, timeout=20, interval=0.2)
        assert " ms" in row  # p50 and p99
        rate = await page.evaluate("document.querySelector('#tile-rps .value').textContent")
        assert rate != "\N{EN DASH}"  # shown when there is no number yet
        keep(await page.screenshot(tmp_path / "health.png"), "-health")


async def test_live_logs_reconnect_after_the_server_restarts(
    cli_server: Any, app: Path, tmp_path: Path
) -> None:
    """The server dies (SIGKILL) and comes back on the same port and database: the tail
    says it is reconnecting, then follows again from the last line it showed (Last-Event-ID),
    so a line of the new process shows and none of the old ones twice."""
    async with console(cli_server, app, tmp_path) as (server, page):
        await page.evaluate("location.hash = '#logs'")
        await page.wait_for("document.querySelector('#logs-status').textContent === 'live'")
        async with httpx.AsyncClient() as http:
            before = await http.get(f"{server.url}/fn/hello", params={"name": "before"})
            old = js(f'#logs-lines li[data-request="{before.headers["x-request-id"]}"]')
            await page.wait_for(f"!!document.querySelector({old})")
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait()
            await page.wait_for(
                "document.querySelector('#logs-status').textContent === 'reconnecting…'"
            )
            port = server.url.rsplit(":", 1)[1]
            again = cli_server("--port", port, cwd=app.parent, env={"LAF_ADMIN_TOKEN": ADMIN_TOKEN})
            after = await http.get(f"{again.url}/fn/hello", params={"name": "after"})
            new = js(f'#logs-lines li[data-request="{after.headers["x-request-id"]}"]')
            await page.wait_for(f"!!document.querySelector({new})", timeout=30)
        assert await page.evaluate(f"document.querySelectorAll({old}).length") == 1
        assert await page.text("#logs-status") == "live"
