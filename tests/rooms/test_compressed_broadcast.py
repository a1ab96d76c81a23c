"""Room broadcasts with permessage-deflate: compressed once per parameter set,
the one compressed frame object handed to every member of the set (serialize
once, proven with reference counts), the plain frame to everyone else."""

from __future__ import annotations

import asyncio
import sys
import zlib
from typing import Any

import reinhardt_ws as rw

from ..core_helpers import Run
from ..fixtures import Recorder, running_server
from ..io.test_compression import COMPRESSIBLE, INCOMPRESSIBLE, DeflateRawClient, inflate_raw

TEXT, BINARY = 0x1, 0x2


class CountingHub:
    """The loop's real hub, with every fan-out call recorded: the frame object,
    how many members got it, and how many references the fan-out added to it
    (one per member queued when the frame is shared, not copied)."""

    def __init__(self, hub: Any) -> None:
        self.hub = hub
        self.calls: list[tuple[bytes, int, int]] = []

    def fanout(self, peers: Any, frame: bytes, exclude: Any = None) -> Any:
        base = sys.getrefcount(frame)
        result = self.hub.fanout(peers, frame, exclude)
        added = sys.getrefcount(frame) - base
        self.calls.append((frame, result[0], added))
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self.hub, name)


OFFER = "permessage-deflate; client_max_window_bits"
NARROW = "permessage-deflate; server_max_window_bits=10"


def test_broadcast_is_compressed_once_per_parameter_set(run: Run) -> None:
    async def main() -> None:
        rooms = rw.RoomManager()
        handler = Recorder()
        async with running_server(handler) as server:
            offers = [OFFER, OFFER, OFFER, NARROW, NARROW, None, None]
            clients = [await DeflateRawClient.open(server.port, o) for o in offers]
            try:
                conns = [await asyncio.wait_for(handler.connected.get(), 5) for _ in offers]
                for conn in conns:
                    await rooms.join("lobby", conn)
                assert rooms._hub is not None
                spy = CountingHub(rooms._hub)
                rooms._hub = spy  # type: ignore[assignment]

                result = await rooms.broadcast("lobby", COMPRESSIBLE)
                assert result == rw.BroadcastResult(delivered=7)
                # Three groups: 12-bit window (3), 10-bit window (2), plain (2).
                assert sorted(n for _f, n, _r in spy.calls) == [2, 2, 3]
                assert all(refs == n for _f, n, refs in spy.calls)  # shared, never copied
                compressed = [f for f, _n, _r in spy.calls if f[0] & 0x40]
                plain = [f for f, _n, _r in spy.calls if not f[0] & 0x40]
                assert len(compressed) == 2 and len(plain) == 1
                assert all(len(f) < len(COMPRESSIBLE) // 5 for f in compressed)

                received = [await c.read_frame() for c in clients]
                wide, narrow = received[:3], received[3:5]
                assert len({payload for _op, _rsv, payload in wide}) == 1  # one compression
                assert len({payload for _op, _rsv, payload in narrow}) == 1
                for op, rsv1, payload in wide:
                    assert (op, rsv1) == (TEXT, True)
                    assert inflate_raw(payload, 12).decode() == COMPRESSIBLE
                for op, rsv1, payload in narrow:
                    assert (op, rsv1) == (TEXT, True)
                    assert inflate_raw(payload, 10).decode() == COMPRESSIBLE
                for op, rsv1, payload in received[5:]:
                    assert (op, rsv1, payload) == (TEXT, False, COMPRESSIBLE.encode())

                # What does not shrink goes plain to everyone, still one object.
                spy.calls.clear()
                await rooms.broadcast("lobby", INCOMPRESSIBLE, exclude=conns[0])
                assert len({id(f) for f, _n, _r in spy.calls}) == 1
                assert sum(n for _f, n, _r in spy.calls) == 6
                for client in clients[1:]:
                    assert await client.read_frame() == (BINARY, False, INCOMPRESSIBLE)

                # broadcast_all groups the same way.
                spy.calls.clear()
                await rooms.broadcast_all(COMPRESSIBLE)
                assert sorted(n for _f, n, _r in spy.calls) == [2, 2, 3]
                for client in clients:
                    _op, rsv1, payload = await client.read_frame()
                    text = inflate_raw(payload, 15) if rsv1 else payload
                    assert text.decode() == COMPRESSIBLE
            finally:
                for client in clients:
                    await client.close()
            await asyncio.sleep(0.05)
            await rooms.close()
        assert rooms.stats() == {"rooms": 0, "connections": 0, "memberships": 0,
                                 "room_limit_refusals": 0}
        assert rooms._deflate_groups.of("lobby") is None

    run(main())


def test_members_leaving_regroup_the_room(run: Run) -> None:
    async def main() -> None:
        rooms = rw.RoomManager()
        handler = Recorder()
        async with running_server(handler) as server:
            deflating = await DeflateRawClient.open(server.port, OFFER)
            plain = await DeflateRawClient.open(server.port, None)
            try:
                a = await asyncio.wait_for(handler.connected.get(), 5)
                b = await asyncio.wait_for(handler.connected.get(), 5)
                await rooms.join("r", a)
                await rooms.join("r", b)
                assert rooms._deflate_groups.of("r") is not None
                await rooms.leave("r", a)
                # Only plain members left: the room is back on the single fan-out.
                assert rooms._deflate_groups.of("r") is None
                await rooms.broadcast("r", COMPRESSIBLE)
                assert await plain.read_frame() == (TEXT, False, COMPRESSIBLE.encode())
                await rooms.join("r", a)
                await rooms.broadcast("r", COMPRESSIBLE)
                _op, rsv1, payload = await deflating.read_frame()
                assert rsv1 and zlib.decompressobj(-12).decompress(
                    payload + b"\x00\x00\xff\xff").decode() == COMPRESSIBLE
            finally:
                await deflating.close()
                await plain.close()
            await rooms.close()

    run(main())


def test_websockets_clients_receive_compressed_broadcasts(run: Run) -> None:
    """Real clients decode the shared frame, interleaved with their own sends."""
    from websockets.asyncio.client import connect as ws_connect

    class Chat(rw.WebSocketHandler):
        async def on_connect(self, conn: rw.WebSocketConnection) -> None:
            await rooms.join("chat", conn)

        async def on_message(self, conn: rw.WebSocketConnection, message: rw.Message) -> None:
            await conn.send(message)  # own send, through the same compressor
            await rooms.broadcast("chat", message)

    rooms = rw.RoomManager()

    async def main() -> None:
        async with running_server(Chat()) as server:
            url = f"ws://127.0.0.1:{server.port}/"
            async with ws_connect(url) as a, ws_connect(url) as b, \
                    ws_connect(url, compression=None) as c:
                while await rooms.room_size("chat") < 3:
                    await asyncio.sleep(0.01)
                for i in range(5):
                    text = f"{i}:" + COMPRESSIBLE
                    await a.send(text)
                    assert await asyncio.wait_for(a.recv(), 5) == text  # own echo
                    assert await asyncio.wait_for(a.recv(), 5) == text  # broadcast
                    assert await asyncio.wait_for(b.recv(), 5) == text
                    assert await asyncio.wait_for(c.recv(), 5) == text
        await rooms.close()

    run(main())
