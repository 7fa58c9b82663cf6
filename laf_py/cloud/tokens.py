"""cloud.get_token / cloud.parse_token: HS256 JWTs signed with the server secret."""

from __future__ import annotations

import logging
import math
import os
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jwt

__all__ = ["Tokens", "bearer_token", "load_or_create_secret", "user_id_of"]

log = logging.getLogger("laf_py")

ALGORITHM = "HS256"


class Tokens:
    def __init__(self, secret: str) -> None:
        self._secret = secret

    def issue(self, payload: Mapping[str, Any], expires_in: float | None = None) -> str:
        """Sign ``payload`` (adding ``iat``, and ``exp`` when ``expires_in`` seconds is given)."""
        claims = dict(payload)
        if "sub" in claims and not isinstance(claims["sub"], str):
            raise TypeError("the 'sub' claim must be a string (JWT requires it); use 'uid' for ids")
        now = int(time.time())
        claims.setdefault("iat", now)
        if expires_in is not None:
            if not expires_in > 0:
                raise ValueError(f"expires_in must be > 0 seconds, got {expires_in!r}")
            claims["exp"] = math.ceil(time.time() + expires_in)  # never sooner than asked
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def verify(self, token: str) -> dict[str, Any] | None:
        """The payload of a valid, unexpired token signed by us; None otherwise."""
        try:
            payload: dict[str, Any] = jwt.decode(token, self._secret, algorithms=[ALGORITHM])
        except (jwt.PyJWTError, ValueError, TypeError):
            return None
        return payload


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, if that is what it is."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def user_id_of(payload: Mapping[str, Any] | None) -> str | None:
    """The user a token speaks for: its ``uid`` claim, else ``sub``."""
    if not payload:
        return None
    user = payload.get("uid", payload.get("sub"))
    return None if user is None else str(user)


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
