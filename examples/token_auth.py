"""A server that requires signed tokens, and rooms granted by the token's claims.

A token is minted by whatever logs your users in (here: the ``token`` command),
with the secret the server verifies it with; the server needs no database::

    export EXAMPLE_TOKEN_SECRET=$(python -c "import secrets; print(secrets.token_urlsafe(32))")
    python examples/token_auth.py serve --port 8765 &
    export TOKEN=$(python examples/token_auth.py token alice --rooms 'team-*')
    python -c "
    import asyncio, os, reinhardt_ws as rw
    async def main():
        headers = {'Authorization': 'Bearer ' + os.environ['TOKEN']}
        async with rw.connect('ws://127.0.0.1:8765/', extra_headers=headers) as conn:
            print((await conn.recv()).parse_json())              # welcome, alice
            await conn.send_json({'type': 'join', 'room': 'team-red'})
            print((await conn.recv()).parse_json())              # joined
            await conn.send_json({'type': 'message', 'room': 'team-red', 'text': 'hi'})
            print((await conn.recv()).parse_json())              # from: alice
    asyncio.run(main())"

``SignedTokenAuth`` checks the token after the 101 and before ``on_connect``, from
the ``Authorization: Bearer`` header, the ``?token=`` query parameter or a
``bearer.<token>`` subprotocol entry (what a browser page can send): a missing,
forged or expired token closes the connection with 3000 and a reason ("token
required", "bad token signature", "token expired"), and nothing the client sent
is handled. ``conn.user`` is then the token's claims. The ``rooms`` claim lists
the room patterns the user may join, ``publish`` those they may post to
(``ClaimsPolicy``; publishing defaults to the join patterns); a refused join or
message is answered with an ``error`` event and the connection stays open. The
sender of a message is the token's subject, never something the client wrote.

The token is signed, not encrypted (anyone holding it can read its claims), and
valid until it expires: keep ``--ttl`` short. SIGINT or SIGTERM closes clients
with 1001; ``--duration`` stops the server by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from typing import Any

import reinhardt_ws as rw

SECRET_VARIABLE = "EXAMPLE_TOKEN_SECRET"

rooms = rw.RoomManager()
policy = rw.ClaimsPolicy()


class TeamChat(rw.WebSocketHandler):
    async def on_connect(self, conn: rw.WebSocketConnection) -> None:
        # conn.user: the verified claims, {"sub": "alice", "rooms": [...], "exp": ...}.
        await conn.send_json({"type": "welcome", "user": conn.user["sub"]})

    async def on_message(self, conn: rw.WebSocketConnection, message: rw.Message) -> None:
        try:
            request = message.parse_json()
            kind, room = request["type"], request["room"]
            if not isinstance(room, str) or not room:
                raise ValueError("room must be a non-empty string")
        except (rw.ProtocolError, ValueError, KeyError, TypeError):
            await conn.send_json({"type": "error",
                                  "error": 'expected {"type": ..., "room": ...} JSON'})
            return
        if kind == "join":
            if not policy.can_join(conn, room):
                await conn.send_json({"type": "error", "error": f"may not join {room!r}"})
                return
            await rooms.join(room, conn)
            await conn.send_json({"type": "joined", "room": room,
                                  "size": await rooms.room_size(room)})
        elif kind == "message":
            if not policy.can_publish(conn, room) or not await rooms.is_member(room, conn):
                await conn.send_json({"type": "error", "error": f"may not post to {room!r}"})
                return
            event = {"type": "message", "room": room, "from": conn.user["sub"],
                     "text": request.get("text")}
            await rooms.broadcast(room, rw.Message.json(event))
        else:
            await conn.send_json({"type": "error", "error": f"unknown type {kind!r}"})


def signer_from_environment() -> rw.TokenSigner:
    secret = os.environ.get(SECRET_VARIABLE)
    if not secret:
        sys.exit(f"set {SECRET_VARIABLE} to a secret of at least 32 bytes, e.g. "
                 f'export {SECRET_VARIABLE}=$(python -c "import secrets; '
                 f'print(secrets.token_urlsafe(32))")')
    try:
        return rw.TokenSigner(secret)
    except ValueError as exc:
        sys.exit(f"{SECRET_VARIABLE}: {exc}")


async def serve(signer: rw.TokenSigner, host: str, port: int, duration: float | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    if duration is not None:
        loop.call_later(duration, stop.set)
    auth = rw.SignedTokenAuth(signer, source=("header", "query", "subprotocol"))
    async with rw.serve(TeamChat(), host, port, authenticate=auth) as server:
        print(f"token-authenticated chat on ws://{host}:{server.port}/", flush=True)
        await stop.wait()
    print("stopped", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A server that requires signed tokens.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="run the server")
    serve_cmd.add_argument("--host", default="127.0.0.1")
    serve_cmd.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    serve_cmd.add_argument("--duration", type=float, default=None,
                           help="stop after this many seconds (default: until signalled)")
    token_cmd = commands.add_parser("token", help="print a token for a user")
    token_cmd.add_argument("user")
    token_cmd.add_argument("--rooms", nargs="+", default=None, metavar="PATTERN",
                           help="room patterns the user may join (default: every room)")
    token_cmd.add_argument("--publish", nargs="+", default=None, metavar="PATTERN",
                           help="room patterns the user may post to (default: --rooms)")
    token_cmd.add_argument("--ttl", type=float, default=300.0, help="seconds it stays valid")
    args = parser.parse_args(argv)

    signer = signer_from_environment()
    if args.command == "serve":
        asyncio.run(serve(signer, args.host, args.port, args.duration))
        return
    claims: dict[str, Any] = {}
    if args.rooms is not None:
        claims["rooms"] = args.rooms
    if args.publish is not None:
        claims["publish"] = args.publish
    print(signer.sign(args.user, ttl=args.ttl, **claims))


if __name__ == "__main__":
    main()
