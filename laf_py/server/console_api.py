"""The console's own admin API (``/_/api/...``): functions, tokens, sockets and users.

Every handler is an :class:`~.admin.AdminHandler`, so every request, reads and actions alike,
passes the admin rule (the token, or loopback only; same-origin only). Actions also need a JSON
body (``Content-Type: application/json``): a plain HTML form of another site cannot send one.
Each action is logged (logger ``laf_py``) as done by the console, with what it reached.

Sockets are this process's: with several workers or nodes, the list is the one of whichever
process answered; sends and closes by id reach a socket on any node (through Redis).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from .. import __version__
from ..cloud.sockets import Socket
from ..cloud.sql import redacted
from ..cloud.tokens import check_user_id
from ..core.registry import (
    DEFAULT,
    INIT_FILE,
    INTERCEPTOR,
    PRESENCE,
    WEBSOCKET,
    Function,
    is_public_name,
)
from .admin import AdminHandler

__all__ = [
    "FunctionsHandler",
    "InfoHandler",
    "SocketCloseHandler",
    "SocketSendHandler",
    "SocketsHandler",
    "TokenHandler",
    "UserSendHandler",
    "describe_function",
]

log = logging.getLogger("laf_py")

TOKEN_LIFETIME = 3600.0  # seconds: a token the console signs for the run panel
CONSOLE_CLOSE_REASON = "closed from the console"
_KINDS = {
    WEBSOCKET: "websocket",
    INTERCEPTOR: "interceptor",
    INIT_FILE: "init",
    PRESENCE: "presence",
    DEFAULT: "default",
}


def _shown_path(path: Path, app: Path) -> str:
    """A file as ``functions/hello.py``: relative to the functions folder's parent."""
    try:
        return path.resolve().relative_to(app).as_posix()
    except (ValueError, OSError):
        return str(path)


def describe_function(function: Function, root: Path) -> dict[str, Any]:
    """One function file as the console shows it: settings, and the load error if any."""
    error = function.error
    try:
        modified: float | None = function.path.stat().st_mtime
    except OSError:
        modified = None
    app = root.resolve().parent
    path = _shown_path(function.path, app)
    return {
        "name": function.name,
        "path": path,
        "kind": _KINDS.get(function.name, "http" if is_public_name(function.name) else "private"),
        "callable": is_public_name(function.name),  # reachable at /fn/<name>
        "loaded": error is None,
        "methods": sorted(function.methods) if function.methods is not None else None,
        "timeout": function.timeout,
        "schedule": str(function.schedule) if function.schedule is not None else None,
        "is_async": function.is_async,
        "is_stream": function.is_generator,
        "modified": modified,
        "error": None
        if error is None
        else {
            "file": _shown_path(Path(error.path), app),
            "line": error.line,
            "message": error.reason,
        },
    }


class _ConsoleAPI(AdminHandler):
    """JSON in, JSON out; actions log as done by the console."""

    def json_body(self) -> dict[str, Any] | None:
        """The request's JSON object, or None after answering 400/415."""
        content_type = self.request.headers.get("Content-Type", "").split(";")[0].strip()
        if content_type.lower() != "application/json":
            self.send_error_json(415, "send a JSON body (Content-Type: application/json)")
            return None
        try:
            body = orjson.loads(self.request.body or b"{}")
        except orjson.JSONDecodeError:
            self.send_error_json(400, "the body is not valid JSON")
            return None
        if not isinstance(body, dict):
            self.send_error_json(400, "the body must be a JSON object")
            return None
        return body

    def answer(self, value: dict[str, Any], status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(orjson.dumps(value))


class InfoHandler(_ConsoleAPI):
    """``GET /_/api/info``: what the page's header shows. No secret, no password."""

    def get(self) -> None:
        settings = self.runtime.settings
        redis = None
        if settings.redis_url:
            parts = urlsplit(settings.redis_url)
            redis = f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}"
        self.answer(
            {
                "version": __version__,
                "node": self.runtime.sockets.node_id,
                "pid": os.getpid(),
                "time": time.time(),
                "functions_dir": str(settings.functions),
                "database": redacted(settings.database),
                "redis": redis,
                "cluster": settings.cluster if settings.redis_url else None,
                "workers": settings.workers,
                "reload": settings.reload,
                "metrics": settings.metrics,
                "default_timeout": settings.timeout,
                "admin_token_set": settings.admin_token is not None,
            }
        )


class FunctionsHandler(_ConsoleAPI):
    """``GET /_/api/functions``: every function file, loaded or failed (the page polls it,
    so a hot reload shows up within its interval)."""

    def get(self) -> None:
        registry = self.runtime.registry
        self.answer(
            {
                "functions": [describe_function(f, registry.root) for f in registry.functions()],
                "default_timeout": self.runtime.settings.timeout,
            }
        )


class TokenHandler(_ConsoleAPI):
    """``POST /_/api/token`` ``{"user": "ada", "claims": {...}}``: a token for the run panel,
    signed with the server secret, valid for an hour."""

    def post(self) -> None:
        body = self.json_body()
        if body is None:
            return
        user, claims = body.get("user"), body.get("claims") or {}
        if not isinstance(claims, dict):
            return self.send_error_json(400, "claims must be a JSON object")
        try:
            check_user_id(user, "user")
            assert self.runtime.tokens is not None
            token = self.runtime.tokens.issue({**claims, "uid": user}, expires_in=TOKEN_LIFETIME)
        except (TypeError, ValueError) as exc:
            return self.send_error_json(400, str(exc))
        log.info("console: signed a token for user %r (valid %ds)", user, TOKEN_LIFETIME)
        self.answer({"token": token, "user": user, "expires_in": TOKEN_LIFETIME})


def _socket_row(socket: Socket, node: str) -> dict[str, Any]:
    return {
        "id": socket.id,
        "node": node,
        "user": socket.user_id,
        "connected_at": socket.connected_at,
        "remote_address": socket.remote_address,
        "messages_in": socket.messages_in,
        "messages_out": socket.messages_out,
        "rooms": sorted(socket.rooms),
    }


class SocketsHandler(_ConsoleAPI):
    """``GET /_/api/sockets``: this process's connections, and the online users of all."""

    async def get(self) -> None:
        sockets = self.runtime.sockets
        rows = [_socket_row(s, sockets.node_id) for s in sockets]
        rows.sort(key=lambda row: (row["connected_at"] or 0, row["id"]))
        self.answer(
            {
                "node": sockets.node_id,
                "nodes": {sockets.node_id: len(rows)},
                "count": len(rows),
                "sockets": rows,
                "online_users": sorted(await sockets.online_users()),
            }
        )


class SocketSendHandler(_ConsoleAPI):
    """``POST /_/api/sockets/<id>/send`` ``{"message": <str or JSON>}``."""

    async def post(self, socket_id: str) -> None:
        body = self.json_body()
        if body is None:
            return
        if "message" not in body:
            return self.send_error_json(400, 'send {"message": ...}')
        socket = self.runtime.sockets.get(socket_id)
        if socket is None:
            return self.send_error_json(404, f"no open socket {socket_id!r}")
        try:
            delivered = await socket.send(body["message"])
        except ValueError as exc:
            return self.send_error_json(400, str(exc))
        log.info("console: sent a test message to socket %s (delivered: %d)", socket_id, delivered)
        self.answer({"delivered": delivered})


class SocketCloseHandler(_ConsoleAPI):
    """``POST /_/api/sockets/<id>/close`` ``{"code": 1000, "reason": "..."}`` (both optional)."""

    async def post(self, socket_id: str) -> None:
        body = self.json_body()
        if body is None:
            return
        code, reason = body.get("code", 1000), body.get("reason", CONSOLE_CLOSE_REASON)
        if not isinstance(reason, str):
            return self.send_error_json(400, "reason must be a string")
        socket = self.runtime.sockets.get(socket_id)
        if socket is None:
            return self.send_error_json(404, f"no open socket {socket_id!r}")
        try:
            socket.close(code, reason)
        except ValueError as exc:
            return self.send_error_json(400, str(exc))
        log.info("console: closed socket %s (code %s, %r)", socket_id, code, reason)
        self.answer({"closing": True})


class UserSendHandler(_ConsoleAPI):
    """``POST /_/api/users/<uid>/send`` ``{"message": ...}``: every connection of the user."""

    async def post(self, user_id: str) -> None:
        body = self.json_body()
        if body is None:
            return
        if "message" not in body:
            return self.send_error_json(400, 'send {"message": ...}')
        try:
            delivered = await self.runtime.sockets.send_to_user(user_id, body["message"])
        except (TypeError, ValueError) as exc:
            return self.send_error_json(400, str(exc))
        log.info("console: sent a test message to user %r (delivered: %d)", user_id, delivered)
        self.answer({"delivered": delivered})
