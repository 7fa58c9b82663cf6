"""Hot reload of function files, and the ``functions/__init__.py`` start-up hook."""

from __future__ import annotations

import asyncio
import logging
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import websockets

from laf_py import cloud
from laf_py.core.imports import imported_modules
from laf_py.runtime import StartupError

from .conftest import CliServer, wait_until, write_function


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
    serve,
    functions_dir: Path,
    tmp_path: Path,
    http: httpx.AsyncClient,
    cli_server: Callable[..., CliServer],
) -> None:
    """With reload=False an edited file keeps answering with the code loaded at start, also
    once a server with reload on, watching the same folder, has picked up the edits."""
    write_function(functions_dir, "greet", text_function("one"))
    async with serve(functions_dir, reload=False) as server:
        url = server.fn_url("greet")
        assert (await http.get(url)).text == "one"
        # The witness: `laf-py serve` with reload on, over the same folder, in its own process
        # (one process hosts one functions folder).
        witness = cli_server(
            *("--functions", str(functions_dir), "--reload", "true"),
            *("--database-url", f"sqlite:///{tmp_path / 'witness.db'}"),
        )
        assert (await http.get(f"{witness.url}/fn/greet")).text == "one"
        write_function(functions_dir, "greet", text_function("three"))
        write_function(functions_dir, "added", text_function("new"))
        await wait_until(lambda: answers(http, f"{witness.url}/fn/added", 200, "new"))
        assert (await http.get(f"{witness.url}/fn/greet")).text == "three"
        # One more full reload cycle of the witness (inotify, debounce, import, swap): by its
        # end a reloading server would have long applied the first edits.
        write_function(functions_dir, "probe", text_function("second"))
        await wait_until(lambda: answers(http, f"{witness.url}/fn/probe", 200, "second"))
        assert (await http.get(url)).text == "one"
        assert (await http.get(server.fn_url("added"))).status_code == 404
        assert (await http.get(server.fn_url("probe"))).status_code == 404


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


async def test_init_change_is_logged_and_not_applied(
    serve, functions_dir: Path, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Editing ``__init__.py`` logs one line saying it runs again at the next start; the file
    is not imported again."""
    init_source = recorded("def main(ctx):\n    pass{pad}\n")
    write_function(functions_dir, "__init__", init_source.format(pad=""))
    async with serve(functions_dir) as server:
        assert imports_so_far() == ["__init__"]
        caplog.clear()
        write_function(functions_dir, "__init__", init_source.format(pad="  # edited"))
        # Written after __init__.py: once its new code answers, a reload saw both edits.
        write_function(functions_dir, "probe", text_function("edited"))
        await wait_until(lambda: answers(http, server.fn_url("probe"), 200, "edited"))
        lines = [r.getMessage() for r in caplog.records if "__init__.py" in r.getMessage()]
        assert len(lines) == 1, lines
        assert "next start" in lines[0]
        assert imports_so_far() == ["__init__"]


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


# -- what a change reloads ----------------------------------------------------------------

# Each module records its import (module name, thread) in cloud.shared["imports"].
RECORD_IMPORT = """
import threading
from laf_py import cloud
cloud.shared.setdefault("imports", []).append((__name__, threading.current_thread().name))
"""


def recorded(source: str) -> str:
    return RECORD_IMPORT + textwrap.dedent(source)


def imports_so_far() -> list[str]:
    """The modules imported since the server started, in order, without the package prefix."""
    return [name.removeprefix("laf_functions.") for name, _ in cloud.shared.get("imports", [])]


async def test_editing_one_file_reimports_only_that_file(
    serve, functions_dir: Path, http: httpx.AsyncClient
) -> None:
    """Editing, adding or deleting a file imports no other file again; imports at start-up
    and on reload both run in the import thread, never on the event loop."""
    for name in ("alpha", "beta"):
        write_function(functions_dir, name, recorded(text_function(f"{name} v1")))
    async with serve(functions_dir) as server:
        assert imports_so_far() == ["alpha", "beta"]
        write_function(functions_dir, "alpha", recorded(text_function("alpha v2")))
        await wait_until(lambda: answers(http, server.fn_url("alpha"), 200, "alpha v2"))
        assert imports_so_far() == ["alpha", "beta", "alpha"]
        write_function(functions_dir, "gamma", recorded(text_function("gamma v1")))
        await wait_until(lambda: answers(http, server.fn_url("gamma"), 200, "gamma v1"))
        (functions_dir / "gamma.py").unlink()
        await wait_until(lambda: answers(http, server.fn_url("gamma"), 404))
        assert imports_so_far() == ["alpha", "beta", "alpha", "gamma"]
        assert (await http.get(server.fn_url("beta"))).text == "beta v1"
        threads = {thread for _, thread in cloud.shared["imports"]}
        assert all(thread.startswith("laf-import") for thread in threads), threads


HELPER_DEPENDENTS = {
    # the helper everything below depends on
    "_db": "VALUE = {value!r}\n",
    # every way of importing it, directly and through another helper
    "direct": "from laf_functions import _db\n\ndef main(ctx):\n    return _db.VALUE\n",
    "dotted": "import laf_functions._db\n\ndef main(ctx):\n    return laf_functions._db.VALUE\n",
    "relative": "from . import _db\n\ndef main(ctx):\n    return _db.VALUE\n",
    "_lib/cache": "from .. import _db\n\ndef value():\n    return _db.VALUE\n",
    "transitive": "from ._lib import cache\n\ndef main(ctx):\n    return cache.value()\n",
    "nested/deep": "from .._lib.cache import value\n\ndef main(ctx):\n    return value()\n",
    "lazy": "def main(ctx):\n    from laf_functions._db import VALUE\n    return VALUE\n",
    # and files that have nothing to do with it
    "_other": "VALUE = 'other'\n",
    "unrelated": "from laf_functions import _other\n\ndef main(ctx):\n    return _other.VALUE\n",
}
USERS_OF_DB = ["direct", "dotted", "relative", "transitive", "nested/deep", "lazy"]


async def test_helper_edit_reloads_exactly_its_importers(
    serve, functions_dir: Path, http: httpx.AsyncClient
) -> None:
    """Editing ``_db.py`` imports again ``_db`` and the files that import it, directly (every
    import form) or through ``_lib/cache.py``, and nothing else."""
    for name, source in HELPER_DEPENDENTS.items():
        write_function(functions_dir, name, recorded(source.format(value="one")))
    async with serve(functions_dir) as server:
        for name in USERS_OF_DB:
            assert (await http.get(server.fn_url(name))).text == "one", name
        assert (await http.get(server.fn_url("unrelated"))).text == "other"
        before = len(imports_so_far())
        write_function(functions_dir, "_db", recorded(HELPER_DEPENDENTS["_db"].format(value="two")))
        for name in USERS_OF_DB:
            await wait_until(lambda name=name: answers(http, server.fn_url(name), 200, "two"))
        again = imports_so_far()[before:]
        assert sorted(again) == sorted(
            ["_db", "_lib.cache", *(name.replace("/", ".") for name in USERS_OF_DB)]
        ), again
        assert (await http.get(server.fn_url("unrelated"))).text == "other"


async def test_broken_helper_fails_its_importers_until_fixed(
    serve, functions_dir: Path, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A helper that stops importing fails the functions that import it, with its own file
    and line in the log; fixing it brings them back."""
    (functions_dir / "_db.py").write_text("VALUE = 'one'\n")
    write_function(functions_dir, "user", HELPER_DEPENDENTS["direct"])
    write_function(functions_dir, "steady", text_function("steady"))
    async with serve(functions_dir) as server:
        url = server.fn_url("user")
        assert (await http.get(url)).text == "one"
        caplog.clear()
        (functions_dir / "_db.py").write_text("VALUE = (\n")
        await wait_until(lambda: answers(http, url, 500))
        lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert any("_db.py" in line and "line 1" in line for line in lines), lines
        assert (await http.get(server.fn_url("steady"))).text == "steady"
        (functions_dir / "_db.py").write_text("VALUE = 'fixed'\n")
        await wait_until(lambda: answers(http, url, 200, "fixed"))


def test_imports_are_read_from_the_source() -> None:
    """Every static import form counts, also inside functions; importlib calls do not."""
    source = """
import os
import laf_functions._db
import laf_functions.user.profile as profile
from laf_functions import _a, _b as bee
from laf_functions._lib import cache
from . import _sibling
from ._lib.x import y
from .. import up

def main(ctx):
    from laf_functions import _lazy
    return importlib.import_module("laf_functions._dynamic")
"""
    found = imported_modules(source, "laf_functions.team.page", is_package=False)
    expected = {
        "laf_functions.team",  # its own package runs first
        "laf_functions._db",
        "laf_functions.user",
        "laf_functions.user.profile",
        "laf_functions._a",
        "laf_functions._b",
        "laf_functions._lib",
        "laf_functions._lib.cache",
        "laf_functions.team._sibling",
        "laf_functions.team._lib.x",
        "laf_functions.up",
        "laf_functions._lazy",
    }
    assert expected <= found, expected - found
    assert "laf_functions._dynamic" not in found
    assert all(name.startswith("laf_functions.") for name in found)
    # In a package (team.py beside team/), `.` is the package itself.
    assert "laf_functions.team._sibling" in imported_modules(
        "from . import _sibling", "laf_functions.team", is_package=True
    )
    assert imported_modules("def broken(:", "laf_functions.x", is_package=False) == set()


# -- a slow import does not stall the server ----------------------------------------------

SLOW_IMPORT = """
import time
from laf_py import cloud

cloud.shared.set("slow_started", time.monotonic())
time.sleep({seconds})
cloud.shared.set("slow_finished", time.monotonic())

def main(ctx):
    return "slow v2"
"""


async def test_slow_import_does_not_stall_other_calls(
    serve, functions_dir: Path, http: httpx.AsyncClient
) -> None:
    """While a changed file takes 1.5 s to import, other calls are answered at once, and the
    changed function answers with its old code until the import is done."""
    write_function(functions_dir, "slow", text_function("slow v1"))
    write_function(functions_dir, "fast", "async def main(ctx):\n    return 'fast'\n")
    async with serve(functions_dir) as server:
        calls: list[tuple[float, float]] = []  # (sent, answered)

        async def keep_calling() -> None:
            while True:
                sent = time.monotonic()
                assert (await http.get(server.fn_url("fast"))).text == "fast"
                calls.append((sent, time.monotonic()))

        caller = asyncio.create_task(keep_calling())
        try:
            write_function(functions_dir, "slow", SLOW_IMPORT.format(seconds=1.5))
            await wait_until(lambda: cloud.shared.has("slow_started"))
            assert (await http.get(server.fn_url("slow"))).text == "slow v1"
            await wait_until(lambda: answers(http, server.fn_url("slow"), 200, "slow v2"))
        finally:
            caller.cancel()
        started, finished = cloud.shared["slow_started"], cloud.shared["slow_finished"]
        during = [answered - sent for sent, answered in calls if started <= sent < finished]
        assert len(during) >= 5, calls
        assert max(during) < 0.5, max(during)


# -- on_unload ----------------------------------------------------------------------------

UNLOAD_FETCHING = """
import httpx
from laf_functions import _res

def main(ctx):
    _res.URL.setdefault("self", ctx.query.get("self"))
    return "v1"

async def on_unload():
    # By now the new version serves this function.
    async with httpx.AsyncClient() as client:
        answer = (await client.get(_res.URL["self"])).text
    with open({events!r}, "a") as events:
        events.write(f"keeper-v1 saw {{answer}}\\n")
"""

UNLOAD_ASYNC = """
from laf_functions import _res

def main(ctx):
    return "v2"

async def on_unload():
    with open({events!r}, "a") as events:
        events.write("keeper-v2\\n")
"""

UNLOAD_PLAIN = """
import threading
URL = {{}}

def main(ctx):
    return "{tag}"

def on_unload():
    assert threading.current_thread() is not threading.main_thread()
    with open({events!r}, "a") as events:
        events.write("{tag}\\n")
"""


async def test_on_unload_runs_after_replacement_deletion_and_shutdown(
    serve, functions_dir: Path, tmp_path: Path, http: httpx.AsyncClient
) -> None:
    """``on_unload()`` (async or plain def) of the old module runs once the new version serves;
    of a deleted file once it is gone; of every module at shutdown, importers first."""
    events = tmp_path / "events.txt"
    events.write_text("")

    def lines() -> list[str]:
        return events.read_text().splitlines()

    write_function(functions_dir, "_res", UNLOAD_PLAIN.format(events=str(events), tag="res"))
    write_function(functions_dir, "keeper", UNLOAD_FETCHING.format(events=str(events)))
    write_function(functions_dir, "gone", UNLOAD_PLAIN.format(events=str(events), tag="gone"))
    async with serve(functions_dir) as server:
        url = server.fn_url("keeper")
        assert (await http.get(url, params={"self": url})).text == "v1"
        write_function(functions_dir, "keeper", UNLOAD_ASYNC.format(events=str(events)))
        await wait_until(lambda: answers(http, url, 200, "v2"))
        await wait_until(lambda: lines() == ["keeper-v1 saw v2"])
        (functions_dir / "gone.py").unlink()
        await wait_until(lambda: answers(http, server.fn_url("gone"), 404))
        await wait_until(lambda: lines() == ["keeper-v1 saw v2", "gone"])
    assert lines() == ["keeper-v1 saw v2", "gone", "keeper-v2", "res"]


async def test_on_unload_errors_and_overruns_are_logged(
    serve, functions_dir: Path, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """An ``on_unload()`` that raises, or outlasts the time limit, is logged naming its file;
    the server goes on serving the new code."""
    write_function(
        functions_dir,
        "fragile",
        """
        def main(ctx):
            return "v1"

        def on_unload():
            raise RuntimeError("cleanup exploded")
        """,
    )
    write_function(
        functions_dir,
        "stuck",
        """
        import asyncio

        def main(ctx):
            return "v1"

        async def on_unload():
            await asyncio.sleep(60)
        """,
    )
    async with serve(functions_dir, timeout=0.5) as server:
        caplog.clear()
        write_function(functions_dir, "fragile", text_function("v2"))
        write_function(functions_dir, "stuck", text_function("v2"))

        def logged(file: str, text: str) -> list[logging.LogRecord]:
            return [
                r
                for r in caplog.records
                if r.levelno >= logging.ERROR and file in r.getMessage() and text in r.getMessage()
            ]

        await wait_until(lambda: logged("stuck.py", "did not finish within 0.5s"))
        failed = await wait_until(lambda: logged("fragile.py", "on_unload() failed"))
        assert failed[0].exc_info is not None
        assert "cleanup exploded" in str(failed[0].exc_info[1])
        assert (await http.get(server.fn_url("fragile"))).text == "v2"
        assert (await http.get(server.fn_url("stuck"))).text == "v2"
