"""What every laf-py handler shares: JSON errors with a request id."""

from __future__ import annotations

from typing import Any

import tornado.web

from ..core.context import new_request_id
from ..core.response import error_body
from ..runtime import Runtime
from .activity import Activity

__all__ = ["INVALID_TOKEN", "BaseHandler", "NotFoundHandler"]

INVALID_TOKEN = "Invalid or expired token"


class BaseHandler(tornado.web.RequestHandler):
    runtime: Runtime
    activity: Activity

    def initialize(self, runtime: Runtime, activity: Activity) -> None:
        self.runtime = runtime
        self.activity = activity

    _request_id: str | None = None

    @property
    def request_id(self) -> str:
        """This request's id, made on first use and sent back as ``X-Request-Id``."""
        if self._request_id is None:
            self._request_id = new_request_id()
            self.set_header("X-Request-Id", self._request_id)
        return self._request_id

    def authenticate(self, token: str | None) -> tuple[bool, dict[str, Any] | None]:
        """(ok, user): no token is fine (user None); a bad or expired one is not."""
        if token is None:
            return True, None
        user = self.runtime.verify_token(token)
        return user is not None, user

    def send_error_json(self, status: int, message: str, **headers: str) -> None:
        """Finish with ``{"error": message, "request_id": ...}``."""
        request_id = self.request_id
        self.clear()
        self.set_status(status)
        self.set_header("X-Request-Id", request_id)
        for name, value in headers.items():
            self.set_header(name, value)
        self.set_header("Content-Type", "application/json")
        self.finish(error_body(message, request_id))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        # Errors Tornado raises itself (unsupported method, malformed request, ...).
        reason = self._reason if status_code != 500 else "Internal Server Error"
        self.send_error_json(status_code, reason)


class NotFoundHandler(BaseHandler):
    def prepare(self) -> None:
        self.send_error_json(404, f"No route for {self.request.path}")
