"""Tests of this app's functions, against a real laf-py server (laf_py.testing.TestClient).

Run them with: pytest
"""

from pathlib import Path

from laf_py.testing import TestClient

APP = Path(__file__).resolve().parent.parent


def test_hello() -> None:
    with TestClient(APP) as client:
        assert client.get("hello").text == "Hello, world!"
        assert client.get("hello", query={"name": "Ada"}).text == "Hello, Ada!"


def test_websocket_greets_and_echoes() -> None:
    with TestClient(APP) as client, client.websocket(user="ada") as ws:
        assert ws.receive_json() == {"type": "welcome", "user": "ada"}
        ws.send("hi")
        assert ws.receive_json() == {"type": "echo", "data": "hi"}


def test_push_reaches_every_device_of_a_user() -> None:
    with TestClient(APP) as client:
        with client.websocket(user="ada") as phone, client.websocket(user="ada") as laptop:
            phone.receive_json()
            laptop.receive_json()
            response = client.post("push", json={"user": "ada", "message": "lunch?"})
            assert response.json() == {"delivered": 2}
            assert phone.receive_json() == {"type": "push", "message": "lunch?"}
            assert laptop.receive_json() == {"type": "push", "message": "lunch?"}
        assert client.post("push", json={"user": "ada", "message": "?"}).status_code == 404
        assert client.post("push", json={"user": "", "message": "?"}).status_code == 400


def test_the_page_is_served() -> None:
    with TestClient(APP) as client:
        page = client.get("/")
        assert page.status_code == 200
        assert "/__websocket__" in page.text
