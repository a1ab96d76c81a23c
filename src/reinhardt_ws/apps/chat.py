"""The chat server behind ``python -m reinhardt_ws serve``, built on the public API.

Client to server (JSON text)::

    {"type": "join", "room": R}
    {"type": "join", "room": R, "since": {"epoch": E, "offset": O}, "presence": true}
    {"type": "leave", "room": R}
    {"type": "message", "room": R, "data": <any JSON>}

Server to client, each a ``WebSocketMessage`` (``message_type`` "text"):
``{"event": "joined", "room": R, "size": N, "recovered": bool, "epoch": E,
"offset": O}`` to the one who joined (with ``"presence": true`` in the join, also
``"members": [{"id": ..., "user": ...}, ...]``)
(``{"event": "left", "room": R, "size": N}`` to the one who left);
``{"event": "message", "offset": O, "epoch": E, "room": R, "from": <sender id>,
"data": ...}`` to every member of R, the sender included (with ``"user": <name>``
when the sender is authenticated); ``{"event": "presence", "room": R, "change":
"join"|"leave", "id": ..., "user": ...}`` to the other members that joined with
``"presence": true`` when someone joins or leaves; ``{"event": "error", "error":
...}`` for bad input and for what the policy refuses, and the connection stays
open.

**History and recovery.**  Every room keeps its last :data:`CHAT_HISTORY_SIZE`
messages (the manager this handler makes itself, and the CLI's): a plain join
first receives the room's last :data:`CHAT_RECENT` messages, then live ones; a
join with ``since`` (the ``epoch`` and ``offset`` of the last message seen)
receives exactly the messages after it, then live ones, and ``recovered: true``;
``recovered: false`` when the room's history no longer reaches back (or was
lost: another epoch), in which case nothing is replayed.  Either way the
replayed messages arrive before the ``joined`` event, and ``epoch``/``offset``
in it are the room's position when live delivery began.

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

With a :class:`~reinhardt_ws.TokenSigner` (``serve --token-secret``), clients
must bring a signed token (``SignedTokenAuth``: in the query string, ``?token=``,
or as a ``bearer.<token>`` subprotocol next to :data:`CHAT_SUBPROTOCOL`), and a
:class:`~reinhardt_ws.ClaimsPolicy` reads the rooms they may join and publish to
from the token's ``rooms`` and ``publish`` claims (every room when absent).

:func:`chat_router` puts it on a port: WebSocket upgrades on ``/`` and ``/ws``;
``GET /`` serves a browser client, ``GET /healthz`` answers 200, and with a signer
``GET /token`` (or ``/token/<name>``) mints a token.  That endpoint is a DEMO:
anyone who can reach it gets a token for any name.  A real application mints
tokens only after its own login.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Mapping
from importlib import resources
from typing import Any

import orjson

from ..connection import WebSocketConnection
from ..errors import ConnectionClosed, PermissionDenied, RoomLimitError
from ..handler import WebSocketHandler
from ..options import MiB
from ..policy import AllowAll, Policy, authorize
from ..protocol.auth import TokenSigner
from ..protocol.handshake import HTTPResponse, Request
from ..protocol.messages import Message, MessageType, WebSocketMessage
from ..protocol.routing import Router
from ..rooms import HistoryPolicy, JoinResult, Position, RoomManager
from ..rooms.history import EPOCH_MARK, OFFSET_MARK

__all__ = ["CHAT_HISTORY", "CHAT_HISTORY_SIZE", "CHAT_RECENT", "CHAT_SUBPROTOCOL",
           "MAX_ROOMS_PER_CONNECTION", "MAX_ROOM_NAME", "ChatHandler", "chat_http_handler",
           "chat_router", "make_chat_http_handler"]

MAX_ROOM_NAME = 200
#: Rooms one connection may be in, unless the manager given says otherwise.
MAX_ROOMS_PER_CONNECTION = 100
MAX_USER_NAME = 40
#: Messages each chat room keeps (for an hour), and how many a plain join replays.
CHAT_HISTORY_SIZE = 100
CHAT_RECENT = 20
CHAT_HISTORY = HistoryPolicy(size=CHAT_HISTORY_SIZE, ttl=3600.0)

#: The subprotocol the chat server lists, so that a browser can offer it next to
#: a ``bearer.<token>`` entry (the server selects this one, never the token).
CHAT_SUBPROTOCOL = "reinhardt-chat"

#: What the demo token endpoint says about itself, in every answer.
DEMO_NOTICE = ("DEMO ONLY: anyone who can reach this endpoint gets a token for any name. "
               "A real application mints tokens (TokenSigner.sign) only for users its own "
               "login has authenticated.")


def _event(data: dict[str, Any]) -> WebSocketMessage:
    return WebSocketMessage.text(data).with_timestamp()


def user_name(user: object) -> str | None:
    """The name to show for an identity: a claims mapping's ``"sub"``, a string
    as is, else None (anonymous, or an identity with no obvious name)."""
    if isinstance(user, Mapping):
        sub = user.get("sub")
        return sub if isinstance(sub, str) else None
    return user if isinstance(user, str) else None


class ChatHandler(WebSocketHandler):
    """Rooms chat: join, leave, and messages to a room one has joined.

    *rooms* defaults to a manager of its own with ``max_rooms_per_connection``
    :data:`MAX_ROOMS_PER_CONNECTION`.  *max_message_size* (bytes; None: no check)
    is the largest event this handler broadcasts: give it the server's
    ``max_message_size``.  Per message, the work does not depend on the number
    of rooms the sender is in.  *policy* (default :class:`~reinhardt_ws.AllowAll`)
    is asked on every join and every message; what it refuses gets an ``error``
    event naming the room.
    """

    def __init__(self, rooms: RoomManager | None = None, *,
                 max_message_size: int | None = MiB, policy: Policy | None = None) -> None:
        if max_message_size is not None and max_message_size < 1:
            raise ValueError("max_message_size must be positive or None")
        self.rooms = rooms if rooms is not None else RoomManager(
            max_rooms_per_connection=MAX_ROOMS_PER_CONNECTION, history=CHAT_HISTORY,
            presence=True)
        self.max_message_size = max_message_size
        self.policy: Policy = policy if policy is not None else AllowAll()

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
                await authorize(self.policy, "join", conn, room)
            except PermissionDenied as exc:
                await self._error(conn, exc.reason)
                return
            since = request.get("since")
            position: Position | None = None
            if since is not None:
                if not (isinstance(since, dict) and isinstance(since.get("epoch"), str)
                        and type(since.get("offset")) is int and since["offset"] >= 0):
                    await self._error(conn, "since must be {\"epoch\": str, \"offset\": int >= 0}")
                    return
                position = Position(since["epoch"], since["offset"])
            keeps = rooms.history_policy is not None and rooms.history_policy.applies(room)
            watch = request.get("presence") is True
            name = user_name(conn.user)
            info: dict[str, Any] = {"user": name, "watch": watch}
            try:
                if keeps:
                    result: bool | JoinResult = await rooms.join(
                        room, conn, recover=position,
                        recent=CHAT_RECENT if position is None else 0, info=info)
                else:
                    result = await rooms.join(room, conn, info=info)
            except RoomLimitError as exc:
                await self._error(conn, f"room limit reached: at most {exc.limit} rooms "
                                        "per connection")
                return
            size = await rooms.room_size(room)
            joined: dict[str, Any] = {"event": "joined", "room": room, "size": size}
            if isinstance(result, JoinResult):
                joined["recovered"] = result.recovered and position is not None
                current = result.position
                if current is None:  # already a member: where the room stands
                    with contextlib.suppress(ConnectionError):
                        current = (await rooms.history(room, limit=0)).position
                if current is not None:
                    joined["epoch"], joined["offset"] = current
            if rooms.presence_enabled and watch:
                members = await rooms.presence(room)
                joined["members"] = [{"id": cid, "user": member.get("user")}
                                     for cid, member in sorted(members.items())]
            if result:
                conn.user_data.setdefault("chat_rooms", set()).add(room)
            await conn.send(_event(joined))
            if result and rooms.presence_enabled:
                await self._announce(room, "join", conn.id, name)
        elif kind == "leave":
            if not await rooms.leave(room, conn):
                await self._error(conn, f"not in room {room!r}")
                return
            conn.user_data.get("chat_rooms", set()).discard(room)
            size = await rooms.room_size(room)
            await conn.send(_event({"event": "left", "room": room, "size": size}))
            if rooms.presence_enabled:
                await self._announce(room, "leave", conn.id, user_name(conn.user))
        else:
            if "data" not in request:
                await self._error(conn, "missing data")
                return
            if not await rooms.is_member(room, conn):
                await self._error(conn, f"not in room {room!r}")
                return
            try:
                await authorize(self.policy, "publish", conn, room)
            except PermissionDenied as exc:
                await self._error(conn, exc.reason)
                return
            event = {"event": "message", "offset": 0, "epoch": "", "room": room,
                     "from": conn.id, "data": request["data"]}
            name = user_name(conn.user)
            if name is not None:
                event["user"] = name
            # The first '"offset":0,"epoch":""' is ours (it precedes everything a
            # user controls): marks the manager replaces with the message's position.
            encoded = _event(event).to_json().replace(
                b'"offset":0,"epoch":""',
                b'"offset":' + OFFSET_MARK.encode() + b',"epoch":"' + EPOCH_MARK.encode() + b'"',
                1)
            limit = self.max_message_size
            if limit is not None and len(encoded) > limit:
                # What the members could not take is not sent to any of them.
                await self._error(conn, f"message too large to deliver: {len(encoded)} bytes "
                                        f"once encoded, the limit is {limit}")
                return
            await rooms.broadcast(room, encoded.decode("utf-8"), positioned=True)

    async def _announce(self, room: str, change: str, conn_id: str, user: str | None) -> None:
        """Tell the room's other members (in every process) that *conn_id* came or went."""
        rooms = self.rooms
        event = _event({"event": "presence", "room": room, "change": change, "id": conn_id,
                        "user": user}).to_json().decode("utf-8")
        for member, info in (await rooms.presence(room)).items():
            if member != conn_id and info.get("watch"):
                await rooms.send_to(member, event)

    async def on_disconnect(self, conn: WebSocketConnection) -> None:
        """A closed connection left its rooms: tell their members."""
        rooms = self.rooms
        if not rooms.presence_enabled:
            return
        for room in conn.user_data.get("chat_rooms", ()):
            await self._announce(room, "leave", conn.id, user_name(conn.user))


def _page() -> bytes:
    return resources.files("reinhardt_ws.apps").joinpath("static/chat.html").read_bytes()


def make_chat_http_handler(signer: TokenSigner | None = None, *, token_ttl: float = 600.0
                           ) -> Callable[[str, Mapping[str, str]], HTTPResponse | None]:
    """The chat server's HTTP side: ``GET /`` the page, ``GET /healthz`` 200, and,
    given a *signer*, the DEMO token endpoint ``GET /token`` (a random guest
    name) or ``GET /token/<name>``: JSON ``{"token", "user", "expires_in",
    "demo"}``, never cached.  Without a signer ``/token`` is 404 (the page then
    connects without a token).  A name longer than 40 characters, or with
    control characters, gets 400.  Other paths are not handled (None).
    """

    def handler(path: str, headers: Mapping[str, str]) -> HTTPResponse | None:
        if path == "/healthz":
            return HTTPResponse(200, b"ok\n")
        if path in ("/", "/index.html"):
            return HTTPResponse(200, _page(), "text/html; charset=utf-8")
        if path == "/token" or path.startswith("/token/"):
            return _mint(signer, path[len("/token/"):], token_ttl)
        return None

    return handler


def _json(status: int, body: dict[str, Any]) -> HTTPResponse:
    return HTTPResponse(status, orjson.dumps(body) + b"\n", "application/json",
                        {"Cache-Control": "no-store"})


def _mint(signer: TokenSigner | None, name: str, ttl: float) -> HTTPResponse:
    if signer is None:
        return _json(404, {"error": "this server does not use tokens"})
    name = name or f"guest-{secrets.token_hex(3)}"
    if len(name) > MAX_USER_NAME or not name.isprintable():
        return _json(400, {"error": f"a name is 1 to {MAX_USER_NAME} printable characters",
                           "demo": DEMO_NOTICE})
    return _json(200, {"token": signer.sign(name, ttl=ttl), "user": name,
                       "expires_in": ttl, "demo": DEMO_NOTICE})


#: ``GET /`` -> the chat page; ``GET /healthz`` -> 200; no tokens (``/token`` is 404).
chat_http_handler = make_chat_http_handler()


def chat_router(handler: ChatHandler, *, signer: TokenSigner | None = None,
                token_ttl: float = 600.0) -> Router:
    """The chat server's routes: WebSocket upgrades on ``/`` and ``/ws`` (named
    ``"chat"``) run *handler*; ``GET /`` and ``/index.html`` serve the page,
    ``GET /healthz`` answers ``200 ok``, ``GET /token`` and ``/token/{name}`` are
    the DEMO token endpoint of :func:`make_chat_http_handler` (404 without a
    *signer*); anything else is 404."""
    http = make_chat_http_handler(signer, token_ttl=token_ttl)

    def answer(request: Request) -> HTTPResponse:
        response = http(request.path, request.headers)
        assert response is not None  # every route below is one it answers
        return response

    return (Router()
            .websocket("/ws", handler, name="chat")
            .websocket("/", handler)
            .http("/", answer, name="page")
            .http("/index.html", answer)
            .http("/healthz", answer, name="health")
            .http("/token", answer, name="token")
            .http("/token/{name}", answer))
