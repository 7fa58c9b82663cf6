"""Hot reload of function files, and the ``functions/__init__.py`` start-up hook."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest
import websockets

from laf_py.runtime import StartupError

from .conftest import wait_until, write_function


def text_function(body: str) -> str:
    return f"def main(ctx):\n    return {body!r}\n"


async def answers(http: httpx.AsyncClient, url: str, status: int, text: str | None = None) -> bool:
    """True when ``url`` answers ``status`` (and ``text``, when given)."""
    response = await http.get(url)
    return response.status_code == status and (text is None or response.text == text)


# -- editing, adding and deleting files ---------------------------------------------------


async def test_edit_changes_response(serve, functions_dir: Path, http: httpx.AsyncClient) -> None:
    """An edited file answers with its new code, without a restart."""
    write_function(functions_dir, "greet", text_function("one"))
    async with serve(functions_dir) as server:
        url = server.fn_url("greet")
        assert (await http.get(url)).text == "one"
        write_function(functions_dir, "greet", text_function("three"))
        await wait_until(lambda: answers(http, url, 200, "three"))


async def test_same_size_edits_in_quick_succession(
    serve, functions_dir: Path, http: httpx.AsyncClient
) -> None:
    """Two same-size edits within a second both show: no stale bytecode cache."""
    write_function(functions_dir, "greet", text_function("A1"))
    async with serve(functions_dir) as server:
        url = server.fn_url("greet")
        assert (await http.get(url)).text == "A1"
        write_function(functions_dir, "greet", text_function("B2"))
        await wait_until(lambda: answers(http, url, 200, "B2"))
        # Right after B2 was compiled: same size, very likely the same mtime second.
        write_function(functions_dir, "greet", text_function("C3"))
        await wait_until(lambda: answers(http, url, 200, "C3"))
        assert (await http.get(url)).text == "C3"


async def test_new_file_becomes_reachable(
    serve, functions_dir: Path, http: httpx.AsyncClient
) -> None:
    """A file added while serving answers 200 where there was a 404."""
    write_function(functions_dir, "hello", text_function("hi"))
    async with serve(functions_dir) as server:
        url = server.fn_url("new")
        assert (await http.get(url)).status_code == 404
        write_function(functions_dir, "new", text_function("fresh"))
        await wait_until(lambda: answers(http, url, 200, "fresh"))


async def test_deleted_file_becomes_404(
    serve, functions_dir: Path, http: httpx.AsyncClient
) -> None:
    """A file deleted while serving answers 404."""
    path = write_function(functions_dir, "gone", text_function("here"))
    async with serve(functions_dir) as server:
        url = server.fn_url("gone")
        assert (await http.get(url)).status_code == 200
        path.unlink()
        await wait_until(lambda: answers(http, url, 404))


async def test_file_in_new_nested_folder(
    serve, functions_dir: Path, http: httpx.AsyncClient
) -> None:
    """A file written into a folder created while serving becomes reachable."""
    write_function(functions_dir, "hello", text_function("hi"))
    async with serve(functions_dir) as server:
        url = server.fn_url("team/room/list")
        assert (await http.get(url)).status_code == 404
        write_function(functions_dir, "team/room/list", text_function("nested"))
        await wait_until(lambda: answers(http, url, 200, "nested"))


async def test_folder_moved_in_becomes_reachable(
    serve, functions_dir: Path, tmp_path: Path, http: httpx.AsyncClient
) -> None:
    """A folder of functions moved into the functions folder (mv, git checkout) is served."""
    write_function(functions_dir, "hello", text_function("hi"))
    staging = tmp_path / "staging"
    write_function(staging, "team/room/list", text_function("moved in"))
    async with serve(functions_dir) as server:
        url = server.fn_url("team/room/list")
        assert (await http.get(url)).status_code == 404
        (staging / "team").rename(functions_dir / "team")
        await wait_until(lambda: answers(http, url, 200, "moved in"), timeout=5)


async def test_reload_off_keeps_old_code(
    serve, functions_dir: Path, http: httpx.AsyncClient
) -> None:
    """With reload=False an edited file keeps answering with the code loaded at start."""
    write_function(functions_dir, "greet", text_function("one"))
    async with serve(functions_dir, reload=False) as server:
        url = server.fn_url("greet")
        assert (await http.get(url)).text == "one"
        write_function(functions_dir, "greet", text_function("three"))
        write_function(functions_dir, "added", text_function("new"))
        assert (await http.get(url)).text == "one"
        assert (await http.get(server.fn_url("added"))).status_code == 404


# -- WebSocket across a reload ------------------------------------------------------------

WS_SOURCE = """
async def main(ctx):
    if ctx.method == "WebSocket:message":
        ctx.socket.send("{version} " + ctx.socket.id)
"""


async def test_websocket_survives_reload_and_runs_new_code(serve, functions_dir: Path) -> None:
    """An open socket stays open across an edit; its next message runs the new code."""
    write_function(functions_dir, "__websocket__", WS_SOURCE.format(version="v1"))
    async with serve(functions_dir) as server, websockets.connect(server.ws_url) as ws:

        async def reply() -> str:
            await ws.send("ping")
            return str(await ws.recv())

        version, socket_id = (await reply()).split()
        assert version == "v1"
        write_function(functions_dir, "__websocket__", WS_SOURCE.format(version="v222"))

        async def new_reply() -> str | None:
            answer = await reply()
            return answer if answer.startswith("v222 ") else None

        answer = await wait_until(new_reply)
        assert answer == f"v222 {socket_id}"


# -- files that fail to import ------------------------------------------------------------

BROKEN_SYNTAX = "def main(ctx):\n    value = 1\n    return value +\n"
BROKEN_IMPORT = "def main(ctx):\n    return 1\nimport laf_test_no_such_module_xyz\n"


async def test_syntax_error_fails_only_that_function(
    serve, functions_dir: Path, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A syntax error makes that function 500 and logs its file and line; others still work."""
    write_function(functions_dir, "fragile", text_function("fine"))
    write_function(functions_dir, "steady", text_function("steady"))
    async with serve(functions_dir) as server:
        url = server.fn_url("fragile")
        assert (await http.get(url)).text == "fine"
        caplog.clear()
        (functions_dir / "fragile.py").write_text(BROKEN_SYNTAX)
        await wait_until(lambda: answers(http, url, 500))
        assert (await http.get(server.fn_url("steady"))).text == "steady"
        lines = [
            r.getMessage()
            for r in caplog.records
            if r.name == "laf_py" and r.levelno >= logging.ERROR
        ]
        assert any("fragile.py" in line and "line 3" in line for line in lines), lines


async def test_import_error_is_logged_with_file_and_line(
    serve, functions_dir: Path, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """An import error in a file is logged naming that file and the failing line."""
    write_function(functions_dir, "fragile", text_function("fine"))
    async with serve(functions_dir) as server:
        url = server.fn_url("fragile")
        caplog.clear()
        (functions_dir / "fragile.py").write_text(BROKEN_IMPORT)
        await wait_until(lambda: answers(http, url, 500))
        lines = [
            r.getMessage()
            for r in caplog.records
            if r.name == "laf_py" and r.levelno >= logging.ERROR
        ]
        assert any("fragile.py" in line and "line 3" in line for line in lines), lines


async def test_fixing_a_broken_file_brings_it_back(
    serve, functions_dir: Path, http: httpx.AsyncClient
) -> None:
    """After a syntax error is fixed the function answers 200 again."""
    write_function(functions_dir, "fragile", text_function("fine"))
    async with serve(functions_dir) as server:
        url = server.fn_url("fragile")
        (functions_dir / "fragile.py").write_text(BROKEN_SYNTAX)
        await wait_until(lambda: answers(http, url, 500))
        write_function(functions_dir, "fragile", text_function("fixed!"))
        await wait_until(lambda: answers(http, url, 200, "fixed!"))


# -- state and helpers across reloads -----------------------------------------------------


async def test_shared_survives_reload(serve, functions_dir: Path, http: httpx.AsyncClient) -> None:
    """A value put in cloud.shared by one version is read by the next."""
    write_function(
        functions_dir,
        "memo",
        """
        from laf_py import cloud

        def main(ctx):
            cloud.shared.set("memo", "from v1")
            return "v1"
        """,
    )
    async with serve(functions_dir) as server:
        url = server.fn_url("memo")
        assert (await http.get(url)).text == "v1"
        write_function(
            functions_dir,
            "memo",
            """
            from laf_py import cloud

            def main(ctx):
                return "v2: " + cloud.shared.get("memo", "lost")
            """,
        )
        await wait_until(lambda: answers(http, url, 200, "v2: from v1"))


async def test_helper_module_edit_is_picked_up(
    serve, functions_dir: Path, http: httpx.AsyncClient
) -> None:
    """Editing ``_helpers.py`` changes the answer of a function that imports it."""
    (functions_dir / "_helpers.py").write_text('GREETING = "one"\n')
    write_function(
        functions_dir,
        "greet",
        """
        from laf_functions import _helpers

        def main(ctx):
            return _helpers.GREETING
        """,
    )
    async with serve(functions_dir) as server:
        url = server.fn_url("greet")
        assert (await http.get(url)).text == "one"
        (functions_dir / "_helpers.py").write_text('GREETING = "three"\n')
        await wait_until(lambda: answers(http, url, 200, "three"))


# -- functions/__init__.py ----------------------------------------------------------------

READ_SHARED = """
from laf_py import cloud

def main(ctx):
    return {{"value": cloud.shared.get({key!r})}}
"""


async def test_init_runs_with_init_context(
    serve, functions_dir: Path, http: httpx.AsyncClient
) -> None:
    """``__init__`` main(ctx) gets method "INIT" and function_name "__init__"."""
    write_function(
        functions_dir,
        "__init__",
        """
        from laf_py import cloud

        def main(ctx):
            cloud.shared.set("init", [ctx.method, ctx.function_name])
        """,
    )
    write_function(functions_dir, "read", READ_SHARED.format(key="init"))
    async with serve(functions_dir) as server:
        response = await http.get(server.fn_url("read"))
        assert response.json() == {"value": ["INIT", "__init__"]}


async def test_init_finishes_before_first_request(
    serve, functions_dir: Path, http: httpx.AsyncClient
) -> None:
    """A value set by a slow ``__init__`` is there for the very first request."""
    write_function(
        functions_dir,
        "__init__",
        """
        import asyncio
        from laf_py import cloud

        async def main(ctx):
            await asyncio.sleep(0.2)
            cloud.shared.set("ready", "yes")
        """,
    )
    write_function(functions_dir, "read", READ_SHARED.format(key="ready"))
    async with serve(functions_dir) as server:
        response = await http.get(server.fn_url("read"))
        assert response.json() == {"value": "yes"}


async def test_init_does_not_run_again_on_reload(
    serve, functions_dir: Path, http: httpx.AsyncClient
) -> None:
    """Editing files (``__init__.py`` itself included) does not run ``__init__`` again."""
    init_source = """
        from laf_py import cloud

        def main(ctx):
            cloud.shared.set("runs", cloud.shared.get("runs", 0) + 1){pad}
        """
    write_function(functions_dir, "__init__", init_source.format(pad=""))
    write_function(functions_dir, "runs", READ_SHARED.format(key="runs"))
    async with serve(functions_dir) as server:
        url = server.fn_url("runs")
        assert (await http.get(url)).json() == {"value": 1}
        write_function(functions_dir, "__init__", init_source.format(pad="  # edited"))
        # Written after __init__.py: once its new code answers, a reload saw both edits.
        write_function(functions_dir, "probe", text_function("edited"))
        await wait_until(lambda: answers(http, server.fn_url("probe"), 200, "edited"))
        assert (await http.get(url)).json() == {"value": 1}


async def test_failing_init_stops_startup(serve, functions_dir: Path) -> None:
    """An ``__init__`` that raises makes ``serve(...)`` raise StartupError."""
    write_function(
        functions_dir,
        "__init__",
        """
        def main(ctx):
            raise RuntimeError("no database")
        """,
    )
    with pytest.raises(StartupError, match=r"functions/__init__.py failed: .*no database"):
        async with serve(functions_dir):
            pytest.fail("the server must not start")
