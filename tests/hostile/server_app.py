"""Test-only servers of the hostile-client suite, on the public API, each in its own
process: ``python tests/hostile/server_app.py APP --port 0``.

Apps:

- ``heard``: records every message ``on_message`` sees; with ``--refuse-after S``
  its ``on_connect`` awaits S seconds, then closes the connection with 1008.
- ``gc``: an echo server running with ``gc.disable()``; it counts the
  WebSocketConnection objects still alive (a weak registry) and tracked by the
  collector.
- ``block``: ``on_message`` of a connection to ``/block`` never returns; any
  other path echoes.

Each answers ``GET /debug/stats`` (JSON) on its port, and ``gc`` also
``GET /debug/collect`` (runs ``gc.collect()`` and reports).  The first stdout line
says ``listening on ws://127.0.0.1:PORT/ (pid N, implementation NAME)``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import signal
import sys
import weakref
from collections.abc import Mapping
from typing import Any

import reinhardt_ws as rw


class Heard(rw.WebSocketHandler):
    def __init__(self, refuse_after: float | None) -> None:
        self.refuse_after = refuse_after
        self.connects = 0
        self.heard = 0

    async def on_connect(self, conn: rw.WebSocketConnection) -> None:
        self.connects += 1
        if self.refuse_after is not None:
            await asyncio.sleep(self.refuse_after)
            await conn.close(rw.CloseCode.POLICY_VIOLATION, "refused")

    async def on_message(self, conn: rw.WebSocketConnection, message: rw.Message) -> None:
        self.heard += 1

    def stats(self) -> dict[str, Any]:
        return {"connects": self.connects, "heard": self.heard}


class GcEcho(rw.WebSocketHandler):
    def __init__(self) -> None:
        self.registry: weakref.WeakSet[rw.WebSocketConnection] = weakref.WeakSet()
        self.connects = 0

    async def on_connect(self, conn: rw.WebSocketConnection) -> None:
        self.connects += 1
        self.registry.add(conn)

    async def on_message(self, conn: rw.WebSocketConnection, message: rw.Message) -> None:
        await conn.send(message)

    def stats(self) -> dict[str, Any]:
        tracked = sum(1 for o in gc.get_objects() if type(o) is rw.WebSocketConnection)
        return {"connects": self.connects, "alive": len(self.registry), "tracked": tracked,
                "gc_enabled": gc.isenabled()}


class Block(rw.WebSocketHandler):
    def __init__(self) -> None:
        self.blocked = 0

    async def on_message(self, conn: rw.WebSocketConnection, message: rw.Message) -> None:
        if conn.path == "/block":
            self.blocked += 1
            await asyncio.Event().wait()
        await conn.send(message)

    def stats(self) -> dict[str, Any]:
        return {"blocked": self.blocked}


async def main(args: argparse.Namespace) -> None:
    handler: Any
    if args.app == "heard":
        handler = Heard(args.refuse_after)
    elif args.app == "gc":
        gc.disable()
        handler = GcEcho()
    else:
        handler = Block()
    server: rw.Server | None = None

    def http(path: str, headers: Mapping[str, str]) -> rw.HTTPResponse | None:
        if path == "/debug/collect":
            collected = gc.collect()
            return rw.HTTPResponse(200, json.dumps({"collected": collected,
                                                    **stats()}).encode())
        if path == "/debug/stats":
            return rw.HTTPResponse(200, json.dumps(stats()).encode())
        return None

    def stats() -> dict[str, Any]:
        assert server is not None
        return {"open": len(server.connections), **handler.stats()}

    server = await rw.serve(handler, "127.0.0.1", args.port, http_handler=http,
                            ping_interval=None)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    sys.stdout.write(f"server_app {args.app} listening on ws://127.0.0.1:{server.port}/ "
                     f"(pid {os.getpid()}, implementation {rw.IMPLEMENTATION})\n")
    sys.stdout.flush()
    await stop.wait()
    await server.close(timeout=1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("app", choices=("heard", "gc", "block"))
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--refuse-after", type=float, default=None)
    cli = parser.parse_args()
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(main(cli))
