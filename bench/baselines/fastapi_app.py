"""Baseline for bench/compare.py: a FastAPI app on uvicorn, written the way FastAPI's docs teach
(path operations, the WebSockets page's ``ConnectionManager``, ``StreamingResponse``,
``StaticFiles``).

    python bench/baselines/fastapi_app.py [--port 0] [--uvloop] [--static-dir DIR]

- ``/echo``: a WebSocket that sends every text message back; opened with ``?hello=1`` it is
  first sent its own id (for ``/push``);
- ``GET /broadcast?msg=...``: ``ConnectionManager.broadcast``, one ``await send_text`` per
  connected ``/echo`` socket in turn (the docs' broadcast), answers ``{"count": n}``;
- ``GET /hello``: ``{"message": "Hello, world!"}`` from an ``async def`` returning a dict, as
  laf-py's bench/compare_functions/hello.py does;
- ``GET /stream``: a ``StreamingResponse`` of 10 chunks of 1 KiB;
- ``GET /<file>``: the files of ``--static-dir``, by ``StaticFiles`` mounted at ``/``;
- ``POST /push?id=...``: sends the body to the ``/echo?hello=1`` socket with that id.

Served by bench/baselines/uvicorn_serve.py (uvicorn's defaults: uvloop, httptools, websockets).
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import StreamingResponse
from fastapi.staticfiles import StaticFiles
from uvicorn_serve import serve


class ConnectionManager:
    def __init__(self) -> None:
        self.active_connections: dict[str, WebSocket] = {}

    async def connect(self, websocket: WebSocket) -> str:
        await websocket.accept()
        socket_id = f"{id(websocket):x}"
        self.active_connections[socket_id] = websocket
        return socket_id

    def disconnect(self, socket_id: str) -> None:
        self.active_connections.pop(socket_id, None)

    async def send_to(self, socket_id: str, message: str) -> bool:
        websocket = self.active_connections.get(socket_id)
        if websocket is None:
            return False
        await websocket.send_text(message)
        return True

    async def broadcast(self, message: str) -> int:
        count = 0
        for connection in list(self.active_connections.values()):
            try:
                await connection.send_text(message)
                count += 1
            except (WebSocketDisconnect, RuntimeError):  # closed since the loop began
                pass
        return count


app = FastAPI()
manager = ConnectionManager()
CHUNK = b"0123456789abcde\n" * 64  # 1 KiB


@app.websocket("/echo")
async def echo(websocket: WebSocket, hello: str | None = None) -> None:
    socket_id = await manager.connect(websocket)
    try:
        if hello is not None:
            await websocket.send_text(socket_id)
        while True:
            data = await websocket.receive_text()
            await websocket.send_text(data)
    except WebSocketDisconnect:
        pass
    finally:
        manager.disconnect(socket_id)


@app.get("/broadcast")
async def broadcast(msg: str = "broadcast") -> dict[str, int]:
    return {"count": await manager.broadcast(msg)}


@app.get("/hello")
async def hello() -> dict[str, str]:
    return {"message": "Hello, world!"}


async def chunks() -> AsyncIterator[bytes]:
    for _ in range(10):
        yield CHUNK


@app.get("/stream")
async def stream() -> StreamingResponse:
    return StreamingResponse(chunks(), media_type="text/plain")


@app.post("/push")
async def push(id: str, request: Request) -> dict[str, int]:
    delivered = await manager.send_to(id, (await request.body()).decode())
    return {"delivered": int(delivered)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--uvloop", action="store_true", help="uvloop by name (auto picks it)")
    parser.add_argument("--static-dir", help="a folder served at / by StaticFiles")
    args = parser.parse_args()
    if args.static_dir is not None:  # after the routes: a mount at / takes what they do not
        app.mount("/", StaticFiles(directory=args.static_dir), name="static")
    serve(app, args.port, args.uvloop)
