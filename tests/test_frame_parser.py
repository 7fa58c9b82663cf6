"""The frame parser on its own: whatever chunks the bytes arrive in, the same events come out,
and each broken frame fails with the code RFC 6455 names."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from laf_py.core.frame_parser import (
    BINARY,
    CLOSE,
    FAILED,
    MAX_FRAGMENTS,
    PING,
    PONG,
    TEXT,
    FrameParser,
    is_valid_close_code,
    unmask,
)


def client_frame(opcode: int, payload: bytes, final: bool = True) -> bytes:
    """A frame as a client sends it: masked, with the shortest length encoding."""
    mask = os.urandom(4)
    length = len(payload)
    if length < 126:
        header = bytes([opcode | (0x80 if final else 0), 0x80 | length])
    elif length < 1 << 16:
        header = bytes([opcode | (0x80 if final else 0), 0x80 | 126]) + length.to_bytes(2, "big")
    else:
        header = bytes([opcode | (0x80 if final else 0), 0x80 | 127]) + length.to_bytes(8, "big")
    return header + mask + unmask(mask, payload)


def feed_in_chunks(parser: FrameParser, data: bytes, cuts: list[int]) -> list[tuple[int, object]]:
    events: list[tuple[int, object]] = []
    previous = 0
    for cut in [*sorted(set(cuts)), len(data)]:
        events += parser.feed(data[previous:cut])
        previous = cut
    return events


messages = st.one_of(
    st.text(max_size=300).map(lambda text: (TEXT, text)),
    st.binary(max_size=70_000).map(lambda data: (BINARY, data)),
    st.binary(max_size=125).map(lambda data: (PING, data)),
    st.binary(max_size=125).map(lambda data: (PONG, data)),
)


@given(
    st.lists(messages, min_size=1, max_size=8),
    st.lists(st.integers(min_value=0, max_value=200_000), max_size=30),
    st.integers(min_value=1, max_value=4),
)
def test_any_chunking_gives_the_same_events(
    sent: list[tuple[int, object]], cuts: list[int], fragments: int
) -> None:
    """Messages (some split into fragments) fed in arbitrary chunks come out whole, in order."""
    data = b""
    for kind, value in sent:
        payload = value.encode() if isinstance(value, str) else value
        assert isinstance(payload, bytes)
        if kind in (TEXT, BINARY) and fragments > 1 and len(payload) >= fragments:
            size = len(payload) // fragments
            parts = [payload[i * size : (i + 1) * size] for i in range(fragments - 1)]
            parts.append(payload[(fragments - 1) * size :])
            data += client_frame(kind, parts[0], final=False)
            for part in parts[1:-1]:
                data += client_frame(0, part, final=False)
            data += client_frame(0, parts[-1])
        else:
            data += client_frame(kind, payload)
    parser = FrameParser(max_size=1 << 20)
    assert feed_in_chunks(parser, data, [c for c in cuts if c < len(data)]) == sent


def test_close_frames_carry_their_code_and_reason() -> None:
    parser = FrameParser(max_size=100)
    assert parser.feed(client_frame(CLOSE, (4000).to_bytes(2, "big") + "é".encode())) == [
        (CLOSE, (4000, "é"))
    ]
    assert FrameParser(100).feed(client_frame(CLOSE, b"")) == [(CLOSE, (None, ""))]


def test_size_limit_is_judged_from_the_header_and_across_fragments() -> None:
    """A frame declaring more than the limit fails before its payload arrives; fragments that
    add up past it fail too; exactly the limit passes."""
    parser = FrameParser(max_size=10)
    header_only = client_frame(BINARY, bytes(11))[:6]
    assert parser.feed(header_only) == [(FAILED, (1009, "message too big"))]
    parser = FrameParser(max_size=10)
    data = client_frame(TEXT, b"a" * 6, final=False) + client_frame(0, b"b" * 5)
    assert parser.feed(data) == [(FAILED, (1009, "message too big"))]
    assert FrameParser(max_size=10).feed(client_frame(BINARY, bytes(10))) == [(BINARY, bytes(10))]


def test_nothing_is_parsed_after_a_failure() -> None:
    parser = FrameParser(max_size=10)
    assert parser.feed(bytes([0x81, 0x01]) + b"a")[0][0] == FAILED  # unmasked
    assert parser.feed(client_frame(TEXT, b"ok")) == []


def test_fragment_count_is_bounded() -> None:
    parser = FrameParser(max_size=1 << 20)
    data = client_frame(TEXT, b"a", final=False) + client_frame(0, b"a", final=False) * (
        MAX_FRAGMENTS - 1
    )
    assert parser.feed(data) == []
    assert parser.feed(client_frame(0, b"a")) == [(FAILED, (1009, "message in too many fragments"))]


@pytest.mark.parametrize(
    ("code", "valid"),
    [
        (999, False),
        (1000, True),
        (1003, True),
        (1004, False),
        (1005, False),
        (1006, False),
        (1007, True),
        (1014, True),
        (1015, False),
        (2999, False),
        (3000, True),
        (4999, True),
        (5000, False),
    ],
)
def test_close_code_validity(code: int, valid: bool) -> None:
    assert is_valid_close_code(code) is valid


def test_pure_python_unmask_matches_tornados() -> None:
    from tornado.util import _websocket_mask

    mask = os.urandom(4)
    for size in (0, 1, 3, 4, 5, 125, 126, 65536, 70_001):
        payload = os.urandom(size)
        assert unmask(mask, payload) == _websocket_mask(mask, payload)
