"""The chat server behind ``python -m reinhardt_ws serve``, built on the public API.

Client to server (JSON text)::

    {"type": "join", "room": R}
    {"type": "leave", "room": R}
    {"type": "message", "room": R, "data": <any JSON>}

Server to client, each a ``WebSocketMessage`` (``message_type`` "text"):
``{"event": "joined"|"left", "room": R, "size": N}`` to the one who joined or
left; ``{"event": "message", "room": R, "from": <sender id>, "data": ...}`` to
every member of R, the sender included; ``{"event": "error", "error": ...}`` for
bad input, and the connection stays open.  ``GET /`` serves a browser client,
``GET /healthz`` answers 200.

Limits, each answered with an ``error`` event (nothing else changes):

- a connection is in at most ``max_rooms_per_connection`` rooms of the manager
  (:data:`MAX_ROOMS_PER_CONNECTION` for the manager this handler makes itself;
  ``--max-rooms`` on the command line);
- a message event is broadcast only if its encoded form (the ``data`` re-encoded
  by orjson, inside the event envelope) fits ``max_message_size``, the limit every
  member's connection delivers (pass the server's own): a float such as ``9e15``
  re-encodes as ``9000000000000000.0``, so a message that was accepted may grow
  past it;
- a room name has at most :data:`MAX_ROOM_NAME` characters.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from typing import Any

import orjson

from ..connection import WebSocketConnection
from ..errors import ConnectionClosed, RoomLimitError
from ..handler import WebSocketHandler
from ..options import MiB
from ..protocol.messages import Message, MessageType, WebSocketMessage
from ..rooms import RoomManager
from ..server import HTTPResponse

__all__ = ["MAX_ROOMS_PER_CONNECTION", "MAX_ROOM_NAME", "ChatHandler", "chat_http_handler"]

MAX_ROOM_NAME = 200
#: Rooms one connection may be in, unless the manager given says otherwise.
MAX_ROOMS_PER_CONNECTION = 100


def _event(data: dict[str, Any]) -> WebSocketMessage:
    return WebSocketMessage.text(data).with_timestamp()


class ChatHandler(WebSocketHandler):
    """Rooms chat: join, leave, and messages to a room one has joined.

    *rooms* defaults to a manager of its own with ``max_rooms_per_connection``
    :data:`MAX_ROOMS_PER_CONNECTION`.  *max_message_size* (bytes; None: no check)
    is the largest event this handler broadcasts: give it the server's
    ``max_message_size``.  Per message, the work does not depend on the number
    of rooms the sender is in.
    """

    def __init__(self, rooms: RoomManager | None = None, *,
                 max_message_size: int | None = MiB) -> None:
        if max_message_size is not None and max_message_size < 1:
            raise ValueError("max_message_size must be positive or None")
        self.rooms = rooms if rooms is not None else RoomManager(
            max_rooms_per_connection=MAX_ROOMS_PER_CONNECTION)
        self.max_message_size = max_message_size

    async def _error(self, conn: WebSocketConnection, error: str) -> None:
        await conn.send(_event({"event": "error", "error": error}))

    async def on_message(self, conn: WebSocketConnection, message: Message) -> None:
        try:
            await self._dispatch(conn, message)
        except ConnectionClosed:
            # The client left before our answer (it sent, then closed at once):
            # an ordinary end of conversation, not a handler failure.
            pass

    async def _dispatch(self, conn: WebSocketConnection, message: Message) -> None:
        if message.type is not MessageType.TEXT:
            await self._error(conn, "expected a JSON text message")
            return
        try:
            request = orjson.loads(message.payload)
        except orjson.JSONDecodeError:
            await self._error(conn, "not JSON")
            return
        if not isinstance(request, dict):
            await self._error(conn, "expected a JSON object")
            return
        kind = request.get("type")
        if kind not in ("join", "leave", "message"):
            await self._error(conn, f"unknown type: {kind!r}")
            return
        room = request.get("room")
        if not isinstance(room, str) or not room:
            await self._error(conn, "missing room")
            return
        if len(room) > MAX_ROOM_NAME:
            await self._error(conn, f"room name longer than {MAX_ROOM_NAME} characters")
            return
        rooms = self.rooms
        if kind == "join":
            try:
                await rooms.join(room, conn)
            except RoomLimitError as exc:
                await self._error(conn, f"room limit reached: at most {exc.limit} rooms "
                                        "per connection")
                return
            size = await rooms.room_size(room)
            await conn.send(_event({"event": "joined", "room": room, "size": size}))
        elif kind == "leave":
            if not await rooms.leave(room, conn):
                await self._error(conn, f"not in room {room!r}")
                return
            size = await rooms.room_size(room)
            await conn.send(_event({"event": "left", "room": room, "size": size}))
        else:
            if "data" not in request:
                await self._error(conn, "missing data")
                return
            if not await rooms.is_member(room, conn):
                await self._error(conn, f"not in room {room!r}")
                return
            encoded = _event({"event": "message", "room": room, "from": conn.id,
                              "data": request["data"]}).to_json()
            limit = self.max_message_size
            if limit is not None and len(encoded) > limit:
                # What the members could not take is not sent to any of them.
                await self._error(conn, f"message too large to deliver: {len(encoded)} bytes "
                                        f"once encoded, the limit is {limit}")
                return
            await rooms.broadcast(room, encoded.decode("utf-8"))


def _page() -> bytes:
    return resources.files("reinhardt_ws.apps").joinpath("static/chat.html").read_bytes()


def chat_http_handler(path: str, headers: Mapping[str, str]) -> HTTPResponse | None:
    """``GET /`` -> the chat page; ``GET /healthz`` -> 200; else not handled."""
    if path == "/healthz":
        return HTTPResponse(200, b"ok\n")
    if path in ("/", "/index.html"):
        return HTTPResponse(200, _page(), "text/html; charset=utf-8")
    return None
