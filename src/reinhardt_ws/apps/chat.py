"""The chat server behind ``python -m reinhardt_ws serve``, built on the public API.

Client to server (JSON text)::

    {"type": "join", "room": R}
    {"type": "leave", "room": R}
    {"type": "message", "room": R, "data": <any JSON>}

Server to client, each a ``WebSocketMessage`` (``message_type`` "text"):
``{"event": "joined"|"left", "room": R, "size": N}`` to the one who joined or
left; ``{"event": "message", "room": R, "from": <sender id>, "data": ...}`` to
every member of R, the sender included; ``{"event": "error", "error": ...}`` for
bad input, and the connection stays open.  :func:`chat_router` puts it on a
port: WebSocket upgrades on ``/`` and ``/ws``; ``GET /`` serves a browser client,
``GET /healthz`` answers 200.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import orjson

from ..connection import WebSocketConnection
from ..errors import ConnectionClosed
from ..handler import WebSocketHandler
from ..protocol.handshake import HTTPResponse, Request
from ..protocol.messages import Message, MessageType, WebSocketMessage
from ..protocol.routing import Router
from ..rooms import RoomManager

__all__ = ["ChatHandler", "chat_router"]

MAX_ROOM_NAME = 200


def _event(data: dict[str, Any]) -> WebSocketMessage:
    return WebSocketMessage.text(data).with_timestamp()


class ChatHandler(WebSocketHandler):
    """Rooms chat: join, leave, and messages to a room one has joined."""

    def __init__(self, rooms: RoomManager | None = None) -> None:
        self.rooms = rooms if rooms is not None else RoomManager()

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
            await rooms.join(room, conn)
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
            if room not in await rooms.rooms_of(conn):
                await self._error(conn, f"not in room {room!r}")
                return
            await rooms.broadcast(room, _event(
                {"event": "message", "room": room, "from": conn.id, "data": request["data"]}))


def _page() -> bytes:
    return resources.files("reinhardt_ws.apps").joinpath("static/chat.html").read_bytes()


def _page_response(request: Request) -> HTTPResponse:
    return HTTPResponse(200, _page(), "text/html; charset=utf-8")


def _health(request: Request) -> HTTPResponse:
    return HTTPResponse(200, b"ok\n")


def chat_router(handler: ChatHandler) -> Router:
    """The chat server's routes: WebSocket upgrades on ``/`` and ``/ws`` (named
    ``"chat"``) run *handler*; ``GET /`` and ``/index.html`` serve the page,
    ``GET /healthz`` answers ``200 ok``; anything else is 404."""
    return (Router()
            .websocket("/ws", handler, name="chat")
            .websocket("/", handler)
            .http("/", _page_response, name="page")
            .http("/index.html", _page_response)
            .http("/healthz", _health, name="health"))
