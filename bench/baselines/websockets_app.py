"""Baseline for bench/compare.py: a server on the websockets library (asyncio implementation).

    python bench/baselines/websockets_app.py [--port 0] [--uvloop]

- any path: a WebSocket that sends every message back;
- ``GET /broadcast?msg=...`` (plain HTTP, on the same port): answered from ``process_request``
  before any WebSocket handshake, it calls ``websockets.broadcast(server.connections, msg)``
  and answers ``{"count": n}``. This is the simplest trigger that is the same as for the other
  two servers (one HTTP call); websockets answers it with ``Connection: close``, so the
  trigger's client opens a new connection for every call, as it does for the others.

The websockets library is not an HTTP framework, so ``/hello`` is not benchmarked against it.
Prints ``listening on http://127.0.0.1:PORT`` once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from urllib.parse import parse_qs, urlsplit

import websockets
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

SERVER: list[Server] = []


async def echo(connection: ServerConnection) -> None:
    async for message in connection:
        await connection.send(message)


def process_request(connection: ServerConnection, request: Request) -> Response | None:
    url = urlsplit(request.path)
    if url.path != "/broadcast":
        return None
    message = parse_qs(url.query).get("msg", ["broadcast"])[0]
    connections = SERVER[0].connections
    websockets.broadcast(connections, message)
    response = connection.respond(200, json.dumps({"count": len(connections)}))
    response.headers["Content-Type"] = "application/json"
    return response


async def main(port: int) -> None:
    async with serve(
        echo, "127.0.0.1", port, process_request=process_request, compression=None
    ) as server:
        SERVER.append(server)
        port = next(iter(server.sockets)).getsockname()[1]
        print(f"listening on http://127.0.0.1:{port}", flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop's event loop")
    args = parser.parse_args()
    if args.uvloop:
        import uvloop

        uvloop.run(main(args.port))
    else:
        asyncio.run(main(args.port))
