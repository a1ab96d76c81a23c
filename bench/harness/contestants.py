"""The Python contestants, each a WebSocket server written the way its library's
documentation suggests for "send this message to everyone in the room".

Runs inside the server process (harness/server_main.py); imports each library
lazily so a missing one only disables its own contestant.

Every contestant defines one broadcast *iteration* identically: ``batch`` calls of
its broadcast, then ``await asyncio.sleep(0)`` (one pass of the event loop).
``batch=1`` is "one broadcast per loop iteration", ``batch=8`` "8 broadcasts to the
same room per iteration".

Rooms (``set_rooms``/``run_rooms``, the ``ROOMS`` and ``BCASTROOMS`` commands): the
open connections, in accept order, are dealt into k rooms (connection i into room
i % k), each in the library's own idiom; message j then goes to room j % k only.
No contestant checks per-connection backpressure beyond
what its library does itself; what each library does is noted on its class.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

__all__ = ["CONTESTANTS", "Contestant"]


class Contestant:
    """One server under test.  Subclasses fill in start/count/run/stop."""

    name = "?"

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options

    async def start(self, host: str) -> int:
        """Listen on *host*, port 0; return the bound port."""
        raise NotImplementedError

    def count(self) -> int:
        """Open connections that a broadcast would reach."""
        raise NotImplementedError

    async def run(self, payload: bytes, messages: int, batch: int) -> tuple[int, int, int]:
        """Broadcast *messages* binary messages (text when *payload* is a str: the
        compression benchmark's JSON), *batch* per loop iteration.

        Returns (delivered, dropped, failed) as far as the library reports them.
        """
        raise NotImplementedError

    async def set_rooms(self, k: int) -> None:
        """Deal the open connections, in accept order, into *k* rooms (i into i % k)."""
        raise NotImplementedError(f"{self.name} has no rooms")

    async def run_rooms(self, payload: bytes, messages: int, batch: int) -> tuple[int, int, int]:
        """Like :meth:`run`, but message j goes to room j % k only."""
        raise NotImplementedError(f"{self.name} has no rooms")

    async def stop(self) -> None:
        pass

    def info(self) -> dict[str, Any]:
        return {}

    def set(self, key: str, value: str) -> None:
        """Change a setting between phases (``SET`` in server_main); ``KeyError``
        for one this contestant does not have."""
        raise KeyError(key)

    def send_times(self) -> list[float]:
        """``time.monotonic()`` at each broadcast of the last run, when it was
        recorded (``SET record 1``); ``KeyError`` where it is not supported."""
        raise KeyError("record")

    async def run_paced(self, payload: bytes, messages: int,
                        rate: float) -> tuple[int, int, int, list[float]]:
        """Broadcast *messages* messages at *rate* per second, open loop (``PACE``):
        message j is due at ``t0 + j / rate`` (harness/pacer.py) and is broadcast
        alone in its loop iteration once it is due, whatever the clients do.

        Returns (delivered, dropped, failed, lateness): lateness is, per message,
        seconds from its due time to the moment its broadcast began.  Afterwards
        :meth:`send_times` gives the due times (always recorded here: the
        latency of a paced message counts from when it was due, so a server that
        falls behind shows it).  ``NotImplementedError`` where not supported.
        """
        raise NotImplementedError(f"{self.name} has no paced broadcast")


class PicowsLoop(Contestant):
    """picows: a Python ``for`` over the open ``WSTransport`` objects, ``send`` each.

    picows has no broadcast; this is the loop its users write.  ``send`` frames and
    copies the payload per connection; it has no limit on a connection's buffer.
    """

    name = "picows"

    async def start(self, host: str) -> int:
        from picows import WSListener, ws_create_server

        conns: dict[Any, None] = {}
        self.conns = conns

        class Listener(WSListener):  # type: ignore[misc]
            def on_ws_connected(self, transport: Any) -> None:
                conns[transport] = None

            def on_ws_disconnected(self, transport: Any) -> None:
                conns.pop(transport, None)

            def on_ws_frame(self, transport: Any, frame: Any) -> None:
                pass

            # Without these picows logs a warning per connection.
            def pause_writing(self) -> None:
                pass

            def resume_writing(self) -> None:
                pass

        self.server = await ws_create_server(lambda _request: Listener(), host, 0)
        return int(self.server.sockets[0].getsockname()[1])

    def count(self) -> int:
        return len(self.conns)

    async def run(self, payload: bytes, messages: int, batch: int) -> tuple[int, int, int]:
        from picows import WSMsgType

        binary = WSMsgType.BINARY
        conns = self.conns
        delivered = failed = 0
        for _ in range(messages // batch):
            for _ in range(batch):
                for transport in conns:
                    try:
                        transport.send(binary, payload)
                    except Exception:
                        failed += 1
                delivered += len(conns)
            await asyncio.sleep(0)
        return delivered - failed, 0, failed

    async def set_rooms(self, k: int) -> None:
        self.rooms: list[list[Any]] = [[] for _ in range(k)]
        for i, transport in enumerate(self.conns):
            self.rooms[i % k].append(transport)

    async def run_rooms(self, payload: bytes, messages: int, batch: int) -> tuple[int, int, int]:
        from picows import WSMsgType

        binary = WSMsgType.BINARY
        rooms = self.rooms
        k = len(rooms)
        delivered = failed = 0
        j = 0
        for _ in range(messages // batch):
            for _ in range(batch):
                members = rooms[j % k]
                j += 1
                for transport in members:
                    try:
                        transport.send(binary, payload)
                    except Exception:
                        failed += 1
                delivered += len(members)
            await asyncio.sleep(0)
        return delivered - failed, 0, failed

    async def stop(self) -> None:
        self.server.close()

    def info(self) -> dict[str, Any]:
        import picows

        return {"version": getattr(picows, "__version__", "?")}


class WebsocketsBroadcast(Contestant):
    """python-websockets (asyncio implementation): ``websockets.broadcast()``.

    Frames once per connection; skips connections that are not open; ignores write
    buffers (no backpressure), so a slow client's backlog grows without bound.
    Pings are off (``ping_interval=None``): the clients count bytes and a ping frame
    would be an unexpected byte.
    """

    name = "websockets"

    async def start(self, host: str) -> int:
        from websockets.asyncio.server import serve

        conns: dict[Any, None] = {}  # a dict: insertion (accept) order, for set_rooms
        self.conns = conns

        async def handler(ws: Any) -> None:
            conns[ws] = None
            try:
                await ws.wait_closed()
            finally:
                conns.pop(ws, None)

        # Option compression: "deflate" is websockets' default permessage-deflate
        # (context takeover, 12-bit windows, memLevel 5); "deflate-nct" the same with
        # server_no_context_takeover; absent: off (the fan-out scenarios' clients
        # do not offer it anyway).
        kwargs: dict[str, Any] = {"compression": None}
        mode = self.options.get("compression", "")
        if mode == "deflate":
            kwargs["compression"] = "deflate"
        elif mode == "deflate-nct":
            from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory

            kwargs["extensions"] = [ServerPerMessageDeflateFactory(
                server_no_context_takeover=True, server_max_window_bits=12,
                client_max_window_bits=12, compress_settings={"memLevel": 5})]
        elif mode:
            raise ValueError(f"unknown websockets compression option {mode!r}")
        self.server = await serve(handler, host, 0, ping_interval=None, **kwargs)
        return int(self.server.sockets[0].getsockname()[1])

    def count(self) -> int:
        return len(self.conns)

    async def run(self, payload: bytes, messages: int, batch: int) -> tuple[int, int, int]:
        from websockets.asyncio.server import broadcast

        conns = self.conns
        delivered = failed = 0
        for _ in range(messages // batch):
            for _ in range(batch):
                try:
                    broadcast(conns, payload, raise_exceptions=True)
                except Exception as group:  # ExceptionGroup (3.11+ or the backport)
                    failed += len(getattr(group, "exceptions", (group,)))
                delivered += len(conns)
            await asyncio.sleep(0)
        return delivered - failed, 0, failed

    async def set_rooms(self, k: int) -> None:
        # A set per room, as a websockets application keeps them.
        self.rooms: list[set[Any]] = [set() for _ in range(k)]
        for i, ws in enumerate(self.conns):
            self.rooms[i % k].add(ws)

    async def run_rooms(self, payload: bytes, messages: int, batch: int) -> tuple[int, int, int]:
        from websockets.asyncio.server import broadcast

        rooms = self.rooms
        k = len(rooms)
        delivered = failed = 0
        j = 0
        for _ in range(messages // batch):
            for _ in range(batch):
                members = rooms[j % k]
                j += 1
                try:
                    broadcast(members, payload, raise_exceptions=True)
                except Exception as group:
                    failed += len(getattr(group, "exceptions", (group,)))
                delivered += len(members)
            await asyncio.sleep(0)
        return delivered - failed, 0, failed

    async def stop(self) -> None:
        self.server.close()

    def info(self) -> dict[str, Any]:
        import websockets

        return {"version": websockets.__version__}


class AiohttpLoop(Contestant):
    """aiohttp web server: ``await ws.send_bytes(payload)`` for each connection.

    aiohttp has no broadcast and no non-awaiting send; ``send_bytes`` writes to the
    transport at once and only suspends (``drain``) once the transport is paused
    above its high-water mark.  Then the whole loop waits for that one client:
    head-of-line blocking, which is what the slow-consumer scenario shows.  The
    iteration walks a snapshot (``tuple(conns)``) because an ``await`` may let a
    connection close mid-loop.
    """

    name = "aiohttp"

    async def start(self, host: str) -> int:
        from aiohttp import web

        conns: dict[Any, None] = {}  # a dict: insertion (accept) order, for set_rooms
        self.conns = conns

        async def handler(request: Any) -> Any:
            # heartbeat=None (the default): no pings to spoil the byte counts.
            ws = web.WebSocketResponse(heartbeat=None)
            await ws.prepare(request)
            conns[ws] = None
            try:
                async for _msg in ws:
                    pass
            finally:
                conns.pop(ws, None)
            return ws

        app = web.Application()
        app.router.add_get("/bench", handler)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, 0)
        await site.start()
        return int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    def count(self) -> int:
        return len(self.conns)

    async def run(self, payload: bytes, messages: int, batch: int) -> tuple[int, int, int]:
        conns = self.conns
        delivered = failed = 0
        for _ in range(messages // batch):
            for _ in range(batch):
                for ws in tuple(conns):
                    try:
                        await ws.send_bytes(payload)
                        delivered += 1
                    except Exception:
                        failed += 1
            await asyncio.sleep(0)
        return delivered, 0, failed

    async def set_rooms(self, k: int) -> None:
        self.rooms: list[list[Any]] = [[] for _ in range(k)]
        for i, ws in enumerate(self.conns):
            self.rooms[i % k].append(ws)

    async def run_rooms(self, payload: bytes, messages: int, batch: int) -> tuple[int, int, int]:
        rooms = self.rooms
        k = len(rooms)
        delivered = failed = 0
        j = 0
        for _ in range(messages // batch):
            for _ in range(batch):
                members = rooms[j % k]
                j += 1
                for ws in tuple(members):
                    try:
                        await ws.send_bytes(payload)
                        delivered += 1
                    except Exception:
                        failed += 1
            await asyncio.sleep(0)
        return delivered, 0, failed

    async def stop(self) -> None:
        await self.runner.cleanup()

    def info(self) -> dict[str, Any]:
        import aiohttp

        return {"version": aiohttp.__version__}


class Reinhardt(Contestant):
    """reinhardt_ws: everyone joins room "bench"; ``await rooms.broadcast(...)``.

    The implementation (extension or Python twin) is chosen by the environment of
    the server process (REINHARDT_WS_NO_EXTENSIONS); ``info()`` reports the one that
    actually runs and the harness checks it against what was asked for.
    Options: ``max_write_buffer``, ``slow_consumer`` ("close" | "drop") and
    ``flush_interval`` (seconds; the manager's latency budget, also ``SET``
    between phases, 0 for none).  ``SET record 1`` records the time of each
    broadcast (``send_times``) for the latency measurement.
    """

    name = "reinhardt"
    record = False
    _times: list[float] = []

    async def start(self, host: str) -> int:
        from reinhardt_ws import RoomManager, WebSocketHandler, serve

        interval = float(self.options.get("flush_interval") or 0)
        rooms = RoomManager(flush_interval=interval) if interval else RoomManager()
        self.rooms = rooms
        self.connected = 0
        self.conns: dict[Any, None] = {}  # accept order, for set_rooms
        outer = self

        class Handler(WebSocketHandler):  # type: ignore[misc]
            async def on_connect(self, conn: Any) -> None:
                await rooms.join("bench", conn)
                outer.connected += 1
                outer.conns[conn] = None

            async def on_disconnect(self, conn: Any) -> None:
                outer.connected -= 1
                outer.conns.pop(conn, None)

        # No pings: a ping frame would be an unexpected byte for the counting clients.
        # Option ping_interval (idle memory with the keep-alive on): an interval
        # longer than any measurement, so no ping is ever sent.
        kwargs: dict[str, Any] = {"ping_interval": None}
        if self.options.get("ping_interval"):
            kwargs["ping_interval"] = float(self.options["ping_interval"])
        if self.options.get("max_write_buffer"):
            kwargs["max_write_buffer"] = int(self.options["max_write_buffer"])
        if self.options.get("slow_consumer"):
            kwargs["slow_consumer"] = self.options["slow_consumer"]
        if self.options.get("compression") == "none":
            kwargs["compression"] = None  # else serve()'s default (permessage-deflate)
        self.server = await serve(Handler(), host, 0, **kwargs)
        return int(self.server.port)

    def count(self) -> int:
        return self.connected

    def set(self, key: str, value: str) -> None:
        if key == "flush_interval":
            self.rooms.flush_interval = float(value) or None
        elif key == "record":
            self.record = value not in ("", "0")
        else:
            raise KeyError(key)

    def send_times(self) -> list[float]:
        return self._times

    async def run(self, payload: bytes, messages: int, batch: int) -> tuple[int, int, int]:
        broadcast = self.rooms.broadcast
        delivered = dropped = failed = 0
        times: list[float] | None = [] if self.record else None
        self._times = times if times is not None else []
        clock = time.monotonic
        for _ in range(messages // batch):
            for _ in range(batch):
                if times is not None:
                    times.append(clock())
                result = await broadcast("bench", payload)
                delivered += result.delivered
                dropped += result.dropped
                failed += len(result.failed)  # ids of the members that failed
            await asyncio.sleep(0)
        return delivered, dropped, failed

    async def run_paced(self, payload: bytes, messages: int,
                        rate: float) -> tuple[int, int, int, list[float]]:
        from pacer import pace

        broadcast = self.rooms.broadcast
        delivered = dropped = failed = 0
        due_times: list[float] = []
        lateness: list[float] = []
        self._times = due_times
        clock = time.monotonic
        async for due in pace(messages, rate):
            lateness.append(clock() - due)
            due_times.append(due)
            result = await broadcast("bench", payload)
            delivered += result.delivered
            dropped += result.dropped
            failed += len(result.failed)
        return delivered, dropped, failed, lateness

    async def set_rooms(self, k: int) -> None:
        # Each connection also stays in "bench"; room names are made once, here.
        self.room_names = [f"room-{r}" for r in range(k)]
        for i, conn in enumerate(tuple(self.conns)):
            await self.rooms.join(self.room_names[i % k], conn)

    async def run_rooms(self, payload: bytes, messages: int, batch: int) -> tuple[int, int, int]:
        broadcast = self.rooms.broadcast
        names = self.room_names
        k = len(names)
        delivered = dropped = failed = 0
        j = 0
        for _ in range(messages // batch):
            for _ in range(batch):
                result = await broadcast(names[j % k], payload)
                j += 1
                delivered += result.delivered
                dropped += result.dropped
                failed += len(result.failed)
            await asyncio.sleep(0)
        return delivered, dropped, failed

    async def stop(self) -> None:
        close = getattr(self.server, "close", None)
        if close is not None:
            res = close()
            if asyncio.iscoroutine(res):
                await res

    def info(self) -> dict[str, Any]:
        import reinhardt_ws

        return {
            "implementation": getattr(reinhardt_ws, "IMPLEMENTATION", "?"),
            "version": getattr(reinhardt_ws, "__version__", "?"),
            "no_extensions_env": os.environ.get("REINHARDT_WS_NO_EXTENSIONS", ""),
        }


CONTESTANTS: dict[str, type[Contestant]] = {
    "picows": PicowsLoop,
    "websockets": WebsocketsBroadcast,
    "aiohttp": AiohttpLoop,
    "reinhardt": Reinhardt,
}
