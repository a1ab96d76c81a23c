"""A notification server: a room per user, and a background task that pushes JSON.

Run it, then connect one or more clients as a user::

    python examples/notifications.py --port 8765
    python -c "
    import asyncio, reinhardt_ws as rw
    async def main():
        async with rw.connect('ws://127.0.0.1:8765/?user=alice') as conn:
            async for message in conn:
                print(message.parse_json())
    asyncio.run(main())"

Each connection names its user in the query string (``?user=alice``; a real
application takes the user from a verified token instead, see ``token_auth.py``)
and joins the room ``user:alice``: every tab and device of alice gets her
notifications, and nobody else does. The background task (here one notification
per connected user every ``--interval`` seconds, standing in for a job queue or a
database listener) sends each user's notification with one ``broadcast()`` to
that user's room: one JSON encoding and one frame, however many devices she has.

A connection without a valid user name is closed with 1008. SIGINT or SIGTERM
closes every client with 1001 and exits. ``--duration`` stops it by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import signal
import time
from urllib.parse import parse_qs, urlsplit

import reinhardt_ws as rw

USER_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")

rooms = rw.RoomManager()


def user_of(conn: rw.WebSocketConnection) -> str | None:
    """The ``user`` query parameter of the request, if it is a valid name."""
    names = parse_qs(urlsplit(conn.path).query).get("user", [])
    if len(names) == 1 and USER_NAME.fullmatch(names[0]):
        return names[0]
    return None


class Notifications(rw.WebSocketHandler):
    async def on_connect(self, conn: rw.WebSocketConnection) -> None:
        user = user_of(conn)
        if user is None:
            await conn.close(rw.CloseCode.POLICY_VIOLATION, "?user=<name> required")
            return
        conn.user_data["user"] = user
        await rooms.join(f"user:{user}", conn)
        await conn.send_json({"type": "welcome", "user": user})

    async def on_message(self, conn: rw.WebSocketConnection, message: rw.Message) -> None:
        # Clients only listen here; anything they send is answered with an error.
        await conn.send_json({"type": "error", "error": "this server only sends"})


async def notify_forever(interval: float) -> None:
    """Every *interval* seconds, one notification to each connected user's room."""
    number = 0
    while True:
        await asyncio.sleep(interval)
        for room in await rooms.list_rooms():
            if not room.startswith("user:"):
                continue
            number += 1
            user = room.removeprefix("user:")
            notification = {"type": "notification", "id": number, "user": user,
                            "text": f"hello {user}", "time": time.time()}
            await rooms.broadcast(room, rw.Message.json(notification))


async def serve(host: str, port: int, interval: float, duration: float | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    if duration is not None:
        loop.call_later(duration, stop.set)
    async with rw.serve(Notifications(), host, port) as server:
        print(f"notifications on ws://{host}:{server.port}/?user=<name>", flush=True)
        notifier = asyncio.create_task(notify_forever(interval))
        try:
            await stop.wait()
        finally:
            notifier.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await notifier
    # Leaving the block closed every client with 1001 (going away).
    print("stopped", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A notification server: a room per user.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument("--interval", type=float, default=1.0,
                        help="seconds between two rounds of notifications")
    parser.add_argument("--duration", type=float, default=None,
                        help="stop after this many seconds (default: run until signalled)")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port, args.interval, args.duration))


if __name__ == "__main__":
    main()
