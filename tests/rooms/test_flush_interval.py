"""RoomManager(flush_interval=...): broadcasts held to share a write, over real
servers and real clients (python-websockets and aiohttp), on both fan-outs.

Timing is asserted only with wide margins: a held message is not written before
most of its interval has passed, and arrives within the interval plus seconds."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

import reinhardt_ws as rw

from ..fixtures import Recorder, running_server
from ..peer_clients import KINDS, PeerClosed, connected

Run = Callable[[Coroutine[Any, Any, Any]], Any]


@pytest.mark.parametrize("bad", [0, -0.001, 1.5, math.nan, math.inf])
def test_flush_interval_out_of_range_is_a_value_error(bad: float) -> None:
    with pytest.raises(ValueError, match="flush_interval"):
        rw.RoomManager(flush_interval=bad)


@pytest.mark.parametrize("bad", ["0.001", True, [0.001]])
def test_flush_interval_of_another_type_is_a_type_error(bad: Any) -> None:
    with pytest.raises(TypeError, match="flush_interval"):
        rw.RoomManager(flush_interval=bad)


def test_flush_interval_is_a_manager_option_of_from_url() -> None:
    assert rw.RoomManager.from_url("memory://", flush_interval=0.002).flush_interval == 0.002
    assert rw.RoomManager().flush_interval is None


def test_flush_interval_can_be_changed_and_is_validated_then_too() -> None:
    rooms = rw.RoomManager()
    rooms.flush_interval = 0.5
    assert rooms.flush_interval == 0.5
    with pytest.raises(ValueError, match="flush_interval"):
        rooms.flush_interval = 0
    assert rooms.flush_interval == 0.5
    rooms.flush_interval = None
    assert rooms.flush_interval is None


def test_a_stream_of_single_broadcasts_arrives_whole_in_order_in_few_writes(run: Run) -> None:
    """One broadcast per loop iteration, 300 of them, with a 20 ms budget: every
    client gets every message in order, and the members are written far fewer
    times than there were broadcasts (the writes were shared across iterations)."""

    async def main() -> None:
        rooms = rw.RoomManager(flush_interval=0.02)
        handler = Recorder()
        async with running_server(handler) as server, \
                connected(server, handler, KINDS) as pairs:
            for _, conn in pairs:
                await rooms.join("ticker", conn)
            hub = rooms._hub
            assert hub is not None
            before = hub.stats()
            for i in range(300):
                result = await rooms.broadcast("ticker", f"tick {i}")
                assert result == rw.BroadcastResult(2, 0, ())
                await asyncio.sleep(0)
            for client, _ in pairs:
                got = [await client.recv(10) for _ in range(300)]
                assert got == [f"tick {i}" for i in range(300)]
            stats = hub.stats()
            assert stats["delivered"] - before["delivered"] == 600
            assert stats["flushes"] - before["flushes"] <= 600 // 4
            await rooms.close()

    run(main())


def test_a_held_message_waits_about_the_interval_then_arrives(run: Run) -> None:
    """With the longest budget (1 s), a lone broadcast is still held after several
    iterations, then arrives once the interval has (mostly) passed."""

    async def main() -> None:
        rooms = rw.RoomManager(flush_interval=1.0)
        handler = Recorder()
        async with running_server(handler) as server, \
                connected(server, handler, KINDS) as pairs:
            for _, conn in pairs:
                await rooms.join("slowtick", conn)
            t0 = time.monotonic()
            await rooms.broadcast("slowtick", "late")
            for _ in range(5):
                await asyncio.sleep(0)
            for _, conn in pairs:
                peer = conn._room_peer()
                assert peer is not None and peer.pending_size > 0  # still held
            for client, _ in pairs:
                assert await client.recv(10) == "late"
            waited = time.monotonic() - t0
            assert 0.8 <= waited < 6.0
            await rooms.close()

    run(main())


def test_a_connection_s_own_send_writes_what_is_held_first(run: Run) -> None:
    """A connection's own send is not delayed, and takes the held broadcasts with
    it, in order."""

    async def main() -> None:
        rooms = rw.RoomManager(flush_interval=1.0)
        handler = Recorder()
        async with running_server(handler) as server, \
                connected(server, handler, KINDS) as pairs:
            for _, conn in pairs:
                await rooms.join("room", conn)
            t0 = time.monotonic()
            await rooms.broadcast("room", "held")
            for client, conn in pairs:
                await conn.send("own")
                assert [await client.recv(5), await client.recv(5)] == ["held", "own"]
            assert time.monotonic() - t0 < 0.8  # well before the 1 s timer
            await rooms.close()

    run(main())


def test_closing_delivers_what_is_held(run: Run) -> None:
    """Held broadcasts go out before a connection's close frame, when the server
    shuts down and when RoomManager.close() is awaited."""

    async def main() -> None:
        rooms = rw.RoomManager(flush_interval=1.0)
        handler = Recorder()
        async with running_server(handler) as server, \
                connected(server, handler, KINDS) as pairs:
            for _, conn in pairs:
                await rooms.join("room", conn)
            await rooms.broadcast("room", "first")
            t0 = time.monotonic()
            await rooms.close()
            for client, _ in pairs:
                assert await client.recv(5) == "first"
            assert time.monotonic() - t0 < 0.8
            await rooms.broadcast("room", "last words")
            closing = asyncio.ensure_future(server.close(timeout=5))
            for client, _ in pairs:
                assert await client.recv(5) == "last words"
                with pytest.raises(PeerClosed) as closed:
                    await client.recv(5)
                assert closed.value.code == 1001  # going away: the server shut down
            await closing

    run(main())
