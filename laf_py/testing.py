"""Test your functions against a real laf-py server::

    from laf_py.testing import TestClient

    def test_hello():
        with TestClient(".") as client:  # the app folder (or its functions folder)
            assert client.get("hello", query={"name": "Ada"}).text == "Hello, Ada!"
            with client.websocket(user="ada") as ws:
                ws.send("hi")
                assert ws.receive() == ...

``TestClient`` starts ``laf-py serve`` in a child process on a free port of 127.0.0.1, with a
fresh data folder of its own (its own SQLite database and token secret), and talks to it over
real HTTP and WebSocket connections: what passes here passes in production. It needs no pytest
plugin; ``AsyncTestClient`` is the same for ``async`` tests. Both need the ``testing`` extra
(httpx and websockets): ``pip install 'laf-py[testing]'``.

``LafTestServer`` runs a server inside the test's own event loop instead (one per process), for
tests that look at ``cloud`` directly; it is what laf-py's own suite uses.
"""

from __future__ import annotations

import contextlib
import json as jsonlib
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .cloud.tokens import Tokens
from .config import Settings
from .logs.lines import LogLine
from .options import OPTIONS

if TYPE_CHECKING:
    import httpx
    from websockets.asyncio.client import ClientConnection as AsyncConnection
    from websockets.sync.client import ClientConnection as SyncConnection

    from .asgi.server import UvicornServer
    from .server import Server

__all__ = [
    "AsyncTestClient",
    "AsyncTestWebSocket",
    "LafTestServer",
    "TestClient",
    "TestResponse",
    "TestWebSocket",
    "WebSocketClosed",
]

START_TIMEOUT = 30.0
_LISTENING = re.compile(r"listening on (http://\S+)")
_FLAGS = {option.field: option.flag for option in OPTIONS}
User = str | Mapping[str, Any] | None


class WebSocketClosed(Exception):
    """The server closed the WebSocket: ``code`` and ``reason`` are what it said."""

    def __init__(self, code: int | None, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"WebSocket closed: {code} {reason!r}")


class TestResponse:
    """An HTTP function's answer: ``status_code``, ``headers``, ``text``, ``content``,
    ``json()`` and ``request_id`` (the ``X-Request-Id`` header, to find the call's log lines)."""

    __test__ = False  # not a pytest test class

    def __init__(self, response: httpx.Response) -> None:
        self.raw = response
        self.status_code = response.status_code
        self.headers = response.headers
        self.content = response.content
        self.text = response.text
        self.request_id: str | None = response.headers.get("x-request-id")

    def json(self) -> Any:
        return jsonlib.loads(self.content)

    def __repr__(self) -> str:
        return f"<TestResponse {self.status_code} request_id={self.request_id}>"


class _ServerProcess:
    """``laf-py serve`` in a child process with a data folder of its own."""

    def __init__(self, app: str | Path, settings: Mapping[str, Any]) -> None:
        folder = Path(app).resolve()
        if not folder.is_dir():
            raise FileNotFoundError(f"no app folder or functions folder at {folder}")
        if (folder / "functions").is_dir():  # an app folder
            app_dir, functions = folder, folder / "functions"
        else:  # a functions folder
            app_dir, functions = folder.parent, folder
        self._scratch = Path(tempfile.mkdtemp(prefix="laf-test-"))
        self.secret = secrets.token_urlsafe(48)
        self.tokens = Tokens(self.secret, require_exp=bool(settings.get("require_token_exp")))
        arguments = {
            "host": "127.0.0.1",
            "port": 0,
            "reload": False,
            "shutdown_grace": 2,
            "app_dir": app_dir,
            "functions_dir": functions,
            "data_dir": self._scratch / "data",
            **settings,
        }
        command = [sys.executable, "-m", "laf_py", "serve"]
        for name, value in arguments.items():
            if name not in _FLAGS:
                raise TypeError(f"unknown laf-py setting {name!r}")
            command += [_FLAGS[name], _flag_value(value)]
        # The developer's own LAF_* settings (a database URL, say) must not reach the test.
        environ = {k: v for k, v in os.environ.items() if not k.startswith("LAF_")}
        environ["LAF_SECRET"] = self.secret
        self.log_path = self._scratch / "server.log"
        self._log = self.log_path.open("w")
        self._process = subprocess.Popen(
            command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=environ,
            cwd=app_dir,
            start_new_session=True,
        )
        self.url = ""

    def listening(self) -> bool:
        """True once the server serves; raises if it exited instead."""
        match = _LISTENING.search(self.log)
        if match:
            self.url = match.group(1)
            return True
        if self._process.poll() is not None:
            raise RuntimeError(f"laf-py did not start:\n{self.log}")
        return False

    @property
    def log(self) -> str:
        """Everything the server has logged so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._log.close()
        shutil.rmtree(self._scratch, ignore_errors=True)


def _flag_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


class _Client:
    """What both clients share: the server, URLs, tokens and request building."""

    def __init__(self, app: str | Path = ".", **settings: Any) -> None:
        self._app = app
        self._settings = settings
        self._server: _ServerProcess | None = None

    @property
    def server(self) -> _ServerProcess:
        if self._server is None:
            raise RuntimeError("use the client in a with block (or call start() first)")
        return self._server

    @property
    def url(self) -> str:
        """The server's base URL, e.g. ``http://127.0.0.1:41234``."""
        return self.server.url

    @property
    def ws_url(self) -> str:
        """``ws://127.0.0.1:<port>/__websocket__``."""
        return self.server.url.replace("http", "ws", 1) + "/__websocket__"

    @property
    def server_log(self) -> str:
        """Everything the server logged so far (print() output and errors of functions)."""
        return self.server.log

    def token(self, payload: Mapping[str, Any], expires_in: float | None = None) -> str:
        """A token signed with this server's secret, as ``cloud.get_token`` would make it."""
        return self.server.tokens.issue(payload, expires_in)

    def fn_url(self, name: str) -> str:
        """``/fn/<name>``; a name starting with ``/`` is a path of its own (``/_/healthz``)."""
        return self.url + (name if name.startswith("/") else f"/fn/{name}")

    def _headers(self, headers: Mapping[str, str] | None, user: User) -> dict[str, str]:
        merged = dict(headers or {})
        if user is not None:
            merged["Authorization"] = f"Bearer {self._token_for(user)}"
        return merged

    def _token_for(self, user: str | Mapping[str, Any]) -> str:
        payload = {"uid": user} if isinstance(user, str) else user
        # Under --require-token-exp a ``user=`` token lasts an hour (one without exp is refused).
        expires_in = 3600.0 if self.server.tokens.require_exp and "exp" not in payload else None
        return self.token(payload, expires_in)

    def _ws_target(
        self, query: Mapping[str, str] | None, headers: Mapping[str, str] | None, user: User
    ) -> tuple[str, dict[str, str]]:
        from urllib.parse import urlencode

        query = dict(query or {})
        if user is not None:
            query["token"] = self._token_for(user)
        url = self.ws_url + (f"?{urlencode(query)}" if query else "")
        return url, dict(headers or {})

    # -- admin endpoints: logs, schedules, the queue --------------------------------------------

    def _admin(self, path: str) -> tuple[str, dict[str, str]]:
        token = self._settings.get("admin_token")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return f"{self.url}/_/api/{path}", headers

    @staticmethod
    def _admin_answer(response: httpx.Response, what: str) -> Any:
        if response.status_code != 200:
            raise RuntimeError(f"{what}: {response.status_code} {response.text}")
        return response.json()

    @staticmethod
    def _log_lines(answer: Any) -> list[LogLine]:
        import logging

        return [
            LogLine(
                id=entry["id"],
                time=entry["time"],
                level=logging.getLevelName(entry["level"]),
                function=entry["function"],
                request_id=entry["request_id"],
                node=entry["node"],
                message=entry["message"],
            )
            for entry in answer["lines"]
        ]

    @staticmethod
    def _log_query(request_id: str | None, function: str | None) -> dict[str, str]:
        query = {"limit": "10000"}
        if request_id:
            query["request"] = request_id
        if function:
            query["function"] = function
        return query

    def _start_process(self) -> _ServerProcess:
        self._server = _ServerProcess(self._app, self._settings)
        return self._server


class TestClient(_Client):
    """A laf-py server for one test, and synchronous clients for it (no plugin needed)."""

    __test__ = False

    def start(self) -> TestClient:
        import httpx

        server = self._start_process()
        deadline = time.monotonic() + START_TIMEOUT
        try:
            while not server.listening():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"laf-py did not start in {START_TIMEOUT:g}s:\n{server.log}")
                time.sleep(0.02)
        except BaseException:
            server.stop()
            raise
        self._http = httpx.Client(timeout=30)
        return self

    def close(self) -> None:
        if self._server is not None:
            self._http.close()
            self._server.stop()
            self._server = None

    def __enter__(self) -> TestClient:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def request(
        self,
        method: str,
        name: str,
        *,
        query: Mapping[str, str] | None = None,
        json: Any = None,
        content: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
        user: User = None,
    ) -> TestResponse:
        """Call a function; ``user`` (an id, or a token payload) signs a Bearer token."""
        response = self._http.request(
            method,
            self.fn_url(name),
            params=query,
            json=json,
            content=content,
            headers=self._headers(headers, user),
        )
        return TestResponse(response)

    def get(self, name: str, **options: Any) -> TestResponse:
        return self.request("GET", name, **options)

    def post(self, name: str, **options: Any) -> TestResponse:
        return self.request("POST", name, **options)

    def put(self, name: str, **options: Any) -> TestResponse:
        return self.request("PUT", name, **options)

    def patch(self, name: str, **options: Any) -> TestResponse:
        return self.request("PATCH", name, **options)

    def delete(self, name: str, **options: Any) -> TestResponse:
        return self.request("DELETE", name, **options)

    def logs(self, request_id: str | None = None, function: str | None = None) -> list[LogLine]:
        """The log lines functions wrote, oldest first: of one call (``response.request_id``),
        of one function, or all. Each has ``message``, ``level_name``, ``function``,
        ``request_id`` and ``time``."""
        url, headers = self._admin("logs")
        query = self._log_query(request_id, function)
        answer = self._http.get(url, params=query, headers=headers)
        return self._log_lines(self._admin_answer(answer, "reading the logs"))

    def run_schedule(self, name: str) -> str:
        """Run a scheduled function now, as its schedule would (``ctx.method == "SCHEDULE"``);
        returns the run's request id (for :meth:`logs`). RuntimeError if it failed."""
        url, headers = self._admin(f"schedules/{name}/run")
        answer = self._admin_answer(self._http.post(url, headers=headers), f"running {name!r}")
        if answer["outcome"] != "done":
            raise RuntimeError(f"{name!r} {answer['outcome']} (request {answer['request_id']})")
        return str(answer["request_id"])

    def drain_queue(self, timeout: float = 30.0) -> int:
        """Run every queued job now, delayed and retrying ones too, until none is left; returns
        how many attempts ran. Read a job's outcome with ``cloud.queue.get`` in a function."""
        url, headers = self._admin("queue/drain")
        response = self._http.post(
            url, params={"timeout": str(timeout)}, headers=headers, timeout=timeout + 10
        )
        return int(self._admin_answer(response, "draining the queue")["ran"])

    @contextlib.contextmanager
    def websocket(
        self,
        *,
        query: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        user: User = None,
    ) -> Iterator[TestWebSocket]:
        """A WebSocket connection to ``/__websocket__``, closed when the block ends."""
        from websockets.sync.client import connect

        url, extra = self._ws_target(query, headers, user)
        with connect(url, additional_headers=extra, open_timeout=30) as connection:
            yield TestWebSocket(connection)


class TestWebSocket:
    """One WebSocket connection of a TestClient."""

    __test__ = False

    def __init__(self, connection: SyncConnection) -> None:
        self._connection = connection

    def send(self, message: str | bytes) -> None:
        self._connection.send(message)

    def send_json(self, value: Any) -> None:
        self._connection.send(jsonlib.dumps(value))

    def receive(self, timeout: float = 5.0) -> str | bytes:
        """The next message; raises WebSocketClosed when the server closed the connection,
        TimeoutError when nothing came within ``timeout`` seconds."""
        from websockets.exceptions import ConnectionClosed

        try:
            return self._connection.recv(timeout)
        except ConnectionClosed:
            raise WebSocketClosed(self.close_code, self.close_reason) from None

    def receive_json(self, timeout: float = 5.0) -> Any:
        return jsonlib.loads(self.receive(timeout))

    def close(self, code: int = 1000, reason: str = "") -> None:
        self._connection.close(code, reason)

    @property
    def close_code(self) -> int | None:
        """The code the server closed with (None while open)."""
        return self._connection.close_code

    @property
    def close_reason(self) -> str:
        return self._connection.close_reason or ""


class AsyncTestClient(_Client):
    """The same as TestClient for ``async`` tests: ``async with``, and awaitable calls."""

    __test__ = False

    async def start(self) -> AsyncTestClient:
        import asyncio

        import httpx

        server = self._start_process()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        try:
            while not server.listening():
                if loop.time() > deadline:
                    raise RuntimeError(f"laf-py did not start in {START_TIMEOUT:g}s:\n{server.log}")
                await asyncio.sleep(0.02)
        except BaseException:
            server.stop()
            raise
        self._http = httpx.AsyncClient(timeout=30)
        return self

    async def close(self) -> None:
        if self._server is not None:
            await self._http.aclose()
            self._server.stop()
            self._server = None

    async def __aenter__(self) -> AsyncTestClient:
        return await self.start()

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def request(
        self,
        method: str,
        name: str,
        *,
        query: Mapping[str, str] | None = None,
        json: Any = None,
        content: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
        user: User = None,
    ) -> TestResponse:
        response = await self._http.request(
            method,
            self.fn_url(name),
            params=query,
            json=json,
            content=content,
            headers=self._headers(headers, user),
        )
        return TestResponse(response)

    async def get(self, name: str, **options: Any) -> TestResponse:
        return await self.request("GET", name, **options)

    async def post(self, name: str, **options: Any) -> TestResponse:
        return await self.request("POST", name, **options)

    async def put(self, name: str, **options: Any) -> TestResponse:
        return await self.request("PUT", name, **options)

    async def patch(self, name: str, **options: Any) -> TestResponse:
        return await self.request("PATCH", name, **options)

    async def delete(self, name: str, **options: Any) -> TestResponse:
        return await self.request("DELETE", name, **options)

    async def logs(
        self, request_id: str | None = None, function: str | None = None
    ) -> list[LogLine]:
        """As :meth:`TestClient.logs`."""
        url, headers = self._admin("logs")
        query = self._log_query(request_id, function)
        answer = await self._http.get(url, params=query, headers=headers)
        return self._log_lines(self._admin_answer(answer, "reading the logs"))

    async def run_schedule(self, name: str) -> str:
        """As :meth:`TestClient.run_schedule`."""
        url, headers = self._admin(f"schedules/{name}/run")
        response = await self._http.post(url, headers=headers)
        answer = self._admin_answer(response, f"running {name!r}")
        if answer["outcome"] != "done":
            raise RuntimeError(f"{name!r} {answer['outcome']} (request {answer['request_id']})")
        return str(answer["request_id"])

    async def drain_queue(self, timeout: float = 30.0) -> int:
        """As :meth:`TestClient.drain_queue`."""
        url, headers = self._admin("queue/drain")
        response = await self._http.post(
            url, params={"timeout": str(timeout)}, headers=headers, timeout=timeout + 10
        )
        return int(self._admin_answer(response, "draining the queue")["ran"])

    @contextlib.asynccontextmanager
    async def websocket(
        self,
        *,
        query: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        user: User = None,
    ) -> Any:
        from websockets.asyncio.client import connect

        url, extra = self._ws_target(query, headers, user)
        async with connect(url, additional_headers=extra, open_timeout=30) as connection:
            yield AsyncTestWebSocket(connection)


class AsyncTestWebSocket:
    """One WebSocket connection of an AsyncTestClient."""

    __test__ = False

    def __init__(self, connection: AsyncConnection) -> None:
        self._connection = connection

    async def send(self, message: str | bytes) -> None:
        await self._connection.send(message)

    async def send_json(self, value: Any) -> None:
        await self._connection.send(jsonlib.dumps(value))

    async def receive(self, timeout: float = 5.0) -> str | bytes:
        import asyncio

        from websockets.exceptions import ConnectionClosed

        try:
            return await asyncio.wait_for(self._connection.recv(), timeout)
        except ConnectionClosed:
            raise WebSocketClosed(self.close_code, self.close_reason) from None

    async def receive_json(self, timeout: float = 5.0) -> Any:
        return jsonlib.loads(await self.receive(timeout))

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self._connection.close(code, reason)

    @property
    def close_code(self) -> int | None:
        return self._connection.close_code

    @property
    def close_reason(self) -> str:
        return self._connection.close_reason or ""


class LafTestServer:
    """A laf-py server inside the current event loop, on an ephemeral port::

        async with LafTestServer("functions") as server:
            async with httpx.AsyncClient(base_url=server.url) as client:
                response = await client.get("/fn/hello")

    It uses a fresh temporary data folder unless ``data_dir`` (or ``database_url``) is given,
    and, since function modules are imported into the process, one runs per process at a time.
    """

    def __init__(self, functions_dir: str | Path, **settings: Any) -> None:
        from .server.runner import create_server

        settings.setdefault("host", "127.0.0.1")
        settings.setdefault("port", 0)
        settings.setdefault("shutdown_grace", 5.0)
        self._scratch: tempfile.TemporaryDirectory[str] | None = None
        if "data_dir" not in settings:
            self._scratch = tempfile.TemporaryDirectory(prefix="laf-test-")
            settings["data_dir"] = Path(self._scratch.name)
        functions = Path(functions_dir)
        settings.setdefault("app_dir", functions.parent)
        self.server: Server | UvicornServer = create_server(
            Settings(functions_dir=functions, **settings)
        )

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def ws_url(self) -> str:
        return self.server.url.replace("http", "ws", 1) + "/__websocket__"

    def fn_url(self, name: str) -> str:
        return f"{self.server.url}/fn/{name}"

    async def __aenter__(self) -> LafTestServer:
        await self.server.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.server.stop()
        if self._scratch is not None:
            self._scratch.cleanup()
