"""cloud.get_token / cloud.parse_token: HS256 JWTs signed with the server secret.

Also what the server needs around tokens: the user a token speaks for, when it expires, and
how to keep tokens out of the logs.
"""

from __future__ import annotations

import binascii
import logging
import math
import os
import re
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import jwt
from jwt.utils import base64url_decode, base64url_encode

__all__ = [
    "TOKEN_EXPIRED",
    "Tokens",
    "bearer_token",
    "check_user_id",
    "expires_at",
    "hide_tokens",
    "hide_tokens_in_uri",
    "load_or_create_secret",
    "user_id_of",
]

log = logging.getLogger("laf_py")

ALGORITHM = "HS256"
USER_CLAIMS = ("uid", "sub")  # the user a token speaks for: uid, else sub
TOKEN_EXPIRED = "token expired"  # the reason a socket is closed with (4401) when its token expires
_SEGMENT = re.compile(r"[A-Za-z0-9_-]*")  # base64url without padding (RFC 7515, 2)


class Tokens:
    """Signs and checks tokens. ``require_exp``: tokens without an ``exp`` claim are neither
    issued nor accepted (``--require-token-exp``)."""

    def __init__(self, secret: str, require_exp: bool = False) -> None:
        self._secret = secret
        self.require_exp = require_exp

    def issue(self, payload: Mapping[str, Any], expires_in: float | None = None) -> str:
        """Sign ``payload`` (adding ``iat``, and ``exp`` when ``expires_in`` seconds is given).

        A ``uid`` or ``sub`` claim must be a non-empty string (TypeError, ValueError): it is
        the id of the user the token speaks for."""
        claims = dict(payload)
        for claim in USER_CLAIMS:
            if claim in claims:
                check_user_id(claims[claim], f"the {claim!r} claim")
        now = int(time.time())
        claims.setdefault("iat", now)
        if expires_in is not None:
            if not expires_in > 0:
                raise ValueError(f"expires_in must be > 0 seconds, got {expires_in!r}")
            claims["exp"] = math.ceil(time.time() + expires_in)  # never sooner than asked
        elif self.require_exp and "exp" not in claims:
            raise ValueError("tokens must expire (--require-token-exp): pass expires_in")
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def verify(self, token: str, require_exp: bool | None = None) -> dict[str, Any] | None:
        """The payload of a valid, unexpired token signed by us; None otherwise.

        Valid means more than a good signature: each segment is canonical base64url (no
        padding, nothing outside the alphabet, no stray bits: one token has one spelling),
        ``exp`` is a number, ``uid``/``sub`` are non-empty strings, and with ``require_exp``
        (default: this object's) ``exp`` is there."""
        if not isinstance(token, str) or not _is_canonical(token):
            return None
        try:
            payload: dict[str, Any] = jwt.decode(token, self._secret, algorithms=[ALGORITHM])
        except (jwt.PyJWTError, ValueError, TypeError):
            return None
        if not isinstance(payload, dict):
            return None
        for claim in USER_CLAIMS:
            value = payload.get(claim)
            if claim in payload and not (isinstance(value, str) and value):
                return None
        if "exp" in payload:
            exp = payload["exp"]
            if isinstance(exp, bool) or not isinstance(exp, int | float):
                return None
        elif self.require_exp if require_exp is None else require_exp:
            return None
        return payload


def _is_canonical(token: str) -> bool:
    """Three base64url segments, each spelled the one way it re-encodes to."""
    segments = token.split(".")
    if len(segments) != 3:
        return False
    for segment in segments:
        if not _SEGMENT.fullmatch(segment):
            return False
        try:
            if base64url_encode(base64url_decode(segment)).decode() != segment:
                return False
        except (binascii.Error, ValueError):
            return False
    return True


def check_user_id(user_id: object, what: str = "a user id") -> str:
    """User ids are non-empty strings: anything else is a TypeError, ``""`` a ValueError (so
    ``1`` and ``"1"`` can never be two spellings of one user)."""
    if not isinstance(user_id, str):
        raise TypeError(f"{what} must be a non-empty string, not {type(user_id).__name__}")
    if not user_id:
        raise ValueError(f"{what} must be a non-empty string, not ''")
    return user_id


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, if that is what it is."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def user_id_of(payload: Mapping[str, Any] | None) -> str | None:
    """The user a (verified) token speaks for: its ``uid`` claim, else ``sub``."""
    if not payload:
        return None
    user = payload["uid"] if "uid" in payload else payload.get("sub")
    return user if isinstance(user, str) and user else None


def expires_at(payload: Mapping[str, Any] | None) -> float | None:
    """When a (verified) token expires, in seconds since the epoch; None if it never does."""
    exp = payload.get("exp") if payload else None
    if exp is None or isinstance(exp, bool):
        return None
    try:
        deadline = float(exp)
    except (TypeError, ValueError, OverflowError):
        return None  # an exp too large for a float is never
    return deadline if math.isfinite(deadline) else None


# -- keeping tokens out of the logs ------------------------------------------------------------

# Three or more dot-separated runs of base64url, one of them at least 32 characters long (an
# HS256 signature has 43): what a JWT looks like, and what hardly anything else in a URL does.
# Linear time on any line: a match starts only where a run does (the look-behind), and the
# possessive quantifiers never backtrack.
_DOTTED = re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]++(?:\.[A-Za-z0-9_-]++){2,}+")
_LONG_PART = 32
_DECODINGS = 3  # percent-decode this many times: %2565 is %65 is "e"
HIDDEN = "***"


def _looks_like_token(run: str) -> bool:
    return any(len(part) >= _LONG_PART for part in run.split("."))


def hide_tokens(text: str) -> str:
    """``text`` with everything shaped like a JWT replaced by ``***``."""
    if "." not in text:
        return text
    return _DOTTED.sub(lambda m: HIDDEN if _looks_like_token(m.group()) else m.group(), text)


def _decoded(text: str) -> str:
    for _ in range(_DECODINGS):
        if "%" not in text and "+" not in text:
            break
        text = unquote_plus(text, errors="replace")
    return text


def _holds_token(raw: str) -> bool:
    """Whether ``raw`` (a piece of a URL), percent-decoded, holds a JWT-shaped string."""
    decoded = _decoded(raw)
    return any(_looks_like_token(m.group()) for m in _DOTTED.finditer(decoded))


def hide_tokens_in_uri(uri: str) -> str:
    """A request target fit for a log line: the value of every query parameter whose name
    (percent-decoded) contains ``token`` is ``***``, whatever the separator (``&`` or
    ``;``), and so is every piece of the path or query that holds something shaped like a
    JWT, percent-encoded or not. The rest is kept as it came."""
    if "." not in uri and "%" not in uri and "oken" not in uri.lower():
        return uri  # no token can hide in it: most requests (/fn/hello)
    path, question, query = uri.partition("?")
    path = "/".join(HIDDEN if _holds_token(piece) else piece for piece in path.split("/"))
    if not question:
        return path
    pieces = re.split(r"([&;])", query)
    for i in range(0, len(pieces), 2):
        name, equals, value = pieces[i].partition("=")
        if (equals and "token" in _decoded(name).lower()) or _holds_token(value):
            value = HIDDEN
        if _holds_token(name):
            name = HIDDEN
        pieces[i] = name + equals + value
    return f"{path}?{''.join(pieces)}"


def load_or_create_secret(data_dir: Path) -> str:
    """The secret kept in ``data_dir/secret``, generated on first use (mode 0600). (The
    start-up banner warns a cluster node that signs with it: see ``server/banner.py``.)"""
    path = data_dir / "secret"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        draft = data_dir / f".secret.{os.getpid()}"
        descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(secrets.token_urlsafe(48) + "\n")
        try:
            os.link(draft, path)  # atomic: if several workers race, one secret wins
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    return path.read_text().strip()
