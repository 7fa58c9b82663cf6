"""A small Chrome DevTools Protocol client: drive headless Chromium from an async test.

    async with Browser.launch(tmp_path) as browser:
        page = await browser.new_page(width=1280, height=800)
        await page.navigate(url)
        await page.wait_for("document.querySelector('#app:not([hidden])')")
        await page.screenshot(tmp_path / "page.png")

Chromium is started with ``--remote-debugging-port=0``; the port it picked is read from
``<user-data-dir>/DevToolsActivePort``, and everything goes over one WebSocket to the browser
(``Target.attachToTarget`` with ``flatten``: each page is a session on it). Nothing sleeps:
``wait_for`` polls an expression until it is truthy or a deadline passes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import websockets

__all__ = ["Browser", "CDPError", "Page", "find_chromium"]


def find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class CDPError(Exception):
    """A command failed, or a script threw."""


class Browser:
    def __init__(self, process: subprocess.Popen[bytes], connection: Any) -> None:
        self.process = process
        self._connection = connection
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._pages: dict[str, Page] = {}
        self._reader = asyncio.create_task(self._read())

    @classmethod
    @contextlib.asynccontextmanager
    async def launch(cls, folder: Path, timeout: float = 30.0) -> AsyncIterator[Browser]:
        """Start Chromium with a profile in ``folder``; stop it (and wait) on exit."""
        executable = find_chromium()
        assert executable is not None, "chromium is not installed"
        profile = folder / "chromium-profile"
        profile.mkdir(parents=True, exist_ok=True)
        (profile / "DevToolsActivePort").unlink(missing_ok=True)  # a previous run's port
        process = subprocess.Popen(
            [
                executable,
                "--headless",
                "--no-sandbox",  # CI runs as root
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        browser = None
        try:
            port, path = await _devtools_address(profile / "DevToolsActivePort", process, timeout)
            connection = await websockets.connect(
                f"ws://127.0.0.1:{port}{path}", max_size=None, open_timeout=timeout
            )
            browser = cls(process, connection)
            yield browser
        finally:
            if browser is not None:
                await browser.close()
            if process.poll() is None:
                process.terminate()
                try:
                    await asyncio.wait_for(asyncio.to_thread(process.wait), 10)
                except TimeoutError:
                    process.kill()
                    process.wait()

    async def send(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None
    ) -> Any:
        message: dict[str, Any] = {"id": next(self._ids), "method": method}
        message["params"] = params or {}
        if session is not None:
            message["sessionId"] = session
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[message["id"]] = future
        await self._connection.send(json.dumps(message))
        return await asyncio.wait_for(future, 60)

    async def new_page(self, width: int = 1280, height: int = 800, mobile: bool = False) -> Page:
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        page = Page(self, attached["sessionId"])
        self._pages[page.session] = page
        await page.send("Runtime.enable")
        await page.send("Page.enable")
        await page.send("Log.enable")
        await page.resize(width, height, mobile)
        return page

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.send("Browser.close"), 5)
        self._reader.cancel()
        with contextlib.suppress(BaseException):
            await self._reader
        with contextlib.suppress(Exception):
            await self._connection.close()

    async def _read(self) -> None:
        try:
            async for raw in self._connection:
                message = json.loads(raw)
                if "id" in message:
                    future = self._waiting.pop(message["id"], None)
                    if future is None or future.done():
                        continue
                    if "error" in message:
                        future.set_exception(CDPError(str(message["error"])))
                    else:
                        future.set_result(message.get("result", {}))
                elif message.get("sessionId") in self._pages:
                    self._pages[message["sessionId"]].event(message["method"], message["params"])
        finally:
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(CDPError("the browser connection closed"))


class Page:
    """One tab. ``errors`` collects uncaught exceptions and console errors of its scripts,
    ``security`` the browser's security messages (a Content-Security-Policy violation)."""

    def __init__(self, browser: Browser, session: str) -> None:
        self.browser = browser
        self.session = session
        self.errors: list[str] = []
        self.security: list[str] = []
        self.console: list[str] = []

    async def send(self, method: str, params: dict[str, Any] | None = None) -> Any:
        return await self.browser.send(method, params, self.session)

    def event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            self.errors.append(str(text))
        elif method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
            self.console.append(f"{params['type']}: {text}")
            if params["type"] == "error":
                self.errors.append(text)
        elif method == "Log.entryAdded":
            entry = params["entry"]
            if entry.get("source") == "security":
                self.security.append(entry.get("text", ""))

    async def resize(self, width: int, height: int, mobile: bool = False) -> None:
        await self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
        )

    async def navigate(self, url: str) -> None:
        result = await self.send("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise CDPError(f"cannot open {url}: {result['errorText']}")
        await self.wait_for("document.readyState === 'complete'")

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (promises awaited), as JSON."""
        result = await self.send(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise CDPError(f"{expression!r} threw: {text}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 15.0) -> Any:
        """Poll ``expression`` until it is truthy; its value. Fails after ``timeout``."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            try:
                last = await self.evaluate(expression)
            except CDPError as exc:  # the page is changing under us (navigation)
                last = exc
            else:
                if last:
                    return last
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{expression!r} not true within {timeout}s (last: {last!r}; "
                    f"page errors: {self.errors})"
                )
            await asyncio.sleep(0.05)

    async def text(self, selector: str) -> str:
        return str(
            await self.evaluate(f"document.querySelector({json.dumps(selector)}).textContent")
        )

    async def click(self, selector: str) -> None:
        found = await self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            " if (!e) return false; e.click(); return true; })()"
        )
        if not found:
            raise AssertionError(f"nothing to click at {selector!r}")

    async def fill(self, selector: str, value: str) -> None:
        """Set a field's value and fire ``input`` and ``change``, as typing would."""
        found = await self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            f" if (!e) return false; e.value = {json.dumps(value)};"
            " e.dispatchEvent(new Event('input', {bubbles: true}));"
            " e.dispatchEvent(new Event('change', {bubbles: true})); return true; })()"
        )
        if not found:
            raise AssertionError(f"no field at {selector!r}")

    async def screenshot(self, path: Path, full_page: bool = False) -> Path:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
        shot = await self.send("Page.captureScreenshot", params)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path


async def _devtools_address(
    file: Path, process: subprocess.Popen[bytes], timeout: float
) -> tuple[int, str]:
    """The port and browser path Chromium writes once it listens."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError, ValueError):
            lines = file.read_text().splitlines()
            if len(lines) >= 2:
                return int(lines[0]), lines[1]
        if process.poll() is not None:
            raise AssertionError(f"chromium exited with {process.returncode} before listening")
        if time.monotonic() > deadline:
            raise AssertionError(f"chromium wrote no {file.name} within {timeout}s")
        await asyncio.sleep(0.05)
