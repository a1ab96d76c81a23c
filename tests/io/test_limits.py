"""Per-connection limits on a real server, on both fan-out implementations and
both loops: control frames within the write budget (ping flood), the inbox's byte
bound, the message rate, nothing dispatched once the server decided to close, and
memory that comes back without the cyclic garbage collector."""

from __future__ import annotations

import asyncio
import gc
import socket
import weakref
from typing import Any

import websockets

import reinhardt_ws as rw

from ..core_helpers import PING, TEXT, Run
from ..fixtures import RawClient, Recorder, client_frame, eventually, running_server, url_of


def test_a_ping_flood_from_a_client_that_never_reads_is_closed_within_budget(run: Run) -> None:
    budget = 64 * 1024

    async def main() -> None:
        handler = Recorder()
        async with running_server(handler, max_write_buffer=budget) as server:
            client = await RawClient.open(server.port)
            sock = client.writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            conn = await handler.connected.get()
            peer = conn._peer
            assert peer is not None
            ping = client_frame(PING, b"p" * 125)
            worst = 0
            for _ in range(400):  # up to 400 x 100 pings (5 MB of pongs), never reading
                if conn.is_closed:
                    break
                client.send(ping * 100)
                await client.writer.drain()
                worst = max(worst, peer.buffered_size())
                await asyncio.sleep(0)
            await eventually(lambda: conn.is_closed, 10)
            worst = max(worst, peer.buffered_size())
            assert conn.close_code == rw.CloseCode.POLICY_VIOLATION
            assert "not reading" in conn.close_reason
            # One pong (127 bytes) past the budget at most.
            assert worst <= budget + 127, worst
            client.writer.transport.abort()
            await eventually(lambda: not server.connections, 10)
            stats = server.stats()
            assert stats["limits"]["control_budget"] == 1
            assert stats["closed"] == {rw.CloseCode.POLICY_VIOLATION: 1}

    run(main())


def test_nothing_is_dispatched_after_on_connect_closes_the_connection(run: Run) -> None:
    class Refuser(Recorder):
        async def on_connect(self, conn: rw.WebSocketConnection) -> None:
            await super().on_connect(conn)
            await asyncio.sleep(0.3)  # an async token check...
            await conn.close(4001, "no")  # ...that fails

    async def main() -> None:
        handler = Refuser()
        async with running_server(handler) as server:
            async with websockets.connect(url_of(server)) as ws:
                for i in range(5):
                    await ws.send(f"m{i}")
                try:
                    await asyncio.wait_for(ws.wait_closed(), 5)
                finally:
                    assert ws.close_code == 4001
            conn = await handler.disconnected.get()
            assert conn.close_code == 4001
            assert [kind for kind, _cid, _m in handler.events] == ["connect", "disconnect"]

    run(main())


class Gate(Recorder):
    """Blocks in on_message until ``gate`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def on_message(self, conn: rw.WebSocketConnection, message: rw.Message) -> None:
        await self.gate.wait()
        await super().on_message(conn, message)


def test_the_inbox_is_bounded_by_bytes(run: Run) -> None:
    size = 256 * 1024
    bound = 512 * 1024

    async def main() -> None:
        handler = Gate()
        async with running_server(handler, max_queue=100, max_queue_bytes=bound) as server:
            async with websockets.connect(url_of(server), max_size=None) as ws:
                conn = await handler.connected.get()
                sender = asyncio.ensure_future(
                    asyncio.gather(*(ws.send(bytes([i]) * size) for i in range(12))))
                await eventually(lambda: conn._reading_paused, 10)
                await asyncio.sleep(0.3)  # reading stays paused: nothing more comes in
                # One message in on_message (blocked), the inbox up to its bound,
                # one message over it at most.
                assert conn._inbox_bytes <= bound + size, conn._inbox_bytes
                assert len(conn._inbox) <= bound // size + 1
                # The client compresses (permessage-deflate): 256 KiB of one byte
                # is a few hundred bytes on the wire, so one read carries many
                # messages.  Those past the bound stay parked as they came, small,
                # not inflated.
                assert conn.extension is not None
                parked = sum(len(frame[3]) for frame in conn._parked or ())
                assert parked <= 64 * 1024, parked
                assert server.stats()["limits"]["inbox_paused"] >= 1
                handler.gate.set()
                await asyncio.wait_for(sender, 10)
                await eventually(lambda: len(handler.events) == 13, 10)
            got = [m for kind, _cid, m in handler.events if kind == "message"]
            assert [m.data[0] for m in got] == list(range(12))
            assert all(len(m.data) == size for m in got)

    run(main())


def test_one_message_over_the_byte_bound_is_still_taken(run: Run) -> None:
    async def main() -> None:
        handler = Recorder(echo=True)
        async with running_server(handler, max_queue_bytes=1024) as server:
            ws = await websockets.connect(url_of(server))
            await ws.send(b"x" * 100_000)
            assert await asyncio.wait_for(ws.recv(), 5) == b"x" * 100_000
            await ws.close()

    run(main())


def test_a_client_over_the_message_rate_is_closed_with_1008(run: Run) -> None:
    async def main() -> None:
        handler = Recorder()
        async with running_server(handler, message_rate=5, message_burst=5) as server:
            client = await RawClient.open(server.port)
            client.send(b"".join(client_frame(TEXT, f"m{i}".encode()) for i in range(20)))
            assert await client.read_close() == rw.CloseCode.POLICY_VIOLATION
            conn = await handler.disconnected.get()
            assert conn.close_reason == "message rate exceeded"
            got = [m.data for kind, _cid, m in handler.events if kind == "message"]
            # At most the burst, in order; and once the server decided to close,
            # not even the burst's messages still queued are dispatched.
            assert got == [f"m{i}" for i in range(len(got))] and len(got) <= 5
            await client.close()
            assert server.stats()["limits"] == {"message_rate": 1}

    run(main())


def test_a_client_at_the_message_rate_is_served(run: Run) -> None:
    async def main() -> None:
        handler = Recorder(echo=True)
        async with running_server(handler, message_rate=50, message_burst=2) as server:
            ws = await websockets.connect(url_of(server))
            for i in range(10):
                await ws.send(f"m{i}")
                assert await asyncio.wait_for(ws.recv(), 5) == f"m{i}"
                await asyncio.sleep(0.03)
            await ws.close()
            assert ws.close_code == 1000

    run(main())


def test_closed_connections_are_freed_without_the_cyclic_gc(run: Run) -> None:
    class Weak(rw.WebSocketHandler):
        def __init__(self) -> None:
            self.refs: list[weakref.ref[Any]] = []
            self.gone = 0

        async def on_connect(self, conn: rw.WebSocketConnection) -> None:
            self.refs.append(weakref.ref(conn))

        async def on_message(self, conn: rw.WebSocketConnection, message: rw.Message) -> None:
            await conn.send(message)

        async def on_disconnect(self, conn: rw.WebSocketConnection) -> None:
            self.gone += 1

    async def main() -> None:
        handler = Weak()
        rooms = rw.RoomManager()
        async with running_server(handler) as server:
            gc.collect()
            gc.disable()
            try:
                for i in range(20):
                    async with websockets.connect(url_of(server)) as ws:
                        await ws.send(f"m{i}")
                        assert await ws.recv() == f"m{i}"
                    await eventually(lambda i=i: handler.gone == i + 1)
                for _ in range(3):  # let the loop drop its last handles
                    await asyncio.sleep(0.05)
                alive = [ref() for ref in handler.refs if ref() is not None]
                assert alive == [], f"{len(alive)} of 20 connections kept alive by cycles"
            finally:
                gc.enable()
        await rooms.close()

    run(main())


def test_messages_parked_before_the_peers_close_are_still_handled(run: Run) -> None:
    """A client sends 10 messages and its close frame in one write to a handler that
    is blocked: the inbox fills (max_queue=1), the rest is parked, and yet every
    message that came before the close reaches on_message, in order, before
    on_disconnect."""

    async def main() -> None:
        handler = Gate()
        async with running_server(handler, max_queue=1) as server:
            client = await RawClient.open(server.port)
            conn = await handler.connected.get()
            client.send(b"".join(client_frame(TEXT, f"m{i}".encode()) for i in range(10))
                        + client_frame(0x8, (1000).to_bytes(2, "big")))
            await eventually(lambda: conn._parked is not None, 5)  # the frames were parked
            handler.gate.set()
            await asyncio.wait_for(handler.disconnected.get(), 10)
            got = [m.data for kind, _cid, m in handler.events if kind == "message"]
            assert got == [f"m{i}" for i in range(10)]
            assert handler.events[-1][0] == "disconnect"
            assert conn.close_code == 1000
            await client.close()

    run(main())
