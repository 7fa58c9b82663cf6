"""The example functions answer through a real server (the README's first steps)."""

from __future__ import annotations

import httpx
import websockets

from .conftest import EXAMPLES


async def test_examples_hello_and_websocket(serve, http: httpx.AsyncClient) -> None:
    async with serve(EXAMPLES) as server:
        response = await http.get(server.fn_url("hello"), params={"name": "Ada"})
        assert response.status_code == 200
        assert response.text == "Hello, Ada!"
        async with websockets.connect(server.ws_url) as ws:
            greeting = await ws.recv()
            assert greeting.startswith("Connection established, your userID is: ")
