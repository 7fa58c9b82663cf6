"""One JSON encoding everywhere: HTTP bodies, ``socket.send`` (and every delivery call) and
``cloud.kv`` encode a value the same way at the top level and nested; what JSON cannot hold
is a TypeError naming its type and key path, raised in the function's own call.

The values live in ``VALUES_SOURCE``: function files paste it, and the test runs it too
(the in-process server shares the test's process and loop, so kv is called directly).
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from laf_py import Response, cloud
from laf_py.core import frames, jsoncodec
from laf_py.core.response import render

from .conftest import write_function

VALUES_SOURCE = """
import collections
import dataclasses
import datetime
import decimal
import enum
import uuid


class Color(enum.Enum):
    RED = "red"


class Shade(str, enum.Enum):
    DARK = "dark"


class Level(enum.IntEnum):
    HIGH = 3


@dataclasses.dataclass
class Point:
    x: int
    when: datetime.date
    _private: str = "never sent"


Pair = collections.namedtuple("Pair", "left right")

VALUES = {
    "dict": {"a": 1, "b": [True, None]},
    "list": [1, "two", 2.5],
    "tuple": (1, "two"),
    "namedtuple": Pair(1, 2),
    "set": {7},
    "frozenset": frozenset({"x"}),
    "int": 42,
    "big-int": 2**70,
    "float": 2.5,
    "true": True,
    "false": False,
    "datetime": datetime.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=datetime.timezone.utc),
    "naive-datetime": datetime.datetime(2024, 5, 6, 7, 8, 9),
    "date": datetime.date(2024, 5, 6),
    "time": datetime.time(7, 8, 9, 500),
    "aware-time": datetime.time(7, 8, tzinfo=datetime.timezone.utc),
    "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "decimal": decimal.Decimal("19.990"),
    "long-decimal": decimal.Decimal("12345678901234567890.123456789"),
    "integral-decimal": decimal.Decimal("120"),
    "decimal-nan": decimal.Decimal("NaN"),
    "enum": Color.RED,
    "str-enum": Shade.DARK,
    "int-enum": Level.HIGH,
    "dataclass": Point(1, datetime.date(2024, 1, 2)),
    "with-keys": {1: "int key", datetime.date(2024, 1, 2): "date key", Color.RED: "enum key"},
}
"""

# The exact JSON text of each value, wherever it is encoded.
EXPECTED = {
    "dict": '{"a":1,"b":[true,null]}',
    "list": '[1,"two",2.5]',
    "tuple": '[1,"two"]',
    "namedtuple": "[1,2]",
    "set": "[7]",
    "frozenset": '["x"]',
    "int": "42",
    "big-int": "1180591620717411303424",
    "float": "2.5",
    "true": "true",
    "false": "false",
    "datetime": '"2024-05-06T07:08:09.123456+00:00"',
    "naive-datetime": '"2024-05-06T07:08:09"',
    "date": '"2024-05-06"',
    "time": '"07:08:09.000500"',
    "aware-time": '"07:08:00+00:00"',
    "uuid": '"12345678-1234-5678-1234-567812345678"',
    "decimal": "19.990",
    "long-decimal": "12345678901234567890.123456789",
    "integral-decimal": "120",
    "decimal-nan": "null",
    "enum": '"red"',
    "str-enum": '"dark"',
    "int-enum": "3",
    "dataclass": '{"x":1,"when":"2024-01-02"}',
    "with-keys": '{"1":"int key","2024-01-02":"date key","red":"enum key"}',
}

NAMESPACE: dict[str, Any] = {}
exec(VALUES_SOURCE, NAMESPACE)
VALUES: dict[str, Any] = NAMESPACE["VALUES"]

# Returns VALUES[?name], alone or nested in {"nested": [value]}.
RETURN_VALUE = f"""
{VALUES_SOURCE}

def main(ctx):
    value = VALUES[ctx.query["name"]]
    return {{"nested": [value]}} if "nested" in ctx.query else value
"""

# Per message NAME: send VALUES[NAME] alone, nested, then publish it to itself, in order.
SEND_VALUE = f"""
from laf_py import cloud

{VALUES_SOURCE}

async def main(ctx):
    if ctx.method != "WebSocket:message":
        return
    value = VALUES[ctx.params["data"]]
    await ctx.socket.send(value)
    await ctx.socket.send({{"nested": [value]}})
    await cloud.sockets.publish(value, [ctx.socket.id])
"""

UNENCODABLE = """
class Foo:
    pass

VALUES = {"top": Foo(), "nested": {"items": [1, 2, {"when": Foo()}]}}
"""

# Sends the TypeError message of socket.send(VALUES[message]) back as text.
SEND_UNENCODABLE = f"""
{UNENCODABLE}

async def main(ctx):
    if ctx.method != "WebSocket:message":
        return
    try:
        ctx.socket.send(VALUES[ctx.params["data"]])
    except TypeError as exc:
        ctx.socket.send(f"TypeError: {{exc}}")
    else:
        ctx.socket.send("sent")
"""

RETURN_UNENCODABLE = f"""
{UNENCODABLE}

def main(ctx):
    return VALUES[ctx.query["name"]]
"""

NESTED_MESSAGE = "cannot encode value at $.items[2].when: Foo is not JSON-serialisable"
TOP_MESSAGE = "cannot encode value at $: Foo is not JSON-serialisable"


async def recv(ws: Any) -> str | bytes:
    return await asyncio.wait_for(ws.recv(), 5)


# -- jsoncodec alone ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", EXPECTED)
def test_dumps_encodes_each_type_alone_and_nested_the_same(name: str) -> None:
    """The exact JSON text of every supported type, at the top level and inside a dict."""
    assert jsoncodec.dumps(VALUES[name]).decode() == EXPECTED[name]
    assert jsoncodec.dumps({"v": [VALUES[name]]}).decode() == f'{{"v":[{EXPECTED[name]}]}}'


@pytest.mark.parametrize("name", [n for n in EXPECTED if n != "decimal-nan"])
def test_strict_encoding_reads_back_as_the_wire_encoding(name: str) -> None:
    """kv's strict encoder stores what a client decoding the HTTP body would read."""
    assert json.loads(jsoncodec.dumps_strict(VALUES[name])) == json.loads(EXPECTED[name])
    nested = jsoncodec.dumps_strict({"v": [VALUES[name]]})
    assert json.loads(nested) == {"v": [json.loads(EXPECTED[name])]}


def test_strict_encoding_refuses_nan_and_keeps_big_ints() -> None:
    """NaN and Infinity, float or Decimal, are refused; integers of any size stay exact."""
    decimal = type(VALUES["decimal"])
    for bad in (
        float("nan"),
        float("inf"),
        decimal("NaN"),
        decimal("-Infinity"),
        [decimal("1E+999")],
    ):
        with pytest.raises(ValueError):
            jsoncodec.dumps_strict(bad)
    assert jsoncodec.dumps_strict({"n": [2**100, VALUES["decimal"]]}) == (
        '{"n":[1267650600228229401496703205376,19.99]}'
    )


def test_fast_path_never_walks_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    """Encodable values are encoded by orjson alone: the Python walk (and the key path)
    only happens after it failed."""

    def walked(*args: Any) -> Any:
        raise AssertionError("the slow path ran")

    monkeypatch.setattr(jsoncodec, "_rebuild", walked)
    fast = {n: v for n, v in VALUES.items() if n not in ("big-int", "aware-time")}
    assert json.loads(jsoncodec.dumps(fast)) == {n: json.loads(EXPECTED[n]) for n in fast}
    assert jsoncodec.dumps_strict({"when": VALUES["datetime"], "n": 2**70}) is not None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (object(), "cannot encode value at $: object is not JSON-serialisable"),
        ({"items": [1, 2, {"when": 1j}]}, "at $.items[2].when: complex is not"),
        ({"a b": {5: [None, {object()}]}}, 'at $["a b"][5][1][0]: object is not'),
        ((1, [b"raw"]), "at $[1][0]: bytes is not JSON-serialisable"),
        ({"p": NAMESPACE["Point"](1, object())}, "at $.p.when: object is not"),
        ({"k": {(1, 2): 3}}, "cannot encode a key at $.k: tuple is not valid as a JSON object key"),
    ],
    ids=["top", "nested", "odd-keys", "bytes-in-tuple", "in-dataclass", "bad-key"],
)
def test_unencodable_value_names_type_and_key_path(value: Any, message: str) -> None:
    """HTTP/WebSocket and kv encoders raise the same TypeError, with the key path."""
    for encode in (jsoncodec.dumps, jsoncodec.dumps_strict):
        with pytest.raises(TypeError) as info:
            encode(value)
        assert message in str(info.value), encode


def test_circular_reference_is_a_type_error_not_a_crash() -> None:
    """orjson's recursion limit becomes a TypeError naming a (shortened) path."""
    loop: list[Any] = []
    loop.append({"again": loop})
    with pytest.raises(TypeError, match=r"at \$\[0\]\.again\[0\].*circular reference"):
        jsoncodec.dumps(loop)


def test_big_ints_stay_exact_with_other_types_in_the_document() -> None:
    """Past 64 bits orjson refuses; the slow path keeps the digits and the other types."""
    value = {"n": [2**64, -(2**63) - 1], 2**70: VALUES["decimal"], "when": VALUES["date"]}
    assert jsoncodec.dumps(value) == (
        b'{"n":[18446744073709551616,-9223372036854775809],'
        b'"1180591620717411303424":19.990,"when":"2024-05-06"}'
    )
    assert jsoncodec.dumps([2**64 - 1, -(2**63)]) == b"[18446744073709551615,-9223372036854775808]"


def test_render_content_types() -> None:
    """str → text/plain, bytes-likes → octet-stream, None → 204, everything else → JSON,
    also through laf_py.Response."""
    for value in ("text", b"raw", bytearray(b"raw"), memoryview(b"raw")):
        expected_type = (
            "text/plain; charset=utf-8" if value == "text" else "application/octet-stream"
        )
        assert render(value).headers["Content-Type"] == expected_type
    assert render(None).status == 204
    for name in EXPECTED:
        rendered = render(VALUES[name])
        assert rendered.headers == {"Content-Type": "application/json"}, name
        assert rendered.body.decode() == EXPECTED[name]
    created = render(Response(VALUES["datetime"], status=201))
    assert (created.status, created.body.decode()) == (201, EXPECTED["datetime"])
    assert created.headers["Content-Type"] == "application/json"


def test_encode_payload_frame_kinds() -> None:
    """str → text, bytes/bytearray/memoryview → binary, anything else → JSON text."""
    assert frames.encode_payload("é") == (frames.TEXT, "é".encode())
    for raw in (b"\x00", bytearray(b"\x00"), memoryview(b"\x00")):
        assert frames.encode_payload(raw) == (frames.BINARY, b"\x00")
    assert frames.encode_payload(None) == (frames.TEXT, b"null")
    for name in EXPECTED:
        assert frames.encode_payload(VALUES[name]) == (frames.TEXT, EXPECTED[name].encode())


# -- over HTTP ---------------------------------------------------------------------------------


async def test_http_returns_each_type_as_json_alone_and_nested(
    serve, http: httpx.AsyncClient, functions_dir: Path
) -> None:
    """Each type returned directly is application/json with its exact text; nested, the same
    text sits inside the document."""
    write_function(functions_dir, "value", RETURN_VALUE)
    async with serve(functions_dir) as server:
        for name, text in EXPECTED.items():
            alone = await http.get(server.fn_url("value"), params={"name": name})
            assert alone.status_code == 200, (name, alone.text)
            assert alone.headers["content-type"] == "application/json", name
            assert alone.text == text, name
            nested = await http.get(server.fn_url("value"), params={"name": name, "nested": ""})
            assert nested.status_code == 200, (name, nested.text)
            assert nested.headers["content-type"] == "application/json", name
            assert nested.text == f'{{"nested":[{text}]}}', name


@pytest.mark.parametrize(("name", "message"), [("top", TOP_MESSAGE), ("nested", NESTED_MESSAGE)])
async def test_http_unencodable_is_500_with_key_path_in_log(
    serve, http: httpx.AsyncClient, functions_dir: Path, caplog, name: str, message: str
) -> None:
    """An object JSON cannot hold → the usual bare 500; the log names type and key path."""
    caplog.set_level(logging.INFO, logger="laf_py")
    write_function(functions_dir, "odd", RETURN_UNENCODABLE)
    async with serve(functions_dir) as server:
        response = await http.get(server.fn_url("odd"), params={"name": name})
    assert response.status_code == 500
    assert response.json()["error"] == "Internal Server Error"
    assert "Foo" not in response.text
    request_id = response.headers["x-request-id"]
    records = [r for r in caplog.records if r.exc_info and request_id in r.getMessage()]
    assert len(records) == 1
    logged = logging.Formatter().format(records[0])  # the line with its traceback
    assert "'odd'" in logged
    assert f"TypeError: {message}" in logged


# -- over WebSocket ----------------------------------------------------------------------------


async def test_socket_send_encodes_each_type_alone_and_nested(serve, functions_dir: Path) -> None:
    """socket.send(value) and cloud.sockets.publish(value) send a JSON text frame with the same
    text as HTTP; socket.send({"nested": [value]}) nests it."""
    write_function(functions_dir, "__websocket__", SEND_VALUE)
    async with serve(functions_dir) as server, websockets.connect(server.ws_url) as ws:
        for name, text in EXPECTED.items():
            await ws.send(name)
            assert await recv(ws) == text, name  # str, so a text frame
            assert await recv(ws) == f'{{"nested":[{text}]}}', name
            assert await recv(ws) == text, name  # publish


@pytest.mark.parametrize(("name", "message"), [("top", TOP_MESSAGE), ("nested", NESTED_MESSAGE)])
async def test_socket_send_unencodable_raises_type_error_in_the_function(
    serve, functions_dir: Path, name: str, message: str
) -> None:
    """socket.send(Foo()) raises TypeError at the call, naming type and key path; nothing
    was sent before the function's own reply."""
    write_function(functions_dir, "__websocket__", SEND_UNENCODABLE)
    async with serve(functions_dir) as server, websockets.connect(server.ws_url) as ws:
        await ws.send(name)
        assert await recv(ws) == f"TypeError: {message}"


# -- cloud.kv ----------------------------------------------------------------------------------


async def test_kv_round_trips_each_type_as_its_json_form(
    serve, functions_dir: Path, database_url: str
) -> None:
    """kv.set accepts every type HTTP does; get gives back its JSON form (a datetime as its
    ISO string, a set as a list, a Decimal as the number), alone and nested."""
    names = [n for n in EXPECTED if n != "decimal-nan"]
    async with serve(functions_dir, database_url=database_url):
        for name in names:
            await cloud.kv.set(name, VALUES[name])
            await cloud.kv.set(f"nested/{name}", {"nested": [VALUES[name]]})
        for name in names:
            expected = json.loads(EXPECTED[name])
            got = await cloud.kv.get(name)
            assert got == expected, name
            assert type(got) is type(expected), name
            assert await cloud.kv.get(f"nested/{name}") == {"nested": [expected]}, name
        assert await cloud.kv.get("big-int") == 2**70  # exact, not a float


async def test_kv_refuses_decimal_nan_and_names_the_path_of_an_object(
    serve, functions_dir: Path, database_url: str
) -> None:
    """kv stays strict: a NaN Decimal is a ValueError, an unknown object a TypeError naming
    its key path, both raised by set itself; nothing is stored."""
    foo = type("Foo", (), {})
    async with serve(functions_dir, database_url=database_url):
        with pytest.raises(ValueError):
            cloud.kv.set("nan", {"price": VALUES["decimal-nan"]})
        with pytest.raises(TypeError) as info:
            cloud.kv.set("obj", {"items": [1, 2, {"when": foo()}]})
        assert str(info.value) == NESTED_MESSAGE
        assert await cloud.kv.keys() == []
