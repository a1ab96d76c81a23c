"""The chat server with Redis and two workers, and clients joining through both.

Needs a Redis server (``redis-server``, or ``docker run -p 6379:6379 redis``) and
the redis extra (``pip install 'reinhardt-ws[redis]'``)::

    python examples/redis_workers.py --redis redis://127.0.0.1:6379/0 --port 8765

This launcher starts ``python -m reinhardt_ws serve --redis URL --workers 2``: two
processes listening on one port (``SO_REUSEPORT``: the kernel spreads the
connections over them) whose rooms are shared through Redis. It waits until both
workers listen, then connects ``--clients`` clients, which the kernel spreads over
the two workers, puts them all in one room, and has each send one message. Every
client must see the room's size counted across both workers, and every message
from every client, whichever worker each is on. It prints what it saw, stops the
workers with SIGTERM (they close their clients with 1001 and leave Redis clean),
and exits with status 0 if everything arrived, 1 otherwise. With ``--keep-running``
it leaves the cluster up instead, for your own clients, until Ctrl-C.

The command is started without a shell, as a list of arguments, with this
interpreter (``sys.executable``): copy that into your own process manager.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from typing import Any

import reinhardt_ws as rw


def start_cluster(redis_url: str, host: str, port: int, workers: int,
                  timeout: float = 20.0) -> tuple[subprocess.Popen[str], list[str]]:
    """Start the workers; return the supervising process and each worker's
    "listening" line, once every worker has printed it."""
    command = [sys.executable, "-m", "reinhardt_ws", "serve", "--redis", redis_url,
               "--workers", str(workers), "--host", host, "--port", str(port)]
    print("starting:", " ".join(command), flush=True)
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    listening: list[str] = []
    deadline = time.monotonic() + timeout
    while len(listening) < workers:
        line = proc.stdout.readline()  # each worker prints one "listening" line
        if not line or time.monotonic() > deadline:
            stop_cluster(proc)
            raise SystemExit(f"the workers did not start (exit status {proc.returncode})")
        if "listening" in line:
            listening.append(line.strip())
    return proc, listening


def stop_cluster(proc: subprocess.Popen[str], grace: float = 15.0) -> int:
    """SIGTERM, then SIGKILL after *grace* seconds; the exit status."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
    if proc.stdout is not None:
        proc.stdout.close()
    return proc.wait()


async def next_event(conn: rw.WebSocketConnection, timeout: float = 10.0) -> dict[str, Any]:
    message = await asyncio.wait_for(conn.recv(), timeout)
    event: dict[str, Any] = message.parse_json()["data"]
    return event


async def demo(url: str, clients: int, room: str) -> bool:
    """Join *clients* clients to *room* at *url*, each sends one message; True if
    every client saw the cluster-wide sizes and every message."""
    conns = [await rw.connect(url) for _ in range(clients)]
    ok = True
    try:
        for number, conn in enumerate(conns, 1):
            await conn.send_json({"type": "join", "room": room})
            joined = await next_event(conn)
            # The size counts the members on both workers.
            print(f"client {number} joined {room!r}: size {joined['size']}", flush=True)
            ok &= (joined["event"], joined["room"], joined["size"]) == ("joined", room, number)
        for number, conn in enumerate(conns, 1):
            await conn.send_json({"type": "message", "room": room, "data": f"hi from {number}"})
        expected = {f"hi from {n}" for n in range(1, clients + 1)}
        for number, conn in enumerate(conns, 1):
            got: set[str] = set()
            while len(got) < clients:
                event = await next_event(conn)
                if event.get("event") == "message":
                    got.add(event["data"])
            print(f"client {number} got {len(got)} of {clients} messages", flush=True)
            ok &= got == expected
    finally:
        for conn in conns:
            await conn.close()
    return ok


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The chat with Redis and two workers.")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0", metavar="URL")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765,
                        help="the workers' shared port (a fixed one: not 0)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--room", default="lobby")
    parser.add_argument("--keep-running", action="store_true",
                        help="after the demo, leave the cluster up until Ctrl-C")
    args = parser.parse_args(argv)

    proc, listening = start_cluster(args.redis, args.host, args.port, args.workers)
    for line in listening:
        print("worker:", line, flush=True)
    try:
        ok = asyncio.run(demo(f"ws://{args.host}:{args.port}/", args.clients, args.room))
        print(json.dumps({"all_delivered": ok}), flush=True)
        if args.keep_running:
            print(f"chat on http://{args.host}:{args.port}/ ; Ctrl-C to stop", flush=True)
            proc.wait()
    except KeyboardInterrupt:
        ok = True
    finally:
        status = stop_cluster(proc)
        print(f"workers stopped (exit status {status})", flush=True)
    sys.exit(0 if ok and status == 0 else 1)


if __name__ == "__main__":
    main()
