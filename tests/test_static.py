"""The app's website: ``public/`` served at ``/`` on a real server, raw requests for the paths
a client library would tidy up, and the page shown when there is no public folder."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from laf_py import ConfigError, Settings

from .conftest import write_function
from .test_properties import PATH_FRAGMENTS

pytestmark = pytest.mark.both_servers

HELLO = "def main(ctx):\n    return 'hello'\n"
SOCKET = "async def main(ctx):\n    pass\n"
INDEX = "<!doctype html><title>home</title>public-index"
OUTSIDE = "outside-the-public-folder"


@pytest.fixture
def app(tmp_path: Path) -> Path:
    """An app folder: functions, and a public/ with a page, assets, a folder with and one
    without an index, a dot file, a symlink out, and a file beside public/ it must not serve."""
    write_function(tmp_path / "functions", "hello", HELLO)
    write_function(tmp_path / "functions", "__websocket__", SOCKET)
    public = tmp_path / "public"
    (public / "docs").mkdir(parents=True)
    (public / "empty").mkdir()
    (public / "index.html").write_text(INDEX)
    (public / "app.js").write_text("console.log('public-js')")
    (public / "style.css").write_text("body{}/*public-css*/")
    (public / "logo.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    (public / "docs" / "index.html").write_text("public-docs")
    (public / ".env").write_text(OUTSIDE)
    (public / "fn").mkdir()
    (public / "fn" / "hello").write_text("a file that a function must beat")
    (public / "_").mkdir()
    (public / "_" / "healthz").write_text("a file that /_/ must beat")
    (tmp_path / "secret.txt").write_text(OUTSIDE)
    (public / "out").symlink_to(tmp_path / "secret.txt")
    (public / "outdir").symlink_to(tmp_path / "functions", target_is_directory=True)
    return tmp_path


async def raw_get(url: str, target: str, method: str = "GET", **headers: str) -> tuple[int, str]:
    """Send ``target`` exactly as given (no normalising of ``..`` or ``%2f``): (status, body)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode("utf-8", "replace")


async def test_files_are_served_with_their_types_and_revalidated(serve, http, app: Path) -> None:
    async with serve(app / "functions") as server:
        page = await http.get(server.url + "/")
        assert page.status_code == 200 and page.text == INDEX
        assert page.headers["content-type"].startswith("text/html")
        assert page.headers["cache-control"] == "no-cache"
        for path, kind in [
            ("/app.js", "javascript"),
            ("/style.css", "text/css"),
            ("/logo.svg", "image/svg+xml"),
            ("/index.html", "text/html"),
        ]:
            response = await http.get(server.url + path)
            assert response.status_code == 200, path
            assert kind in response.headers["content-type"], path

        etag, modified = page.headers["etag"], page.headers["last-modified"]
        again = await http.get(server.url + "/", headers={"If-None-Match": etag})
        assert again.status_code == 304 and again.content == b""
        since = await http.get(server.url + "/", headers={"If-Modified-Since": modified})
        assert since.status_code == 304
        head = await http.head(server.url + "/app.js")
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == str(len("console.log('public-js')"))


async def test_a_changed_file_is_served_at_once(serve, http, app: Path) -> None:
    """no-cache: the browser asks each time, and a new deploy is a new ETag, not a 304."""
    async with serve(app / "functions") as server:
        first = await http.get(server.url + "/app.js")
        (app / "public" / "app.js").write_text("console.log('second deploy')")
        second = await http.get(
            server.url + "/app.js", headers={"If-None-Match": first.headers["etag"]}
        )
        assert second.status_code == 200 and "second deploy" in second.text


async def test_folders_answer_their_index_and_never_a_listing(serve, http, app: Path) -> None:
    async with serve(app / "functions") as server:
        docs = await http.get(server.url + "/docs/")
        assert docs.status_code == 200 and docs.text == "public-docs"
        bare = await http.get(server.url + "/docs")
        assert bare.status_code == 301 and bare.headers["location"] == "/docs/"
        empty = await http.get(server.url + "/empty/")
        assert empty.status_code == 404
        assert empty.json()["error"] == "No file or route for /empty/"
        assert (await http.get(server.url + "/nope.html")).status_code == 404


@pytest.mark.parametrize(
    "target",
    [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/..%2fsecret.txt",
        "/docs/..%2f..%2fsecret.txt",
        "/%2e%2e%2fsecret.txt",
        "/out",  # a symlink to a file outside
        "/outdir/hello.py",  # a symlink to a folder outside
        "/.env",
        "/%2eenv",
        "/docs/../.env",
        "/index.html%00.js",
        "//secret.txt",
    ],
)
async def test_nothing_outside_the_folder_and_no_dot_files(serve, app: Path, target: str) -> None:
    async with serve(app / "functions") as server:
        status, body = await raw_get(server.url, target)
    assert status in (400, 404), (status, body)
    assert OUTSIDE not in body and "def main" not in body


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    st.lists(st.sampled_from([*PATH_FRAGMENTS, "secret.txt", "out", "outdir", ".env"]), max_size=6)
)
def test_no_path_reaches_a_file_outside(static_server: Any, pieces: list[str]) -> None:
    """Any mix of the fragments used against function names: a 200 is always a file of
    public/, never the file beside it, the dot file, or a function's source."""
    target = "/" + "".join(pieces)
    try:
        target.encode("latin-1")
    except UnicodeEncodeError:
        target = "/" + "".join(p.encode().decode("latin-1") for p in pieces)
    status, body = static_server.run(raw_get(static_server.url, target))
    assert OUTSIDE not in body and "def main" not in body, target
    if status == 200:
        assert body in static_server.public_bodies, target


class _StaticServer:
    """A server on its own loop in a thread, for hypothesis (which calls a sync test)."""

    def __init__(self, app: Path) -> None:
        import threading

        from laf_py.testing import LafTestServer

        self.loop = asyncio.new_event_loop()
        self.public_bodies = {
            path.read_text()
            for path in (app / "public").rglob("*")
            if path.is_file() and not path.name.startswith(".")
        }
        ready = threading.Event()
        self._server = LafTestServer(app / "functions", data_dir=app / ".laf")

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self._server.__aenter__())
            ready.set()
            self.loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert ready.wait(20)
        self.url = self._server.url

    def run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(20)

    def close(self) -> None:
        self.run(self._server.__aexit__(None, None, None))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@pytest.fixture
def static_server(app: Path) -> Any:
    server = _StaticServer(app)
    yield server
    server.close()


async def test_functions_websocket_and_admin_paths_win_over_files(serve, http, app: Path) -> None:
    async with serve(app / "functions") as server:
        assert (await http.get(server.url + "/fn/hello")).text == "hello"
        health = await http.get(server.url + "/_/healthz")
        assert health.json()["status"] == "ok"
        admin = await http.get(server.url + "/_/anything")
        assert admin.status_code == 404 and "a file" not in admin.text
        upgrade = await http.get(server.url + "/__websocket__")
        assert upgrade.status_code == 400  # a handshake is expected here, not a file


async def test_spa_fallback_answers_routes_with_the_index(serve, http, app: Path) -> None:
    async with serve(app / "functions") as server:
        assert (await http.get(server.url + "/settings/profile")).status_code == 404
    async with serve(app / "functions", spa_fallback=True) as server:
        route = await http.get(server.url + "/settings/profile")
        assert route.status_code == 200 and route.text == INDEX
        assert (
            await http.get(server.url + "/missing.js")
        ).status_code == 404  # a file, not a route
        assert (await http.get(server.url + "/app.js")).text == "console.log('public-js')"
        assert (await http.get(server.url + "/fn/nope")).status_code == 404  # functions still win
        status, body = await raw_get(server.url, "/../secret.txt")
        assert status == 404 and OUTSIDE not in body


async def test_without_a_public_folder_the_root_names_the_urls(serve, http, tmp_path: Path) -> None:
    write_function(tmp_path / "functions", "hello", HELLO)
    write_function(tmp_path / "functions", "user/profile", HELLO)
    write_function(tmp_path / "functions", "__websocket__", SOCKET)
    async with serve(tmp_path / "functions") as server:
        url = server.url
        root = await http.get(url + "/")
        unknown = await http.get(url + "/index.html")
    assert root.status_code == 200 and root.headers["content-type"].startswith("text/html")
    assert f'href="{url}/fn/hello"' in root.text
    assert "/fn/user/profile" in root.text
    assert url.replace("http", "ws") + "/__websocket__" in root.text
    assert str(tmp_path / "public") in root.text  # where to put a page of one's own
    assert unknown.status_code == 404 and unknown.json()["error"]


async def test_public_flag_points_anywhere(serve, http, app: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("elsewhere")
    async with serve(app / "functions", public_dir=site) as server:
        assert (await http.get(server.url + "/")).text == "elsewhere"


def test_a_public_folder_that_is_not_there_stops_start_up(tmp_path: Path) -> None:
    write_function(tmp_path / "functions", "hello", HELLO)
    with pytest.raises(
        ConfigError, match=r"public folder .* does not exist; create it, or point --public"
    ):
        Settings.load({"app_dir": str(tmp_path), "public_dir": str(tmp_path / "nope")}, {})
