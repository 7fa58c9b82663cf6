"""Baseline for bench/compare.py: a python-socketio server on uvicorn, written the way its docs
teach (``socketio.AsyncServer(async_mode="asgi")`` wrapped in ``socketio.ASGIApp``, event
handlers registered with ``sio.on``, ``emit``).

    python bench/baselines/socketio_app.py [--port 0] [--uvloop]

- ``/socket.io/``: Socket.IO (Engine.IO v4, Socket.IO v5 protocol); the ``echo`` event is
  emitted back to its sender with the same data;
- ``GET /broadcast?msg=...`` (a small Starlette app given as ``other_asgi_app``, as the docs
  show for serving other routes beside Socket.IO): ``await sio.emit("broadcast", msg)`` to every
  connected client, answers ``{"count": n}``.

Socket.IO speaks its own protocol over the WebSocket, so bench/loadgen.py drives it with its
``socketio`` client mode (the handshake and ``42["echo", ...]`` event frames); HTTP hello,
static, stream and push are not measured on it. Served by bench/baselines/uvicorn_serve.py.
"""

from __future__ import annotations

import argparse

import socketio  # type: ignore[import-untyped]
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from uvicorn_serve import serve

sio = socketio.AsyncServer(async_mode="asgi")
CONNECTED: set[str] = set()


async def connect(sid: str, environ: dict[str, object]) -> None:
    CONNECTED.add(sid)


async def disconnect(sid: str, reason: str) -> None:
    CONNECTED.discard(sid)


async def echo(sid: str, data: object) -> None:
    await sio.emit("echo", data, to=sid)


sio.on("connect", connect)
sio.on("disconnect", disconnect)
sio.on("echo", echo)


async def broadcast(request: Request) -> JSONResponse:
    await sio.emit("broadcast", request.query_params.get("msg", "broadcast"))
    return JSONResponse({"count": len(CONNECTED)})


app = socketio.ASGIApp(sio, other_asgi_app=Starlette(routes=[Route("/broadcast", broadcast)]))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--uvloop", action="store_true", help="uvloop by name (auto picks it)")
    args = parser.parse_args()
    serve(app, args.port, args.uvloop)
