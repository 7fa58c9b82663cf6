"""How the uvicorn baselines of bench/compare.py are served: ``uvicorn.Server`` with its own
defaults, which with ``uvicorn[standard]`` installed means uvloop, httptools and the websockets
library's protocol, as ``uvicorn app:app`` would run them.

Only two settings differ from ``uvicorn.run(app, host=..., port=...)``: the log level is
``warning`` and the access log is off, as laf-py runs in the bench. With ``--port 0`` the port
is the kernel's choice, so the server prints ``listening on http://127.0.0.1:PORT`` once it
listens (at ``warning`` uvicorn's own "Uvicorn running on" line is not printed).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import uvicorn


class Server(uvicorn.Server):
    """``uvicorn.Server`` that prints the port it listens on once it listens."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            port = self.servers[0].sockets[0].getsockname()[1]
            print(f"listening on http://127.0.0.1:{port}", flush=True)


def serve(app: Callable[..., Any], port: int, uvloop: bool = False) -> None:
    """Serve ``app`` on 127.0.0.1 until SIGTERM/SIGINT (uvicorn's graceful shutdown).

    ``uvloop``: ask for uvloop by name (``--uvloop`` of the other baselines); without it,
    uvicorn's default ``loop="auto"`` picks uvloop anyway when it is installed."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        loop="uvloop" if uvloop else "auto",
    )
    Server(config).run()
