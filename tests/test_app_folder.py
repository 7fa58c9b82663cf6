"""The app folder as a newcomer meets it: ``laf-py init``, where the data goes, what start-up
prints, and the data folder of an older laf-py still found. Real ``laf-py`` child processes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import jwt

from laf_py import Settings

from .conftest import REPO, run_to_exit, wait_until, write_function

HELLO = "def main(ctx):\n    return 'hi'\n"


async def test_data_lives_in_the_app_folder_not_beside_functions(cli_server, tmp_path: Path):
    """``--functions .`` from inside the functions folder: the data goes to the app folder
    (the current folder), never to its parent, a sibling app's folder."""
    app = tmp_path / "apps" / "one"
    write_function(app, "hello", HELLO)  # the functions are the app folder itself here
    server = cli_server("--functions", ".", cwd=app)
    async with httpx.AsyncClient() as http:
        assert (await http.get(server.url + "/fn/hello")).text == "hi"
    assert (app / ".laf" / "secret").is_file()
    assert not (tmp_path / "apps" / ".laf").exists()


async def test_app_dir_flag_places_functions_and_data(cli_server, tmp_path: Path):
    app = tmp_path / "app"
    write_function(app / "functions", "hello", HELLO)
    server = cli_server("--app-dir", str(app), cwd=tmp_path)
    async with httpx.AsyncClient() as http:
        assert (await http.get(server.url + "/fn/hello")).text == "hi"
    assert (app / ".laf" / "laf.db").is_file()
    assert not (tmp_path / ".laf").exists()


async def test_the_banner_says_where_everything_is(cli_server, tmp_path: Path):
    app = tmp_path / "app"
    write_function(app / "functions", "hello", HELLO)
    write_function(app / "functions", "__websocket__", "async def main(ctx):\n    pass\n")
    write_function(app / "functions", "broken", "def main(ctx:\n")
    server = cli_server(cwd=app)
    await wait_until(lambda: "database" in server.log)
    log = server.log
    url = server.url
    header = rf"laf-py listening on {re.escape(url)} \((uvloop|asyncio), hot reload on\)"
    assert re.search(header, log)
    assert f"functions  {url}/fn/<name>: 1 (hello)" in log
    assert re.search(r"FAILED     broken: functions/broken.py, line 1: SyntaxError", log)
    assert f"websocket  {url.replace('http', 'ws')}/__websocket__" in log
    assert f"console    {url}/_/console (from this machine only)" in log
    assert f"app        {app.resolve()}" in log
    assert f"data       {(app / '.laf').resolve()}" in log
    assert f"database   sqlite+aiosqlite:///{(app / '.laf' / 'laf.db').resolve()}" in log
    # a laptop with one process needs no cluster secret advice
    assert "every node of a cluster" not in log


async def test_a_cluster_node_without_a_secret_is_warned(
    cli_server, tmp_path: Path, redis_url: str, cluster: str
):
    """With Redis (other nodes may join) signing with the folder's own secret is worth a
    warning: every node must sign with the same one. With --secret, no warning."""
    write_function(tmp_path / "functions", "hello", HELLO)
    args = ("--redis-url", redis_url, "--cluster", cluster)
    warned = cli_server(*args, cwd=tmp_path)
    await wait_until(lambda: "database" in warned.log)
    assert warned.log.count("every node of a cluster needs the same one") == 1
    assert str((tmp_path / ".laf" / "secret").resolve()) in warned.log
    quiet = cli_server(*args, "--secret", "s" * 40, cwd=tmp_path)
    await wait_until(lambda: "database" in quiet.log)
    assert "every node of a cluster" not in quiet.log


async def test_database_password_is_hidden_in_the_banner(tmp_path: Path):
    """A database that cannot be reached fails start-up; its password appears nowhere."""
    write_function(tmp_path / "functions", "hello", HELLO)
    url = "postgresql://laf:s3cr3t-pw@127.0.0.1:1/nothing"
    code, output = run_to_exit("serve", "--port", "0", "--database-url", url, cwd=tmp_path)
    assert code == 1
    assert "s3cr3t-pw" not in output


async def test_an_older_data_folder_beside_functions_is_still_used(cli_server, tmp_path: Path):
    """An app set up by an older laf-py keeps its data beside the functions folder: it is
    found and used (its secret still signs tokens), and the banner says so."""
    app = tmp_path / "app"
    functions = app / "src" / "functions"
    write_function(functions, "whoami", "def main(ctx):\n    return ctx.user or {}\n")
    old_secret = "an-old-secret-of-more-than-thirty-two-characters"
    (app / "src" / ".laf").mkdir()
    (app / "src" / ".laf" / "secret").write_text(old_secret + "\n")
    server = cli_server("--functions", str(functions), cwd=app)
    await wait_until(lambda: "database" in server.log)
    assert "an older laf-py's folder beside the functions folder, still used" in server.log
    token = jwt.encode({"uid": "ada"}, old_secret, algorithm="HS256")
    async with httpx.AsyncClient() as http:
        answer = await http.get(
            server.url + "/fn/whoami", headers={"Authorization": f"Bearer {token}"}
        )
    assert answer.json()["uid"] == "ada"
    assert not (app / ".laf").exists()


def test_settings_fill_in_the_parts_of_the_app_folder(tmp_path: Path):
    settings = Settings(app_dir=tmp_path)
    assert settings.functions == tmp_path / "functions"
    assert settings.data == tmp_path / ".laf"
    moved = Settings(app_dir=tmp_path, functions_dir=tmp_path / "src", data_dir=tmp_path / "d")
    assert (moved.functions, moved.data) == (tmp_path / "src", tmp_path / "d")


def test_init_creates_an_app_that_passes_its_own_tests(tmp_path: Path):
    """``laf-py init myapp``, then a plain ``pytest`` in it, with no plugin at all."""
    code, output = run_to_exit("init", "myapp", cwd=tmp_path)
    assert code == 0, output
    app = tmp_path / "myapp"
    made = (
        "functions/hello.py",
        "functions/__websocket__.py",
        "functions/push.py",
        "public/index.html",
    )
    for name in made:
        assert (app / name).is_file(), output
    assert (app / "tests" / "test_app.py").is_file()
    assert (app / "README.md").is_file() and (app / ".gitignore").is_file()
    assert "cd myapp && laf-py serve" in output
    tests = run_pytest(app)
    assert tests.returncode == 0, tests.stdout
    assert "4 passed" in tests.stdout
    assert not (app / ".laf").exists()  # the tests used a data folder of their own


def test_init_refuses_to_overwrite_anything(tmp_path: Path):
    write_function(tmp_path / "functions", "hello", HELLO)
    code, output = run_to_exit("init", str(tmp_path), cwd=tmp_path)
    assert code == 1
    assert "not overwriting existing files" in output and "hello.py" in output
    assert (tmp_path / "functions" / "hello.py").read_text() == HELLO
    assert not (tmp_path / "functions" / "push.py").exists()  # nothing written at all


def test_the_readme_testing_section_runs_as_written(tmp_path: Path):
    """The README's "Testing your own functions" code, in an app made by ``laf-py init``."""
    assert run_to_exit("init", "app", cwd=tmp_path)[0] == 0
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Testing your own functions") :]
    start = section.index("```python\n") + len("```python\n")
    code = section[start : section.index("\n```", start)]
    (tmp_path / "app" / "tests" / "test_readme.py").write_text(code)
    tests = run_pytest(tmp_path / "app", "tests/test_readme.py")
    assert tests.returncode == 0, tests.stdout
    assert re.search(r"\d+ passed", tests.stdout)


def run_pytest(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``pytest`` in ``folder`` as a user runs it: its own rootdir, no plugins loaded."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("LAF_", "PYTEST_"))}
    environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=folder,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )
