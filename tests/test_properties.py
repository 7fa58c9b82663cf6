"""Property-based tests (hypothesis): request parsing, ``ctx`` building and function names.

Unit properties run many examples against the pure parsing helpers and a registry on a real
folder. End-to-end properties run fewer examples against ONE real server, started for the whole
module in a thread with its own event loop, and talk to it with synchronous clients (httpx, a
raw socket for request targets HTTPX would normalise, and the ``websockets`` sync client).

What must hold: arbitrary headers, query strings, bodies, content types and methods never give
a 500 or a dropped connection; arbitrary names never reach a file outside the functions folder
(nor a private one); arbitrary WebSocket frames always get an answer, never a close.
"""

from __future__ import annotations

import asyncio
import encodings
import json
import pkgutil
import socket
import string
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from websockets.sync.client import connect

from laf_py import HTTPError
from laf_py.cloud.tokens import bearer_token
from laf_py.core.body import parse_body, parse_query, split_content_type
from laf_py.core.registry import FunctionRegistry, is_public_name
from laf_py.server.http import function_name, name_from_path
from laf_py.testing import LafTestServer

from .conftest import write_function

SECRET = "SECRET"
UNIT = settings(max_examples=400, deadline=None)
E2E = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
E2E_MANY = settings(E2E, max_examples=200)  # requests to an in-process server cost ~2 ms

# -- strategies --------------------------------------------------------------------------------

MEDIA_TYPES = [
    "application/json",
    "Application/JSON",
    "application/ld+json",
    "application/vnd.api+json",
    "+json",
    "text/plain",
    "TEXT/PLAIN",
    "text/html",
    "text/",
    "text/x-whatever",
    "application/x-www-form-urlencoded",
    "multipart/form-data",
    "application/octet-stream",
    "image/png",
    "",
    "*/*",
    "json",
]
CHARSETS = [
    "utf-8",
    "UTF-8",
    "utf8",
    '"utf-8"',
    "latin-1",
    "iso-8859-1",
    "ascii",
    "us-ascii",
    "utf-16",
    "utf-16-le",
    "utf-32",
    "utf-7",
    "utf_8_sig",
    "cp1252",
    "shift_jis",
    "euc-jp",
    "big5",
    "gb18030",
    "koi8-r",
    "mac-roman",
    "idna",
    "punycode",
    "undefined",
    "unicode_escape",
    "raw_unicode_escape",
    "base64",
    "hex",
    "rot13",
    "zlib",
    "bz2",
    "uu",
    "quopri",
    "charmap",
    "mbcs",
    "bogus",
    "",
    "x-user-defined",
    "utf-9",
    "utf\x00-8",
]
# ... and every codec module the standard library ships (text encodings or not).
CODECS = sorted({m.name for m in pkgutil.iter_modules(encodings.__path__)} - {"aliases"})
TCHAR = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"
tokens = st.text(TCHAR, min_size=1, max_size=12)


def content_types(charset: st.SearchStrategy[str], garbage: st.SearchStrategy[str]) -> Any:
    """A media type from the list (or garbage), then ``; key=value`` parameters."""
    param = st.one_of(
        st.tuples(st.sampled_from(["charset", "Charset", " charset ", "CHARSET"]), charset),
        st.tuples(st.sampled_from(["boundary", "q", "version"]), tokens),
        st.tuples(garbage, garbage),
    ).map(lambda kv: f"{kv[0]}={kv[1]}")
    composed = st.tuples(
        st.one_of(st.sampled_from(MEDIA_TYPES), garbage),
        st.lists(st.one_of(param, garbage), max_size=3),
    ).map(lambda t: "; ".join([t[0], *t[1]]))
    text_with_charset = st.tuples(
        st.sampled_from(
            ["text/plain", "text/html", "Text/CSV", "application/x-www-form-urlencoded"]
        ),
        charset,
    ).map(lambda t: f"{t[0]}; charset={t[1]}")
    return st.one_of(composed, text_with_charset, garbage)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=10,
)
bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.text(max_size=100).map(str.encode),
    st.lists(st.tuples(st.text(max_size=8), st.text(max_size=8)), max_size=4).map(
        lambda kv: "&".join(f"{quote(k)}={quote(v)}" for k, v in kv).encode()
    ),
    st.sampled_from([b"{", b"[1,", b"\xff", b"nul", b"NaN", b"1e999", b"[" * 2000, b"\\N{"]),
)

PATH_FRAGMENTS = [
    "..",
    ".",
    "/",
    "//",
    "%2e",
    "%2E",
    "%2e%2e",
    "%2f",
    "%2F",
    "%5c",
    "%5C",
    "\\",
    "..\\",
    "..%2f",
    "%2e%2e%2f",
    "%00",
    "%",
    "%zz",
    "%c0%ae",
    "%c0%af",
    "%ff",
    "~",
    ";",
    ".py",
    "hello",
    "user",
    "profile",
    "user/profile",
    "alias",
    "echo",
    "link",
    "linkdir",
    "secret",
    "outside",
    "functions",
    "_helper",
    "__websocket__",
    "__init__",
    "é",
    "%C3%A9",
    "日本",
]
UNIT_PUBLIC = {"hello", "user/profile", "alias"}


def function_paths(raw: st.SearchStrategy[str]) -> Any:
    """Text after ``/fn/``: tricky fragments, percent-encoded arbitrary text, ``raw`` text."""
    piece = st.one_of(
        st.sampled_from(PATH_FRAGMENTS),
        st.text(max_size=6).map(lambda s: quote(s, safe="")),
        st.binary(min_size=1, max_size=3).map(lambda b: quote(b, safe="")),  # often not UTF-8
        raw,
    )
    # A real name with some of its characters percent-encoded (an encoded "/" is no separator).
    encoded_name = st.sampled_from(sorted(UNIT_PUBLIC)).flatmap(
        lambda name: st.lists(st.booleans(), min_size=len(name), max_size=len(name)).map(
            lambda flags: "".join(
                f"%{ord(c):02X}" if flag else c for c, flag in zip(name, flags, strict=True)
            )
        )
    )
    return st.one_of(st.lists(piece, max_size=8).map("".join), encoded_name)


# -- unit properties ---------------------------------------------------------------------------


@UNIT
@given(st.one_of(st.text(), st.text(alphabet="=&;+%0123456789abcdefABCDEF")))
def test_parse_query_is_total_and_gives_str_to_str(query: str) -> None:
    result = parse_query(query)
    assert isinstance(result, dict)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in result.items())


@UNIT
@given(st.lists(st.tuples(st.text(), st.text())))
def test_parse_query_round_trips_encoded_pairs_last_value_wins(
    pairs: list[tuple[str, str]],
) -> None:
    query = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in pairs)
    assert parse_query(query) == dict(pairs)


@UNIT
@given(st.one_of(st.text(), content_types(st.text(), st.text())))
def test_split_content_type_is_total(header: str) -> None:
    media_type, params = split_content_type(header)
    assert isinstance(media_type, str) and ";" not in media_type
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in params.items())


def expected_kind(content_type: str, raw: bytes, value: Any) -> None:
    """``value`` is what parse_body documents for this content type and body."""
    if not raw:
        assert value is None
        return
    media_type, _ = split_content_type(content_type)
    if media_type == "application/json" or media_type.endswith("+json"):
        assert value is None or isinstance(value, (dict, list, str, int, float, bool))
    elif media_type == "application/x-www-form-urlencoded":
        assert isinstance(value, dict)
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
    elif media_type.startswith("text/"):
        assert isinstance(value, str)
    else:
        assert value is raw


@UNIT
@given(
    content_types(st.sampled_from(CHARSETS) | st.sampled_from(CODECS) | st.text(), st.text()),
    bodies,
)
def test_parse_body_returns_the_documented_kind_or_a_400(content_type: str, raw: bytes) -> None:
    try:
        value = parse_body(content_type, raw)
    except HTTPError as exc:
        assert exc.status == 400
        return
    expected_kind(content_type, raw, value)


TEXTUAL = ["text/plain", "text/html", "Text/CSV", "application/x-www-form-urlencoded"]
charsets = st.sampled_from(CHARSETS) | st.sampled_from(CODECS) | tokens


@UNIT
@example("text/plain", "undefined", b"a")
@example("text/plain", "punycode", b"..")
@example("text/plain", "idna", b"xn--")
@example("text/plain", "utf\x00-8", b"a")
@given(st.sampled_from(TEXTUAL), charsets | st.text(), bodies.filter(bool))
def test_decoding_text_in_any_charset_gives_str_or_400(
    media_type: str, charset: str, raw: bytes
) -> None:
    content_type = f"{media_type}; charset={charset}"
    try:
        value = parse_body(content_type, raw)
    except HTTPError as exc:
        assert exc.status == 400
        return
    expected_kind(content_type, raw, value)


def build_tree(base: Path) -> Path:
    """``base/functions`` with public, private and reserved functions, a symlink to a file
    inside, and symlinks (file and folder) to a ``secret.py`` outside the folder."""
    root = base / "functions"
    root.mkdir()
    name_fn = "def main(ctx):\n    return ctx.function_name\n"
    write_function(root, "hello", name_fn)
    write_function(root, "user/profile", name_fn)
    write_function(root, "_helper", f"def main(ctx):\n    return {SECRET!r}\n")
    write_function(root, "sub/_private", f"def main(ctx):\n    return {SECRET!r}\n")
    write_function(root, "__init__", "def main(ctx):\n    return None\n")
    write_function(base, "secret", f"def main(ctx):\n    return {SECRET!r}\n")
    write_function(base, "outside/secret", f"def main(ctx):\n    return {SECRET!r}\n")
    (root / "alias.py").symlink_to(root / "hello.py")
    (root / "link.py").symlink_to(base / "secret.py")
    (root / "linkdir").symlink_to(base / "outside", target_is_directory=True)
    return root


def test_registry_names_never_escape_the_folder(tmp_path: Path) -> None:
    """For arbitrary ``/fn/...`` paths and raw names, ``public(name)`` finds only public,
    scanned files whose real path is inside the folder."""
    root = build_tree(tmp_path).resolve()
    registry = FunctionRegistry(root)
    registry.load_all()
    try:
        for name in UNIT_PUBLIC:
            assert registry.public(name) is not None, name

        @UNIT
        @given(
            st.one_of(
                function_paths(st.text(max_size=6)).map(lambda rest: ("path", rest)),
                st.one_of(st.text(), st.sampled_from(PATH_FRAGMENTS)).map(lambda n: ("name", n)),
            )
        )
        def check(case: tuple[str, str]) -> None:
            kind, text = case
            if kind == "path":
                name = name_from_path("/fn/" + text)
                if name is None:
                    return
                # an encoded slash is data, never a separator
                assert len(name.split("/")) == len(text.split("/"))
            else:
                name = text
            function = registry.public(name)
            if function is None:
                assert name not in UNIT_PUBLIC
                return
            assert name in UNIT_PUBLIC and is_public_name(name)
            assert function.path.resolve().is_relative_to(root)
            assert function.path.absolute().is_relative_to(root)
            assert function.main is not None and function.error is None

        check()
    finally:
        registry.close()


# -- one real server for the end-to-end properties ---------------------------------------------

ECHO = """
def main(ctx):
    return {
        "method": ctx.method,
        "query": ctx.query,
        "body": repr(ctx.body),
        "headers": len(ctx.headers),
    }
"""
WEBSOCKET = """
async def main(ctx):
    if ctx.method == "WebSocket:message":
        ctx.socket.send(type(ctx.params["data"]).__name__)
    elif not ctx.method.startswith("WebSocket:"):
        return "SECRET"  # must never be reachable over HTTP
"""
E2E_PUBLIC_TEXT = {"hello", "user/profile", "alias"}
BODY_LIMIT = 4096  # small, so that properties reach the 413


class ThreadedServer:
    """A LafTestServer in a thread running its own event loop, for synchronous clients."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.url = ""
        self.ws_url = ""
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            async with LafTestServer(self.folder, max_body_size=BODY_LIMIT) as server:
                self.url, self.ws_url = server.url, server.ws_url
                self._ready.set()
                await self._stop.wait()
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    def __enter__(self) -> ThreadedServer:
        self._thread.start()
        assert self._ready.wait(30), "server did not start"
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedServer]:
    root = build_tree(tmp_path_factory.mktemp("props"))
    write_function(root, "echo", ECHO)
    write_function(root, "post_only", 'methods = ["POST"]\n' + ECHO)
    write_function(root, "__websocket__", WEBSOCKET)
    with ThreadedServer(root) as server:
        yield server


@pytest.fixture(scope="module")
def client(live: ThreadedServer) -> Iterator[httpx.Client]:
    # A new connection per request: the module's examples can be minutes apart on a loaded
    # machine, and a kept-alive connection the server closes as idle (--header-timeout) just as
    # the next request goes out is reset, which says nothing about that request.
    no_reuse = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(base_url=live.url, timeout=10, limits=no_reuse) as http:
        yield http


# -- end-to-end: headers, query strings, bodies, content types, methods ------------------------

# Framing and connection headers belong to the client library; Content-Type is drawn apart.
FRAMING = {
    "content-length",
    "transfer-encoding",
    "host",
    "connection",
    "expect",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
    "proxy-connection",
    "content-type",
}
header_names = st.one_of(
    tokens,
    st.sampled_from(
        [
            "Authorization",
            "X-Forwarded-For",
            "X-Real-Ip",
            "X-Scheme",
            "X-Forwarded-Proto",
            "Cookie",
            "Accept",
            "Accept-Encoding",
            "Content-Encoding",
            "Origin",
            "Range",
            "If-None-Match",
            "X-Request-Id",
        ]
    ),
).filter(lambda name: name.lower() not in FRAMING)
field_char = st.sampled_from([bytes([b]) for b in [*range(0x21, 0x7F), *range(0x80, 0x100)]])
field_values = st.lists(
    st.lists(field_char, min_size=1, max_size=10).map(b"".join), max_size=4
).map(b" ".join)
authorizations = st.tuples(st.sampled_from(["Bearer", "bearer", "Basic", "Token"]), tokens).map(
    lambda t: f"{t[0]} {t[1]}".encode()
)
wire_content_types = st.one_of(
    st.sampled_from(MEDIA_TYPES).map(str.encode),
    content_types(
        st.sampled_from([c for c in CHARSETS if c.isprintable()])
        | st.sampled_from(CODECS)
        | tokens,
        st.text(TCHAR + "/=; ", max_size=12).map(str.strip),
    ).map(lambda s: s.strip().encode("latin-1")),
    field_values,
)
queries = st.one_of(
    st.lists(st.tuples(st.text(max_size=10), st.text(max_size=10)), max_size=5).map(
        lambda pairs: ("pairs", pairs)
    ),
    st.text(
        st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="#"), max_size=30
    ).map(lambda raw: ("raw", raw)),
)


def body_outcome(content_type: str, raw: bytes) -> tuple[bool, Any]:
    """(True, ctx.body) for a body the server must accept, (False, None) for one it must
    answer with 400. Any other exception from parse_body is a bug the unit properties
    report; over the wire the only right answer to such a body is still a 400."""
    try:
        return True, parse_body(content_type, raw)
    except Exception:
        return False, None


@E2E_MANY
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE"]),
    target=st.sampled_from(["echo", "echo", "echo", "post_only"]),
    headers=st.lists(
        st.one_of(
            st.tuples(header_names, field_values),
            st.tuples(st.just("Authorization"), authorizations),
        ),
        max_size=6,
    ),
    content_type=st.none() | wire_content_types,
    query=queries,
    body=bodies | st.integers(BODY_LIMIT - 2, BODY_LIMIT + 2000).map(lambda n: b"{" * n),
)
def test_any_request_to_a_function_is_never_a_500(
    client: httpx.Client,
    method: str,
    target: str,
    headers: list[tuple[str, bytes]],
    content_type: bytes | None,
    query: tuple[str, Any],
    body: bytes,
) -> None:
    kind, value = query
    if kind == "pairs":
        query_string = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in value)
    else:
        query_string = value
    sent = list(headers)
    if content_type is not None:
        sent.append(("Content-Type", content_type))
    response = client.request(
        method, f"/fn/{target}?{query_string}", headers=sent, content=body
    )  # a dropped connection raises here
    status = response.status_code
    event(f"status {status}")
    detail = f"{status} {response.text[:500]!r}"
    assert status in {200, 400, 401, 403, 405, 413}, detail
    # An Origin naming another site, from a page not allowed: refused before anything else
    # (the origin policy, server/cors.py; this server allows none).
    origin = ",".join(v.decode("latin-1") for n, v in headers if n.lower() == "origin")
    fetch_site = ",".join(v.decode("latin-1") for n, v in headers if n.lower() == "sec-fetch-site")
    if origin and fetch_site not in ("same-origin", "none"):
        assert status == 403, detail
        return
    if len(body) > BODY_LIMIT:  # refused from Content-Length, before anything else
        assert status == 413, detail
        return

    # What the handler sees: Tornado decodes header values as latin-1 and joins repeats with ",".
    authorization = ",".join(
        v.decode("latin-1") for n, v in headers if n.lower() == "authorization"
    )
    if target == "post_only" and method != "POST":
        assert status == 405, detail
        return
    if bearer_token(authorization) is not None:  # a random token never verifies
        assert status == 401, detail
        return
    assert status != 401, detail

    seen_type = content_type.decode("latin-1") if content_type is not None else ""
    if body and split_content_type(seen_type)[0] == "multipart/form-data":
        assert status in {200, 400}, detail
        return
    ok, expected = body_outcome(seen_type, body)
    assert status == (200 if ok else 400), detail
    if not ok:
        return
    echoed = response.json()
    assert echoed["method"] == method
    assert echoed["body"] == repr(expected)
    assert echoed["headers"] >= len({n.lower() for n, _ in sent})
    if kind == "pairs":
        assert echoed["query"] == dict(value)


@E2E
@example("text/plain", "undefined", b"a")
@example("text/plain", "punycode", b"..")
@example("text/html", "idna", b"xn--")
@given(st.sampled_from(TEXTUAL), charsets.filter(str.isprintable), bodies.filter(bool))
def test_text_bodies_in_any_charset_are_a_str_or_a_400_never_a_500(
    client: httpx.Client, media_type: str, charset: str, raw: bytes
) -> None:
    content_type = f"{media_type}; charset={charset}"
    response = client.post("/fn/echo", headers={"Content-Type": content_type}, content=raw)
    detail = f"{response.status_code} {response.text[:500]!r}"
    ok, expected = body_outcome(content_type, raw)
    assert response.status_code == (200 if ok else 400), detail
    if not ok:
        return
    assert response.json()["body"] == repr(expected)


# -- end-to-end: names in the request target ---------------------------------------------------


def raw_get(url: str, target: bytes) -> tuple[int, bytes]:
    """``GET <target> HTTP/1.1`` byte for byte (HTTPX would normalise ``..`` away)."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as conn:
        conn.sendall(
            b"GET " + target + b" HTTP/1.1\r\nHost: " + parts.netloc.encode() + b"\r\n"
            b"Connection: close\r\n\r\n"
        )
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    raw = b"".join(chunks)
    assert raw, "connection dropped without a response"
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


# Raw (unencoded) characters a client can put in a request target: no whitespace, controls, '#'.
raw_target_text = st.text(
    st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp"), blacklist_characters="#"),
    max_size=6,
)
fn_targets = function_paths(raw_target_text)


@E2E_MANY
@given(fn_targets)
def test_arbitrary_names_reach_only_public_functions_inside_the_folder(
    live: ThreadedServer, rest: str
) -> None:
    """Never a file outside the folder, a private or reserved one, a 500 or a dropped
    connection; a 200 only from a public function of the folder."""
    status, body = raw_get(live.url, ("/fn/" + rest).encode())
    event(f"status {status}")
    detail = f"{status} {body[:300]!r}"
    assert SECRET.encode() not in body, detail
    assert status in {200, 400, 404, 405}, detail
    if status == 200:
        text = body.decode()
        name = function_name(("/fn/" + rest).partition("?")[0])
        if name == "":  # /fn/ itself: the list of functions
            assert "functions" in json.loads(text), detail
        elif text not in E2E_PUBLIC_TEXT:
            assert json.loads(text)["method"] == "GET", detail  # echo
            assert name == "echo", detail


@E2E
@given(fn_targets)
def test_names_that_are_no_function_are_404(live: ThreadedServer, rest: str) -> None:
    """The contract: a name that is not a public function is a 404 from the function route,
    whatever its bytes (``..``, encoded slashes, percent-escapes that are not UTF-8, ...)."""
    status, body = raw_get(live.url, ("/fn/" + rest).encode())
    detail = f"{status} {body[:300]!r}"
    name = function_name(("/fn/" + rest).partition("?")[0])
    if name == "post_only":
        assert status == 405, detail
    elif name == "":  # /fn/ itself lists the functions
        assert status == 200 and "functions" in json.loads(body), detail
    elif name in E2E_PUBLIC_TEXT or name == "echo":
        assert status == 200, detail
    else:
        assert status == 404, detail
        assert json.loads(body)["error"].startswith("Function "), detail


# -- end-to-end: WebSocket frames --------------------------------------------------------------


@E2E
@given(st.lists(st.one_of(st.text(max_size=200), st.binary(max_size=200)), min_size=1, max_size=5))
def test_any_websocket_frame_gets_a_reply_not_a_close(
    live: ThreadedServer, messages: list[str | bytes]
) -> None:
    with connect(live.ws_url, open_timeout=10, close_timeout=5) as ws:
        for message in messages:
            ws.send(message)
            reply = ws.recv(timeout=10)  # ConnectionClosed here means the server closed
            assert reply == type(message).__name__
