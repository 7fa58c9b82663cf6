"""Pages of ``public/`` in a real browser: headless Chromium loads them from a real server, runs
their scripts (a function call, a WebSocket to the same server) and hands back the DOM.

Needs Debian's ``chromium`` (``.ci/run`` installs it when missing); without it these tests
skip, or fail under ``LAF_REQUIRE_SERVICES=1``."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlencode

import jwt
import pytest

from .conftest import REPO, run_to_exit, service_missing, wait_until, write_function


def browser() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        service_missing("chromium is not installed (apt-get install chromium)")
    assert found is not None
    return found


def rendered(url: str) -> str:
    """The page's DOM once its scripts ran (virtual time: no waiting on the wall clock)."""
    result = subprocess.run(
        [
            browser(),
            "--headless",
            "--no-sandbox",  # CI runs as root
            "--disable-gpu",
            "--virtual-time-budget=10000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def rendered_with(url: str, *expected: str, attempts: int = 3) -> str:
    """The DOM once it shows every ``expected`` text: rendered again (a bounded number of
    times) when it does not. Virtual time can run out while a loaded machine is still
    answering the WebSocket handshake; a page that never gets there fails all attempts."""
    dom = ""
    for _ in range(attempts):
        dom = rendered(url)
        if all(text in dom for text in expected):
            break
    return dom


def test_the_page_of_a_new_app_calls_a_function_and_opens_its_websocket(
    cli_server, tmp_path: Path
) -> None:
    assert run_to_exit("init", "app", cwd=tmp_path)[0] == 0
    server = cli_server(cwd=tmp_path / "app")
    dom = rendered_with(server.url + "/", '<span id="status">open</span>', "← {")
    assert '<p id="hello">/fn/hello says: Hello, browser!</p>' in dom
    assert '<span id="status">open</span>' in dom
    assert '← {"type":"welcome","user":"guest-' in dom


def test_the_examples_page_connects(cli_server, tmp_path: Path) -> None:
    """The repository's own app: its public/ page, its __websocket__."""
    server = cli_server("--app-dir", str(REPO), "--data-dir", str(tmp_path / "data"))
    dom = rendered_with(server.url + "/", '<span id="status">connected</span>', "your userID is: ")
    assert '<span id="status">connected</span>' in dom
    assert "your userID is: " in dom


@pytest.fixture(autouse=True)
def _chromium_present() -> None:
    browser()


TICKS = """
from laf_py import Event, EventStream

async def main(ctx):
    last = int(ctx.headers.get("Last-Event-ID") or 0)

    async def ticks():
        for n in (last + 1, last + 2):  # two events, then the stream ends: the browser
            yield Event(n, event="tick", id=n, retry=10)  # reconnects with Last-Event-ID

    return EventStream(ticks())
"""

CHUNKS = """
import asyncio
from laf_py import cloud

async def main(ctx):
    release = asyncio.Event()
    cloud.shared.set("release", release)

    async def chunks():
        yield "first;"
        await release.wait()  # until the page has read the first chunk and says so
        yield "second"

    return chunks()
"""

RELEASE = """
from laf_py import cloud

methods = ["POST"]

def main(ctx):
    cloud.shared.get("release").set()
"""

STREAMS_PAGE = """<!doctype html>
<p id="sse">waiting</p><p id="fetch">waiting</p>
<script>
const seen = [];
const source = new EventSource("/fn/ticks");
source.addEventListener("tick", (e) => {
  seen.push(e.data + "@" + e.lastEventId);
  if (seen.length < 4) return;
  source.close();
  document.getElementById("sse").textContent = seen.join(",");
});
(async () => {
  const response = await fetch("/fn/chunks");
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  const first = await reader.read();
  const parts = [decoder.decode(first.value)];
  await fetch("/fn/release", {method: "POST"});
  for (;;) {
    const {done, value} = await reader.read();
    if (done) break;
    parts.push(decoder.decode(value));
  }
  document.getElementById("fetch").textContent = parts.join("|");
})();
</script>
"""


def test_event_source_and_a_streamed_fetch(cli_server, tmp_path: Path) -> None:
    """EventSource gets the events of an EventStream, and when the stream ends reconnects
    with Last-Event-ID, which the function reads; fetch() reads a streamed body whose first
    chunk arrived while the function was still producing the rest."""
    for name, source in [("ticks", TICKS), ("chunks", CHUNKS), ("release", RELEASE)]:
        write_function(tmp_path / "functions", name, source)
    (tmp_path / "public").mkdir()
    (tmp_path / "public" / "index.html").write_text(STREAMS_PAGE)
    server = cli_server(cwd=tmp_path)
    dom = rendered(server.url + "/")
    assert '<p id="sse">1@1,2@2,3@3,4@4</p>' in dom
    assert '<p id="fetch">first;|second</p>' in dom


WHOAMI = """
methods = ["POST"]

def main(ctx):
    return {"user": ctx.user["uid"] if ctx.user else None, "body": ctx.body}
"""

CROSS_ORIGIN_PAGE = """<!doctype html>
<p id="allowed">waiting</p><p id="refused">waiting</p>
<script>
const params = new URLSearchParams(location.search);
async function call(api, id) {
  const out = document.getElementById(id);
  try {
    const response = await fetch(api + "/fn/whoami", {
      method: "POST",
      headers: {"Authorization": "Bearer " + params.get("token"),
                "Content-Type": "application/json"},
      body: JSON.stringify({hello: "from the page"}),
    });
    const seen = response.headers.get("X-Request-Id") ? "request id read" : "no request id";
    out.textContent = response.status + " " + JSON.stringify(await response.json()) + " " + seen;
  } catch (error) {
    out.textContent = "failed: " + error;
  }
}
call(params.get("allowed"), "allowed");
call(params.get("refused"), "refused");
</script>
"""


async def test_a_page_calls_functions_on_another_origin(cli_server, tmp_path: Path) -> None:
    """A page served from one server calls a function on another with Authorization and a
    JSON body (a preflighted request): the origin the API server allows reads the answer and
    its X-Request-Id; one that does not fail, and that server logs the one-line refusal."""
    secret = "cross-origin-" + "s" * 40
    site = tmp_path / "site"
    (site / "functions").mkdir(parents=True)
    (site / "public").mkdir()
    (site / "public" / "index.html").write_text(CROSS_ORIGIN_PAGE)
    api = tmp_path / "api"
    write_function(api / "functions", "whoami", WHOAMI)
    page = cli_server(cwd=site)
    origin = page.url  # http://127.0.0.1:PORT
    allowed = cli_server("--allowed-origins", origin, "--secret", secret, cwd=api)
    refused = cli_server("--secret", secret, "--data-dir", str(tmp_path / "data"), cwd=api)
    token = jwt.encode({"uid": "ada"}, secret, algorithm="HS256")
    query = urlencode({"allowed": allowed.url, "refused": refused.url, "token": token})
    dom = rendered(f"{page.url}/?{query}")
    body = '{"user":"ada","body":{"hello":"from the page"}}'
    assert f'<p id="allowed">200 {body} request id read</p>' in dom
    assert '<p id="refused">failed: TypeError: Failed to fetch</p>' in dom
    refusal = f"refused a CORS preflight from origin {origin!r} to OPTIONS /fn/whoami"
    await wait_until(lambda: refusal in refused.log)
    assert "--allowed-origins / LAF_ALLOWED_ORIGINS" in refused.log
