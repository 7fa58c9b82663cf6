"""Baseline for bench/compare.py: a Starlette app on uvicorn, written the way Starlette's docs
teach (``Route``/``WebSocketRoute``/``Mount`` in ``Starlette(routes=...)``, endpoints that take
a request and return a response, ``StreamingResponse``, ``StaticFiles``).

    python bench/baselines/starlette_app.py [--port 0] [--uvloop] [--static-dir DIR]

The same endpoints as bench/baselines/fastapi_app.py:

- ``/echo``: a WebSocket that sends every text message back; opened with ``?hello=1`` it is
  first sent its own id (for ``/push``);
- ``GET /broadcast?msg=...``: one ``await send_text`` per connected ``/echo`` socket in turn,
  answers ``{"count": n}``;
- ``GET /hello``: a ``JSONResponse`` of ``{"message": "Hello, world!"}`` from an ``async def``
  (laf-py's bench/compare_functions/hello.py returns that dict);
- ``GET /stream``: a ``StreamingResponse`` of 10 chunks of 1 KiB;
- ``GET /<file>``: the files of ``--static-dir``, by ``StaticFiles`` mounted at ``/``;
- ``POST /push?id=...``: sends the body to the ``/echo?hello=1`` socket with that id.

Served by bench/baselines/uvicorn_serve.py (uvicorn's defaults: uvloop, httptools, websockets).
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect
from uvicorn_serve import serve

CONNECTED: dict[str, WebSocket] = {}
CHUNK = b"0123456789abcde\n" * 64  # 1 KiB


async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    socket_id = f"{id(websocket):x}"
    CONNECTED[socket_id] = websocket
    try:
        if "hello" in websocket.query_params:
            await websocket.send_text(socket_id)
        while True:
            await websocket.send_text(await websocket.receive_text())
    except WebSocketDisconnect:
        pass
    finally:
        CONNECTED.pop(socket_id, None)


async def broadcast(request: Request) -> JSONResponse:
    message = request.query_params.get("msg", "broadcast")
    count = 0
    for websocket in list(CONNECTED.values()):
        try:
            await websocket.send_text(message)
            count += 1
        except (WebSocketDisconnect, RuntimeError):  # closed since the loop began
            pass
    return JSONResponse({"count": count})


async def hello(request: Request) -> JSONResponse:
    return JSONResponse({"message": "Hello, world!"})


async def chunks() -> AsyncIterator[bytes]:
    for _ in range(10):
        yield CHUNK


async def stream(request: Request) -> StreamingResponse:
    return StreamingResponse(chunks(), media_type="text/plain")


async def push(request: Request) -> JSONResponse:
    websocket = CONNECTED.get(request.query_params["id"])
    if websocket is not None:
        await websocket.send_text((await request.body()).decode())
    return JSONResponse({"delivered": int(websocket is not None)})


def create_app(static_dir: str | None) -> Starlette:
    routes: list[Any] = [
        WebSocketRoute("/echo", echo),
        Route("/broadcast", broadcast),
        Route("/hello", hello),
        Route("/stream", stream),
        Route("/push", push, methods=["POST"]),
    ]
    if static_dir is not None:
        routes.append(Mount("/", app=StaticFiles(directory=static_dir), name="static"))
    return Starlette(routes=routes)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--uvloop", action="store_true", help="uvloop by name (auto picks it)")
    parser.add_argument("--static-dir", help="a folder served at / by StaticFiles")
    args = parser.parse_args()
    serve(create_app(args.static_dir), args.port, args.uvloop)
