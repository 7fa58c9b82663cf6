"""``laf-py serve`` / ``python -m laf_py serve`` as a user runs it: real child processes."""

from __future__ import annotations

import importlib.util
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from laf_py import ConfigError, Settings

from .conftest import run_to_exit, start_cli, write_function

HELLO = """
def main(ctx):
    return "hello from {where}"
"""


@pytest.fixture
def hello_dir(functions_dir: Path) -> Path:
    write_function(functions_dir, "hello", HELLO.format(where="flag"))
    return functions_dir


def laf_py_script() -> str:
    """The ``laf-py`` console script of this environment."""
    found = shutil.which("laf-py") or str(Path(sys.executable).parent / "laf-py")
    assert Path(found).is_file(), "the laf-py console script is not installed"
    return found


def wait_listening(process: subprocess.Popen[str], timeout: float = 20) -> str:
    """Read the output until the "listening on" line; return the URL."""
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        match = re.search(r"listening on (http://\S+)", line)
        if match:
            return match.group(1)
    process.kill()
    process.wait()
    raise AssertionError("server did not start:\n" + "".join(lines))


# -- starting --------------------------------------------------------------------------------


def test_module_serves_functions(cli_server, hello_dir: Path) -> None:
    """``python -m laf_py serve --functions DIR --port 0`` serves /fn/hello."""
    server = cli_server("--functions", str(hello_dir))
    response = httpx.get(f"{server.url}/fn/hello", timeout=10)
    assert response.status_code == 200
    assert response.text == "hello from flag"


def test_console_script_help() -> None:
    """``laf-py --help`` exits 0 and lists the ``serve`` command."""
    result = subprocess.run([laf_py_script(), "--help"], capture_output=True, text=True, timeout=20)
    assert result.returncode == 0
    assert "serve" in result.stdout


def test_console_script_serve_help_lists_options() -> None:
    """``laf-py serve --help`` exits 0 and lists --functions, --host and --port."""
    result = subprocess.run(
        [laf_py_script(), "serve", "--help"], capture_output=True, text=True, timeout=20
    )
    assert result.returncode == 0
    for option in ("--functions", "--host", "--port"):
        assert option in result.stdout


def test_env_vars_used_without_flags(hello_dir: Path, tmp_path: Path) -> None:
    """LAF_FUNCTIONS and LAF_PORT=0 are used when no flag is given."""
    process = start_cli(
        "serve", env={"LAF_FUNCTIONS": str(hello_dir), "LAF_PORT": "0"}, cwd=tmp_path
    )
    try:
        url = wait_listening(process)
        assert not url.endswith(":0")
        response = httpx.get(f"{url}/fn/hello", timeout=10)
        assert response.text == "hello from flag"
    finally:
        process.kill()
        process.wait()


def test_flag_beats_env_var(cli_server, hello_dir: Path, tmp_path: Path) -> None:
    """``--functions`` wins over LAF_FUNCTIONS."""
    env_dir = tmp_path / "env-functions"
    write_function(env_dir, "hello", HELLO.format(where="env"))
    server = cli_server("--functions", str(hello_dir), env={"LAF_FUNCTIONS": str(env_dir)})
    response = httpx.get(f"{server.url}/fn/hello", timeout=10)
    assert response.text == "hello from flag"


@pytest.mark.parametrize(
    ("choice", "loop"), [("auto", "uvloop"), ("uvloop", "uvloop"), ("asyncio", "asyncio")]
)
def test_event_loop_choice(cli_server, hello_dir: Path, choice: str, loop: str) -> None:
    """--event-loop picks the loop (auto: uvloop, installed with laf-py here); the start-up line
    names it, and the server serves on either."""
    server = cli_server("--functions", str(hello_dir), "--event-loop", choice)
    listening = next(line for line in server.output if "listening on" in line)
    assert f"({loop}," in listening
    assert httpx.get(f"{server.url}/fn/hello", timeout=10).text == "hello from flag"


def test_uvloop_asked_for_but_missing_is_a_config_error(
    hello_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "uvloop" else real_find_spec(name, *a),
    )
    with pytest.raises(ConfigError, match="uvloop is not installed"):
        Settings(functions_dir=hello_dir, event_loop="uvloop").validated()
    assert Settings(functions_dir=hello_dir, event_loop="auto").validated()


# -- bad settings: one line, exit code 2 -------------------------------------------------------

BAD_SETTINGS = [
    pytest.param([], {"LAF_PORT": "abc"}, ("LAF_PORT", "--port"), id="LAF_PORT=abc"),
    pytest.param(["--port", "70000"], {}, ("--port", "LAF_PORT"), id="--port=70000"),
    pytest.param([], {"LAF_TIMEOUT": "-1"}, ("LAF_TIMEOUT", "--timeout"), id="LAF_TIMEOUT=-1"),
    pytest.param([], {"LAF_RELOAD": "maybe"}, ("LAF_RELOAD", "--reload"), id="LAF_RELOAD=maybe"),
    pytest.param(
        [], {"LAF_LOG_LEVEL": "loud"}, ("LAF_LOG_LEVEL", "--log-level"), id="LAF_LOG_LEVEL=loud"
    ),
    pytest.param(
        ["--event-loop", "trio"], {}, ("--event-loop", "LAF_EVENT_LOOP"), id="--event-loop=trio"
    ),
]


@pytest.mark.parametrize(("args", "env", "names"), BAD_SETTINGS)
def test_bad_setting_one_line_exit_2(
    hello_dir: Path, tmp_path: Path, args: list[str], env: dict[str, str], names: tuple[str, ...]
) -> None:
    """A bad value ends start-up with one line naming the setting, exit code 2."""
    code, output = run_to_exit("serve", "--functions", str(hello_dir), *args, env=env, cwd=tmp_path)
    assert code == 2, output
    assert "Traceback" not in output
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    for name in names:
        assert name in lines[0]


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_bad_functions_folder_one_line_exit_2(tmp_path: Path, kind: str) -> None:
    """--functions at a missing path or at a file: one line naming the option, exit code 2."""
    if kind == "missing":
        target = tmp_path / "does" / "not" / "exist"
    else:
        target = tmp_path / "hello.py"
        target.write_text(HELLO.format(where="file"))
    code, output = run_to_exit("serve", "--functions", str(target), "--port", "0", cwd=tmp_path)
    assert code == 2, output
    assert "Traceback" not in output
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert "--functions" in lines[0]
    assert "LAF_FUNCTIONS" in lines[0]
    assert str(target) in lines[0]


# -- failures once the settings are fine: exit code 1 ---------------------------------------


def test_port_in_use_one_line_exit_1(hello_dir: Path, tmp_path: Path) -> None:
    """A port already taken: one "cannot listen" line, exit code 1, no traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, output = run_to_exit(
            "serve",
            "--functions",
            str(hello_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            cwd=tmp_path,
        )
    assert code == 1, output
    assert "Traceback" not in output
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert lines[0].startswith(f"laf-py: error: cannot listen on 127.0.0.1:{port}: ")


def test_failing_init_exit_1(hello_dir: Path, tmp_path: Path) -> None:
    """An ``__init__`` that raises: exit code 1, last line is the one-line error."""
    write_function(
        hello_dir,
        "__init__",
        """
        def main(ctx):
            raise RuntimeError("no database")
        """,
    )
    code, output = run_to_exit("serve", "--functions", str(hello_dir), "--port", "0", cwd=tmp_path)
    assert code == 1, output
    last = output.strip().splitlines()[-1]
    assert last.startswith("laf-py: error: functions/__init__.py failed: ")
    assert "no database" in last
    assert "listening on" not in output
