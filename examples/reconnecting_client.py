"""A client that reconnects on its own: a retry loop with backoff around ``connect()``.

Against the chat server (``python -m reinhardt_ws serve``)::

    python examples/reconnecting_client.py --url ws://127.0.0.1:8765/ --room lobby

It joins the room, prints every event it receives (one JSON object a line), and
when the connection fails or ends it waits and connects again, joining the room
anew: what a room sent while it was away is lost (the chat keeps no history).
Stop and restart the server and watch it come back.

The wait doubles from ``--initial-delay`` up to ``--max-delay`` seconds, with
jitter (each wait is a random time between half and all of it), so that a thousand
clients of a restarted server do not all knock again in the same instant; it
starts over once a connection has been up. Three kinds of ending are told
apart: a failure to connect (refused, timed out, refused upgrade) and a
connection that dropped are retried; a close that says retrying cannot help
(1008 policy violation, 3000/3003 authentication refused) stops the client
with exit status 1, instead of hammering the server with a bad token.

``--exit-after N`` stops after N chat messages (for tests and demos).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
from collections.abc import Callable

import reinhardt_ws as rw

#: Close codes after which a new attempt would be refused the same way.
FINAL_CLOSE_CODES = frozenset({1008, 3000, 3003})


class GiveUp(Exception):
    """The server said that trying again cannot help."""


def backoff(attempt: int, initial: float, cap: float) -> float:
    """The wait before attempt number *attempt* (1: the first retry)."""
    return min(cap, initial * 2.0 ** (attempt - 1)) * random.uniform(0.5, 1.0)


async def run_client(url: str, room: str, on_event: Callable[[dict[str, object]], bool], *,
                     initial_delay: float = 0.5, max_delay: float = 10.0) -> None:
    """Stay connected to the chat at *url*, in *room*, handing each event to
    *on_event* until it returns True.  Raises :class:`GiveUp` on a final close."""
    failures = 0
    while True:
        try:
            async with rw.connect(url, open_timeout=5.0) as conn:
                print(json.dumps({"status": "connected", "url": url}), flush=True)
                failures = 0
                await conn.send_json({"type": "join", "room": room})
                async for message in conn:
                    event = message.parse_json()["data"]
                    if on_event(event):
                        return
                code = conn.close_code
            if code in FINAL_CLOSE_CODES:
                raise GiveUp(f"closed with {code} {conn.close_reason!r}")
            reason = f"closed with {code}"
        except (OSError, asyncio.TimeoutError, rw.WebSocketError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
        failures += 1
        delay = backoff(failures, initial_delay, max_delay)
        print(json.dumps({"status": "disconnected", "reason": reason,
                          "retry_in": round(delay, 3)}), flush=True)
        await asyncio.sleep(delay)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A chat client that reconnects on its own.")
    parser.add_argument("--url", default="ws://127.0.0.1:8765/")
    parser.add_argument("--room", default="lobby")
    parser.add_argument("--initial-delay", type=float, default=0.5)
    parser.add_argument("--max-delay", type=float, default=10.0)
    parser.add_argument("--exit-after", type=int, default=0, metavar="N",
                        help="stop after N chat messages (default: never)")
    args = parser.parse_args(argv)
    received = 0

    def on_event(event: dict[str, object]) -> bool:
        nonlocal received
        print(json.dumps(event), flush=True)
        if event.get("event") == "message":
            received += 1
        return bool(args.exit_after > 0 and received >= args.exit_after)

    try:
        asyncio.run(run_client(args.url, args.room, on_event,
                               initial_delay=args.initial_delay, max_delay=args.max_delay))
    except GiveUp as exc:
        print(f"giving up: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
