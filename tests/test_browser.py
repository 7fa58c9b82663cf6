"""Pages of ``public/`` in a real browser: headless Chromium loads them from a real server, runs
their scripts (a function call, a WebSocket to the same server) and hands back the DOM.

Needs Debian's ``chromium`` (``.ci/run`` installs it when missing); without it these tests
skip, or fail under ``LAF_REQUIRE_SERVICES=1``."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import REPO, run_to_exit, service_missing


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


def test_the_page_of_a_new_app_calls_a_function_and_opens_its_websocket(
    cli_server, tmp_path: Path
) -> None:
    assert run_to_exit("init", "app", cwd=tmp_path)[0] == 0
    server = cli_server(cwd=tmp_path / "app")
    dom = rendered(server.url + "/")
    assert '<p id="hello">/fn/hello says: Hello, browser!</p>' in dom
    assert '<span id="status">open</span>' in dom
    assert '← {"type":"welcome","user":"guest-' in dom


def test_the_examples_page_connects(cli_server, tmp_path: Path) -> None:
    """The repository's own app: its public/ page, its __websocket__."""
    server = cli_server("--app-dir", str(REPO), "--data-dir", str(tmp_path / "data"))
    dom = rendered(server.url + "/")
    assert '<span id="status">connected</span>' in dom
    assert "your userID is: " in dom


@pytest.fixture(autouse=True)
def _chromium_present() -> None:
    browser()
