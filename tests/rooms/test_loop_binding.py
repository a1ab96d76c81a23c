"""Which loop owns a RoomManager (issue 10, item 4): the loop its connections
run on, not the first loop that happens to call it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

import reinhardt_ws as rw
from tests.fixtures import Recorder, running_server
from tests.peer_clients import KINDS, connected, open_client
from tests.rooms.loops import broadcast_from_worker, worker_loop

Run = Callable[[Coroutine[Any, Any, Any]], Any]

#: Created at import time, before any event loop exists (as the docs allow).
MODULE_ROOMS = rw.RoomManager()

def test_module_level_manager_first_used_from_a_worker_loop(run: Run) -> None:
    """The worker's loop calls first (the room is still empty); the connections
    then join from the server's loop; 200 broadcasts from the worker all arrive,
    promptly: the fan-out runs on the server's loop, woken by each call."""
    rooms = MODULE_ROOMS

    async def main() -> None:
        async with worker_loop() as worker:
            # First use, from the worker's own loop, before any connection exists.
            assert await worker.call(rooms.room_size("feed")) == 0
            assert await worker.call(rooms.broadcast("feed", "nobody")) == rw.BroadcastResult()
            assert await worker.call(rooms.list_rooms()) == []
            handler = Recorder()
            async with running_server(handler) as server, \
                    connected(server, handler, KINDS) as pairs:
                for _client, conn in pairs:
                    assert await rooms.join("feed", conn) is True
                await broadcast_from_worker(worker, rooms, "feed", [c for c, _ in pairs])
                assert await worker.call(rooms.room_size("feed")) == 2
                assert rooms.stats()["memberships"] == 2

    run(main())


def test_join_from_a_worker_loop_binds_to_the_connections_loop(run: Run) -> None:
    """The first join, made from the worker's loop, binds the manager to the
    connection's loop; later calls from either loop agree."""

    async def main() -> None:
        rooms = rw.RoomManager()
        async with worker_loop() as worker:
            handler = Recorder()
            async with running_server(handler) as server, \
                    connected(server, handler, KINDS) as pairs:
                (ca, a), (cb, b) = pairs
                assert await worker.call(rooms.join("r", a)) is True
                assert await rooms.join("r", b) is True
                result = await worker.call(rooms.broadcast("r", "from worker"))
                assert result == rw.BroadcastResult(2, 0, ())
                assert await rooms.broadcast("r", "from server") == rw.BroadcastResult(2, 0, ())
                for client in (ca, cb):
                    assert await client.recv_many(2) == ["from worker", "from server"]
                assert await worker.call(rooms.is_member("r", a)) is True
                await worker.call(rooms.close())

    run(main())


def test_a_connection_of_another_loop_cannot_join(run: Run) -> None:
    """One manager serves the connections of one loop: a connection of a server
    running on another loop is refused with a clear error, and nothing changes."""

    async def main() -> None:
        rooms = rw.RoomManager()
        async with worker_loop() as worker:
            handler = Recorder()
            async with running_server(handler) as server, \
                    connected(server, handler, KINDS[:1]) as pairs:
                ((_client, mine),) = pairs
                assert await rooms.join("r", mine) is True
                other_handler = Recorder()

                async def other_server() -> None:
                    async with running_server(other_handler) as other:
                        client = await open_client(f"ws://127.0.0.1:{other.port}/", KINDS[0])
                        try:
                            theirs = await asyncio.wait_for(other_handler.connected.get(), 5)
                            with pytest.raises(RuntimeError, match="another event loop"):
                                await rooms.join("r", theirs)
                        finally:
                            await client.close()

                await worker.call(other_server())
                assert await rooms.room_size("r") == 1
                assert rooms.stats() == {"rooms": 1, "connections": 1, "memberships": 1,
                                         "room_limit_refusals": 0}

    run(main())
