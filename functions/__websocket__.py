"""The WebSocket function: one handler for every event on ``/__websocket__``.

This is Laf's "user map" demo (a ``userID -> sockets`` map kept in ``cloud.shared``
under ``"wsMap"``) plus a small Lolo-style chat with rooms. Three behaviours:

1. **User map.** Each connection gets a random userID (12 lowercase hex digits), or
   its token's user (see below). ``cloud.shared["wsMap"][userID]`` is the set of that
   user's open ``Socket`` objects, one per device, so any HTTP function can push to
   them (see ``functions/push.py``). The id is also kept in
   ``ctx.socket.state["user_id"]``.
2. **Chat.** A text frame holding JSON ``{"type": "chat", "text": "<str>"}`` is
   relayed to every *other* connection; with ``"room": "<name>"`` only to the other
   members of that room. ``{"type": "join", "room": "<name>"}`` and
   ``{"type": "leave", "room": "<name>"}`` enter and leave rooms (a connection leaves
   its rooms when it closes); ``POST /fn/chat/system`` posts to a room from HTTP.
3. **Echo.** Anything else is echoed back to the sender.

Frames, exactly (``<id>`` is the userID):

* on connect, to the new client, one text frame::

      Connection established, your userID is: <id>

* chat message in -> every other client gets the JSON text frame
  ``{"type": "chat", "from": "<id>", "text": "<text>"}`` and the sender gets
  ``{"type": "ack", "delivered": <number of other clients reached>}``. With a room,
  the frame carries ``"room": "<name>"`` too and goes to the room's other members
  only (the sender need not be one).
* join / leave in -> the sender gets ``{"type": "joined", "room": "<name>", "rooms":
  [<its rooms>]}`` (``"left"`` for leave). A room that is not a non-empty string ->
  ``{"type": "error", "error": "room (a non-empty string) is required"}``.
* any other text frame ``<data>`` -> the sender gets two frames, in order::

      Server has received the message event, your userID is: <id>
      {"echo": "<data>"}

* a binary frame -> the same first text frame, then the same bytes back as a
  binary frame.
* on close: the socket leaves its user's set in ``wsMap`` (the userID goes when
  its last socket has); nothing is sent.

A client that connects with a token (``?token=`` from ``POST /fn/login``) gets its token's
user id as userID instead of a random one, and may connect from several devices at once:
each is one more socket in the user's set. Every connection also stores its id in
``cloud.kv`` under ``DEMO_SOCKET_CONNECTION_ID`` (the newest wins), for the Less flow of
``POST /fn/hello``. ``cloud.shared`` belongs to one process, so for other workers and
machines a random userID (one connection) also keeps its socket id in ``cloud.kv`` under
``ws/<userID>``; a token user needs no such key, as ``cloud.sockets.send_to_user`` finds
all of that user's sockets everywhere.

Try it (``npm i -g wscat``), with the server on port 8000, in two terminals::

    wscat -c ws://localhost:8000/__websocket__
    > hello
    < Server has received the message event, your userID is: 3f9c0a1b2c4d
    < {"echo":"hello"}
    > {"type": "chat", "text": "hi all"}
    < {"type":"ack","delivered":1}
    > {"type": "join", "room": "python"}
    < {"type":"joined","room":"python","rooms":["python"]}
    > {"type": "chat", "room": "python", "text": "hi room"}
    < {"type":"ack","delivered":0}

and push to a user from HTTP (every connection of theirs)::

    curl -X POST localhost:8000/fn/push -H 'content-type: application/json' \\
         -d '{"userID": "3f9c0a1b2c4d", "message": "hello from HTTP"}'

With a token, connect as one user from two terminals; a push to them reaches both::

    wscat -c "ws://localhost:8000/__websocket__?token=$TOKEN"     # twice
    curl -X POST localhost:8000/fn/push -H 'content-type: application/json' \\
         -d '{"userID": "alice", "message": "to every device"}'   # {"delivered":2}
"""

import json
import secrets
from typing import Any

from laf_py import FunctionContext, Socket, cloud

WS_MAP = "wsMap"
LESS_KEY = "DEMO_SOCKET_CONNECTION_ID"
CONNECTED = "Connection established, your userID is: "
RECEIVED = "Server has received the message event, your userID is: "


def ws_map() -> dict[str, set[Socket]]:
    """The ``userID -> {Socket, ...}`` map, created on first use (Laf's pattern)."""
    users = cloud.shared.get(WS_MAP)
    if users is None:
        users = {}
        cloud.shared.set(WS_MAP, users)
    return users


ROOM_REQUIRED = "room (a non-empty string) is required"


def command(data: str | bytes, is_binary: bool) -> dict[str, Any] | None:
    """A JSON object with a ``type`` of chat, join or leave, or None when ``data`` is not
    one (it is then echoed). A chat needs a string ``text``."""
    if is_binary:
        return None
    try:
        message: Any = json.loads(data)
    except ValueError:
        return None
    if not isinstance(message, dict):
        return None
    kind = message.get("type")
    if kind == "chat" and isinstance(message.get("text"), str):
        return message
    if kind in ("join", "leave"):
        return message
    return None


def room_of(message: dict[str, Any]) -> str | None:
    room = message.get("room")
    return room if isinstance(room, str) and room else None


async def main(ctx: FunctionContext) -> None:
    socket = ctx.socket
    assert socket is not None  # always set for WebSocket events

    if ctx.method == "WebSocket:connection":
        # With a token (?token=... from /fn/login) the socket is already bound to its user,
        # who may have other devices connected: this socket joins theirs.
        user_id = socket.user_id or secrets.token_hex(6)
        ws_map().setdefault(user_id, set()).add(socket)
        socket.state["user_id"] = user_id
        if socket.user_id is None:
            # A random userID has this one connection. cloud.shared is per process: other
            # workers and machines find it by its id. (They find a token user's sockets with
            # cloud.sockets.send_to_user.)
            await cloud.kv.set(f"ws/{user_id}", socket.id)
        # Less's flow: keep the newest connection id in the key-value store, where an HTTP
        # function (POST /fn/hello) finds it, even from another worker or after a restart.
        await cloud.kv.set(LESS_KEY, socket.id)
        socket.send(CONNECTED + user_id)

    elif ctx.method == "WebSocket:message":
        user_id = socket.state.get("user_id", "")
        data, is_binary = ctx.params["data"], ctx.params["is_binary"]

        message = command(data, is_binary)
        if message is not None:
            room = room_of(message)
            if message["type"] == "chat":
                chat = {"type": "chat", "from": user_id, "text": message["text"]}
                if "room" not in message:  # Lolo-style broadcast: everyone but the sender
                    delivered = await cloud.sockets.broadcast(chat, exclude=[socket])
                elif room is None:
                    socket.send({"type": "error", "error": ROOM_REQUIRED})
                    return
                else:  # the room's members, on every node, but the sender
                    chat["room"] = room
                    delivered = await cloud.sockets.send_to_room(room, chat, exclude=[socket])
                socket.send({"type": "ack", "delivered": delivered})
            elif room is None:
                socket.send({"type": "error", "error": ROOM_REQUIRED})
            elif message["type"] == "join":
                await cloud.sockets.join(socket, room)
                socket.send({"type": "joined", "room": room, "rooms": sorted(socket.rooms)})
            else:
                await cloud.sockets.leave(socket, room)
                socket.send({"type": "left", "room": room, "rooms": sorted(socket.rooms)})
            return

        socket.send(f"{RECEIVED}{user_id}")
        # Binary frames come back unchanged; text comes back wrapped in JSON.
        socket.send(data if is_binary else {"echo": data})

    elif ctx.method == "WebSocket:close":
        # The socket is gone (it has left its rooms by itself): forget it here too (but not
        # the user's other devices).
        user_id = socket.state.get("user_id", "")
        users = ws_map()
        sockets = users.get(user_id, set())
        sockets.discard(socket)
        if not sockets:
            users.pop(user_id, None)
        for key in (LESS_KEY, f"ws/{user_id}"):
            if await cloud.kv.get(key) == socket.id:
                await cloud.kv.delete(key)
