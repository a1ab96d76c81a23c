"""A rooms server driven by JSON commands, for the cross-process tests and the
Redis fan-out benchmark: ``python -m tests.redis_app --redis URL --port P``.

Commands (text): ``{"op": OP, ...}``; every command gets ``{"reply": OP, ...}``.
A connection to ``/?join=ROOM`` joins ROOM as it opens (for clients that send
nothing, such as the raw permessage-deflate ones).
With ``--history N`` every room keeps its last N publications and ``join`` takes
``since`` ([epoch, offset]) or ``recent``.
Room messages reach clients as ``{"msg": DATA}`` (text), or, from ``blast``, as
binary frames that start with the send time (``time.monotonic_ns()``, 8 bytes,
big-endian) and a sequence number (4 bytes).  Prints ``READY <port>
<implementation> <pid>`` once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import struct
import time
from typing import Any

import reinhardt_ws as rw
from reinhardt_ws.rooms import HistoryPolicy, Position, RoomManager, _compression
from reinhardt_ws.rooms.redis import RedisBackend

__all__ = ["BLAST_HEADER", "RoomsApp", "main"]

#: send time (ns, monotonic clock) and sequence number at the start of a blast message
BLAST_HEADER = struct.Struct("!QI")


class RoomsApp(rw.WebSocketHandler):
    def __init__(self, rooms: RoomManager) -> None:
        self.rooms = rooms

    async def on_connect(self, conn: rw.WebSocketConnection) -> None:
        _path, _, query = conn.path.partition("?")
        for part in query.split("&"):
            name, _, value = part.partition("=")
            if name == "join" and value:
                await self.rooms.join(value, conn)

    async def on_message(self, conn: rw.WebSocketConnection, message: rw.Message) -> None:
        request = json.loads(message.payload)
        op = request.pop("op")
        reply: dict[str, Any] = {"reply": op}
        reply.update(await getattr(self, f"op_{op}")(conn, **request))
        await conn.send(json.dumps(reply))

    async def op_id(self, conn: rw.WebSocketConnection) -> dict[str, Any]:
        backend = self.rooms.backend
        process = backend.process_id if isinstance(backend, RedisBackend) else ""
        return {"id": conn.id, "pid": os.getpid(), "process": process}

    async def op_join(self, conn: rw.WebSocketConnection, room: str,
                      since: list[Any] | None = None, recent: int = 0,
                      info: dict[str, Any] | None = None) -> dict[str, Any]:
        if since is not None or recent:
            result = await self.rooms.join(
                room, conn, recover=Position(*since) if since else None, recent=recent,
                info=info)
            return {"added": result.joined, "recovered": result.recovered,
                    "position": list(result.position) if result.position else None,
                    "replayed": result.replayed}
        added = await self.rooms.join(room, conn, info=info)
        return {"added": added, "size": await self.rooms.room_size(room)}

    async def op_presence(self, conn: rw.WebSocketConnection, room: str) -> dict[str, Any]:
        return {"presence": await self.rooms.presence(room)}

    async def op_position(self, conn: rw.WebSocketConnection, room: str) -> dict[str, Any]:
        return {"position": list((await self.rooms.history(room, limit=0)).position)}

    async def op_series(self, conn: rw.WebSocketConnection, room: str, first: int,
                        last: int) -> dict[str, Any]:
        """Broadcast ``{"msg": n}`` for n in first..last, yielding every 20."""
        positions = []
        for n in range(first, last + 1):
            position = (await self.rooms.broadcast(room, json.dumps({"msg": n}))).position
            positions.append(list(position) if position else None)
            if n % 20 == 0:
                await asyncio.sleep(0)
        return {"positions": positions}

    async def op_leave(self, conn: rw.WebSocketConnection, room: str) -> dict[str, Any]:
        removed = await self.rooms.leave(room, conn)
        return {"removed": removed, "size": await self.rooms.room_size(room)}

    async def op_broadcast(self, conn: rw.WebSocketConnection, room: str, data: Any,
                           exclude: list[str] | None = None) -> dict[str, Any]:
        result = await self.rooms.broadcast(room, json.dumps({"msg": data}), exclude=exclude)
        return {"delivered": result.delivered,
                "position": list(result.position) if result.position else None}

    async def op_broadcast_all(self, conn: rw.WebSocketConnection, data: Any,
                               exclude: list[str] | None = None) -> dict[str, Any]:
        result = await self.rooms.broadcast_all(json.dumps({"msg": data}), exclude=exclude)
        return {"delivered": result.delivered}

    async def op_send_to(self, conn: rw.WebSocketConnection, id: str, data: Any
                         ) -> dict[str, Any]:
        return {"ok": await self.rooms.send_to(id, json.dumps({"msg": data}))}

    async def op_size(self, conn: rw.WebSocketConnection, room: str) -> dict[str, Any]:
        return {"size": await self.rooms.room_size(room)}

    async def op_rooms(self, conn: rw.WebSocketConnection) -> dict[str, Any]:
        return {"rooms": await self.rooms.list_rooms()}

    async def op_stats(self, conn: rw.WebSocketConnection) -> dict[str, Any]:
        backend = self.rooms.backend
        return {"stats": backend.stats() if isinstance(backend, RedisBackend) else {},
                "compression": _compression.stats()}

    async def op_blast(self, conn: rw.WebSocketConnection, room: str, count: int,
                       size: int, batch: int = 1, rate: float = 0.0) -> dict[str, Any]:
        """Broadcast *count* binary messages of *size* bytes, *batch* per loop
        iteration, or paced at *rate* messages per second."""
        padding = b"\x00" * max(0, size - BLAST_HEADER.size)
        broadcast = self.rooms.broadcast
        delivered = 0
        start = time.perf_counter()
        for seq in range(count):
            payload = BLAST_HEADER.pack(time.monotonic_ns(), seq) + padding
            delivered += (await broadcast(room, payload)).delivered
            if rate > 0:
                delay = start + (seq + 1) / rate - time.perf_counter()
                await asyncio.sleep(max(0.0, delay))
            elif (seq + 1) % batch == 0:
                await asyncio.sleep(0)
        elapsed = time.perf_counter() - start
        return {"elapsed": elapsed, "delivered": delivered}


async def serve(args: argparse.Namespace) -> None:
    history = HistoryPolicy(size=args.history, ttl=60, max_recovery=args.history) \
        if args.history else None
    deflate = rw.DeflateSettings(server_max_window_bits=args.deflate_window,
                                 level=args.deflate_level)
    if args.redis == "memory":  # the single-process baseline of the benchmark
        rooms = RoomManager(history=history, presence=args.presence)
    else:
        rooms = RoomManager(backend=RedisBackend(
            args.redis, prefix=args.prefix, ttl=args.ttl, heartbeat_interval=args.ttl / 4,
            backoff_max=args.backoff_max, sharded=args.sharded, command_timeout=1.0,
            connect_timeout=1.0,
            compression=None if args.no_cluster_compression else deflate),
            history=history, presence=args.presence)
    server = await rw.serve(RoomsApp(rooms), "127.0.0.1", args.port, ping_interval=None,
                            compression=deflate)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # Bind the manager now so that the backend connects before the first client.
    await rooms.list_rooms()
    print(f"READY {server.port} {rw.IMPLEMENTATION} {os.getpid()}", flush=True)
    await stop.wait()
    await server.close(timeout=2)
    await rooms.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis", required=True, help='a redis URL, or "memory"')
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--prefix", default="rws")
    parser.add_argument("--ttl", type=float, default=6.0)
    parser.add_argument("--backoff-max", type=float, default=0.5)
    parser.add_argument("--sharded", action="store_true")
    parser.add_argument("--presence", action="store_true")
    parser.add_argument("--history", type=int, default=0,
                        help="keep this many publications per room (and recover as many)")
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--deflate-window", type=int, default=12,
                        help="server_max_window_bits of serve() and of the backend")
    parser.add_argument("--deflate-level", type=int, default=6)
    parser.add_argument("--no-cluster-compression", action="store_true",
                        help="RedisBackend(compression=None): publish plain frames")
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s")
    logging.getLogger("picows").setLevel(logging.WARNING)
    if args.uvloop:
        import uvloop

        uvloop.run(serve(args))
    else:
        asyncio.run(serve(args))


if __name__ == "__main__":
    main()
