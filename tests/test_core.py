"""Unit tests of the framework-free pieces: settings, bodies, responses, frames, shared map."""

from __future__ import annotations

from pathlib import Path

import pytest

from laf_py import ConfigError, HTTPError, Response, Settings
from laf_py.cloud.shared import SharedMap
from laf_py.core import body as bodies
from laf_py.core import frames
from laf_py.core.response import render


class TestSettings:
    def test_defaults(self, functions_dir: Path) -> None:
        settings = Settings.load({"functions_dir": str(functions_dir)}, {})
        assert (settings.host, settings.port, settings.reload) == ("127.0.0.1", 8000, True)
        assert settings.app_dir == Path(".")
        assert settings.data_dir == Path(".laf")  # in the app folder, not beside functions/

    def test_flag_beats_environment(self, functions_dir: Path) -> None:
        env = {"LAF_PORT": "9001", "LAF_FUNCTIONS": str(functions_dir)}
        assert Settings.load({}, env).port == 9001
        assert Settings.load({"port": "9002"}, env).port == 9002

    @pytest.mark.parametrize(
        ("env", "expected"),
        [
            ({"LAF_PORT": "abc"}, "LAF_PORT='abc' is not valid: expected a port number"),
            ({"LAF_PORT": "65536"}, "set --port or LAF_PORT"),
            ({"LAF_TIMEOUT": "0"}, "LAF_TIMEOUT='0' is not valid: expected seconds > 0"),
            ({"LAF_TIMEOUT": "nan"}, "LAF_TIMEOUT"),
            ({"LAF_RELOAD": "maybe"}, "expected true or false"),
            ({"LAF_HOST": " "}, "LAF_HOST"),
            ({"LAF_LOG_LEVEL": "loud"}, "debug|info|warning|error"),
        ],
    )
    def test_bad_values_are_one_clear_line(
        self, functions_dir: Path, env: dict[str, str], expected: str
    ) -> None:
        with pytest.raises(ConfigError) as caught:
            Settings.load({}, {"LAF_FUNCTIONS": str(functions_dir), **env})
        message = str(caught.value)
        assert expected in message
        assert "\n" not in message

    def test_missing_functions_folder(self, tmp_path: Path) -> None:
        expected = r"does not exist; create it \(laf-py init makes a new app\), or point --func"
        with pytest.raises(ConfigError, match=expected):
            Settings.load({"functions_dir": str(tmp_path / "nope")}, {})


class TestBodies:
    @pytest.mark.parametrize(
        ("content_type", "raw", "expected"),
        [
            ("application/json", b'{"a": [1, 2]}', {"a": [1, 2]}),
            ("application/vnd.api+json; charset=utf-8", b"[1]", [1]),
            ("application/x-www-form-urlencoded", b"a=1&b=&a=2", {"a": "2", "b": ""}),
            ("text/plain", "héllo".encode(), "héllo"),
            ("text/plain; charset=latin-1", "héllo".encode("latin-1"), "héllo"),
            ("image/png", b"\x89PNG", b"\x89PNG"),
            ("", b"raw", b"raw"),
            ("application/json", b"", None),
        ],
    )
    def test_parse(self, content_type: str, raw: bytes, expected: object) -> None:
        assert bodies.parse_body(content_type, raw) == expected

    @pytest.mark.parametrize(
        ("content_type", "raw", "message"),
        [
            ("application/json", b"{bad", "Invalid JSON body"),
            ("text/plain", b"\xff\xfe\xfa", "not valid utf-8"),
            ("text/plain; charset=klingon", b"x", "Unsupported charset"),
        ],
    )
    def test_bad_bodies_are_400(self, content_type: str, raw: bytes, message: str) -> None:
        with pytest.raises(HTTPError) as caught:
            bodies.parse_body(content_type, raw)
        assert caught.value.status == 400
        assert message in caught.value.message

    def test_query_last_value_wins(self) -> None:
        assert bodies.parse_query("a=1&a=2&b=%C3%A9&c") == {"a": "2", "b": "é", "c": ""}


class TestRender:
    def test_kinds(self) -> None:
        assert render({"a": 1}).headers["Content-Type"] == "application/json"
        assert render("x").headers["Content-Type"] == "text/plain; charset=utf-8"
        assert render(b"x").headers["Content-Type"] == "application/octet-stream"
        empty = render(None)
        assert (empty.status, empty.body, empty.headers) == (204, b"", {})

    def test_response_and_ctx_response_merge(self) -> None:
        defaults = Response(status=202, headers={"X-A": "1"})
        rendered = render(Response("x", headers={"X-B": "2"}, content_type="text/csv"), defaults)
        assert rendered.status == 202
        assert rendered.headers == {"X-A": "1", "X-B": "2", "Content-Type": "text/csv"}

    def test_explicit_status_with_no_body(self) -> None:
        assert render(Response(None, status=200)).status == 200

    def test_unsupported_type(self) -> None:
        with pytest.raises(TypeError, match="at \\$: object is not JSON-serialisable"):
            render(object())


class TestFrames:
    @pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
    def test_lengths_round_trip_through_a_real_parser(self, size: int) -> None:
        from websockets.frames import Frame
        from websockets.streams import StreamReader

        payload = b"x" * size
        reader = StreamReader()
        reader.feed_data(frames.frame(frames.BINARY, payload))
        parser = Frame.parse(reader.read_exact, mask=False)
        try:
            next(parser)
        except StopIteration as done:
            parsed = done.value
        assert parsed.data == payload
        assert parsed.fin

    def test_message_kinds(self) -> None:
        assert frames.encode_payload("é") == (frames.TEXT, "é".encode())
        assert frames.encode_payload(b"\x00") == (frames.BINARY, b"\x00")
        assert frames.encode_payload({"a": 1}) == (frames.TEXT, b'{"a":1}')
        with pytest.raises(TypeError):
            frames.encode_payload(object())


class TestSharedMap:
    def test_laf_map_methods(self) -> None:
        shared = SharedMap()
        assert shared.set("a", 1) is shared
        assert shared.get("a") == 1 and shared.has("a")
        assert shared.get("missing", "d") == "d"
        assert shared.delete("a") is True
        assert shared.delete("a") is False
        assert not shared.has("a")


def test_http_error_needs_an_error_status() -> None:
    with pytest.raises(ValueError):
        HTTPError(200)
    assert HTTPError(404).message == "Not Found"
