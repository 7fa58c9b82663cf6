"""Baseline for bench/compare.py: a plain Tornado app, what one would write without laf-py.

    python bench/baselines/tornado_app.py [--port 0] [--uvloop] [--static-dir DIR]

- ``/echo``: a WebSocket handler that writes every message back;
- ``GET /broadcast?msg=...``: loops over every connected ``/echo`` handler calling
  ``write_message`` (the naive broadcast) and answers ``{"count": n}``;
- ``GET /hello``: ``{"message": "Hello, world!"}`` (a dict, written as JSON);
- ``GET /stream``: 10 chunks of 1 KiB, each written and flushed (``await self.flush()``);
- ``GET /<file>``: the files of ``--static-dir``, by Tornado's own ``StaticFileHandler``;
- ``POST /push?id=...``: writes the body to the one ``/echo?hello=1`` connection with that id
  (such a connection is sent its id when it opens).

Prints ``listening on http://127.0.0.1:PORT`` once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import tornado.httpserver
import tornado.netutil
import tornado.web
import tornado.websocket

CONNECTED: set[EchoHandler] = set()
BY_ID: dict[str, EchoHandler] = {}


class EchoHandler(tornado.websocket.WebSocketHandler):
    def open(self) -> None:
        CONNECTED.add(self)
        if self.get_query_argument("hello", None) is not None:
            socket_id = f"{id(self):x}"
            BY_ID[socket_id] = self
            self.write_message(socket_id)

    def on_message(self, message: str | bytes) -> None:
        self.write_message(message, binary=isinstance(message, bytes))

    def on_close(self) -> None:
        CONNECTED.discard(self)
        BY_ID.pop(f"{id(self):x}", None)


class BroadcastHandler(tornado.web.RequestHandler):
    def get(self) -> None:
        message = self.get_argument("msg", "broadcast")
        count = 0
        for handler in list(CONNECTED):
            try:
                handler.write_message(message)
                count += 1
            except tornado.websocket.WebSocketClosedError:
                pass
        self.write({"count": count})


class PushHandler(tornado.web.RequestHandler):
    def post(self) -> None:
        handler = BY_ID.get(self.get_argument("id"))
        if handler is not None:
            handler.write_message(self.request.body.decode())
        self.write({"delivered": int(handler is not None)})


class HelloHandler(tornado.web.RequestHandler):
    def get(self) -> None:
        self.write({"message": "Hello, world!"})


CHUNK = b"0123456789abcde\n" * 64  # 1 KiB


class StreamHandler(tornado.web.RequestHandler):
    async def get(self) -> None:
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        for _ in range(10):
            self.write(CHUNK)
            await self.flush()
        self.finish()


async def main(port: int, static_dir: str | None) -> None:
    routes: list[Any] = [
        (r"/echo", EchoHandler),
        (r"/broadcast", BroadcastHandler),
        (r"/hello", HelloHandler),
        (r"/push", PushHandler),
        (r"/stream", StreamHandler),
    ]
    if static_dir is not None:
        routes.append((r"/(.*)", tornado.web.StaticFileHandler, {"path": static_dir}))
    app = tornado.web.Application(routes)
    sockets = tornado.netutil.bind_sockets(port, "127.0.0.1")
    server = tornado.httpserver.HTTPServer(app)
    server.add_sockets(sockets)
    bound = sockets[0].getsockname()[1]
    print(f"listening on http://127.0.0.1:{bound}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop's event loop")
    parser.add_argument("--static-dir", help="a folder served at / by StaticFileHandler")
    args = parser.parse_args()
    if args.uvloop:
        import uvloop

        uvloop.run(main(args.port, args.static_dir))
    else:
        asyncio.run(main(args.port, args.static_dir))
