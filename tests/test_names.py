"""Which names reach a function over HTTP: reserved names, traversal tricks, symlinks.

HTTPX normalises ``..`` out of URLs before sending them, so the traversal tests speak HTTP/1.1
over a plain socket (``raw_get``) to put the exact request target on the wire. Each of them
checks the 404 came from the function route (``"Function ..."``) rather than from a normalised
path falling through to the catch-all route, which proves the raw path reached the server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from .conftest import write_function

SECRET = "TOP SECRET"


async def raw_get(url: str, target: str) -> tuple[int, dict[str, str], bytes]:
    """Send ``GET <target> HTTP/1.1`` byte for byte to the server at ``url``."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        request = f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n"
        writer.write(request.encode("latin-1"))
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def assert_function_404(status: int, headers: dict[str, str], body: bytes) -> dict[str, Any]:
    """A 404 JSON error from the function route, with matching request ids."""
    assert status == 404, body
    assert SECRET.encode() not in body
    payload = json.loads(body)
    assert set(payload) == {"error", "request_id"}
    assert payload["error"].startswith("Function "), payload  # not "No route for ..."
    assert headers["x-request-id"] == payload["request_id"]
    return payload


@pytest.fixture
def tree(functions_dir: Path) -> Path:
    """A public ``hello``, ``user/profile`` and, outside the folder, a ``secret.py``."""
    write_function(functions_dir, "hello", "def main(ctx):\n    return 'hello'\n")
    write_function(functions_dir, "user/profile", "def main(ctx):\n    return 'profile'\n")
    write_function(functions_dir.parent, "secret", f"def main(ctx):\n    return {SECRET!r}\n")
    (functions_dir.parent / "outside").mkdir()
    write_function(
        functions_dir.parent, "outside/secret", f"def main(ctx):\n    return {SECRET!r}\n"
    )
    return functions_dir


# -- reserved and private names ------------------------------------------------------------

PRIVATE_FILES = {
    "__websocket__": "def main(ctx):\n    return 'ws'\n",
    "__init__": "def main(ctx):\n    return None\n",
    "__interceptor__": "async def main(ctx, next):\n    return await next(ctx)\n",
    "_helper": "def main(ctx):\n    return 'helper'\n",
    "dir/_private": "def main(ctx):\n    return 'private'\n",
    "_private/thing": "def main(ctx):\n    return 'thing'\n",
}


@pytest.mark.parametrize("name", sorted(PRIVATE_FILES))
async def test_names_starting_with_underscore_are_404(serve, http, tree, name) -> None:
    """A working file is unreachable when any segment of its name starts with ``_``."""
    write_function(tree, name, PRIVATE_FILES[name])
    async with serve(tree) as server:
        assert (await http.get(server.fn_url("hello"))).status_code == 200
        response = await http.get(server.fn_url(name))
        assert_function_404(response.status_code, response.headers, response.content)


async def test_percent_encoded_underscores_are_still_private(serve, tree) -> None:
    """``%5F%5Fhelper`` decodes to ``__helper`` and is refused like the plain name."""
    write_function(tree, "__helper", "def main(ctx):\n    return 'helper'\n")
    async with serve(tree) as server:
        assert_function_404(*await raw_get(server.url, "/fn/%5F%5Fhelper"))


# -- traversal -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "/fn/../secret",
        "/fn/user/../../secret",
        "/fn/%2e%2e/secret",
        "/fn/%2E%2E/secret",
        "/fn/..%2fsecret",
        "/fn/%2e%2e%2fsecret",
        "/fn/..%5csecret",
        "/fn/../outside/secret",
        "/fn//etc/passwd",
        "/fn/%2fetc%2fpasswd",
        "/fn/hello.py",
        "/fn/hello//",
        "/fn/./hello",
        "/fn/hello%00",
    ],
)
async def test_traversal_and_non_names_are_404(serve, tree, target) -> None:
    """Raw request targets that leave the folder or are not exact names are 404."""
    async with serve(tree) as server:
        assert_function_404(*await raw_get(server.url, target))


async def test_absolute_path_to_a_file_outside_is_404(serve, tree) -> None:
    """``/fn//<tmp>/secret`` names the real file outside the folder by absolute path."""
    async with serve(tree) as server:
        target = "/fn/" + str(tree.parent / "secret")
        assert_function_404(*await raw_get(server.url, target))


async def test_percent_encoded_slash_is_not_a_separator(serve, http, tree) -> None:
    """``%2F`` is data inside one path segment, not a separator: it names no file."""
    async with serve(tree) as server:
        assert (await http.get(server.fn_url("user/profile"))).status_code == 200
        assert_function_404(*await raw_get(server.url, "/fn/user%2Fprofile"))


# -- symlinks ------------------------------------------------------------------------------


async def test_symlink_to_a_file_outside_is_404_and_warned(serve, http, tree, caplog) -> None:
    """A link inside the folder to a ``.py`` outside is ignored, with a warning."""
    link = tree / "leak.py"
    link.symlink_to(tree.parent / "secret.py")
    with caplog.at_level(logging.WARNING, logger="laf_py"):
        async with serve(tree) as server:
            response = await http.get(server.fn_url("leak"))
    assert_function_404(response.status_code, response.headers, response.content)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("leak.py" in r.getMessage() and "outside" in r.getMessage() for r in warnings)


async def test_relative_symlink_escaping_the_folder_is_404(serve, http, tree) -> None:
    """A relative link (``../secret.py``) is resolved before it is trusted."""
    (tree / "leak.py").symlink_to(os.path.join("..", "secret.py"))
    async with serve(tree) as server:
        response = await http.get(server.fn_url("leak"))
    assert_function_404(response.status_code, response.headers, response.content)


async def test_symlinked_directory_outside_is_404(serve, http, tree) -> None:
    """Files under a linked directory that points outside the folder are not names."""
    (tree / "linked").symlink_to(tree.parent / "outside", target_is_directory=True)
    async with serve(tree) as server:
        response = await http.get(server.fn_url("linked/secret"))
    assert_function_404(response.status_code, response.headers, response.content)


async def test_symlink_inside_the_folder_is_served(serve, http, tree) -> None:
    """Confinement is about where a link leads: a link to a file inside works."""
    (tree / "alias.py").symlink_to("hello.py")
    async with serve(tree) as server:
        response = await http.get(server.fn_url("alias"))
    assert response.status_code == 200
    assert response.text == "hello"


# -- file names that are not names ---------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "target"),
    [
        ("my.func.py", "/fn/my.func"),
        ("with space.py", "/fn/with%20space"),
        (".hidden.py", "/fn/.hidden"),
        ("-dash.py", "/fn/-dash"),
    ],
)
async def test_files_with_invalid_names_are_not_served(serve, tree, filename, target) -> None:
    """Dots, spaces and a leading dash or dot make a file name no function name."""
    (tree / filename).write_text("def main(ctx):\n    return 'served'\n")
    async with serve(tree) as server:
        status, headers, body = await raw_get(server.url, target)
    assert_function_404(status, headers, body)
    assert b"served" not in body
