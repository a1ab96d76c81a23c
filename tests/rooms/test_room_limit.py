"""The per-connection room limit, the constant-time membership test, and the
in-memory backend answering the queries itself."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import pytest

import reinhardt_ws as rw
from reinhardt_ws.rooms import InMemoryBackend
from tests.fixtures import Recorder, running_server
from tests.peer_clients import KINDS, connected

Run = Callable[[Coroutine[Any, Any, Any]], Any]


def test_limit_must_be_positive() -> None:
    for bad in (0, -1):
        with pytest.raises(ValueError, match="max_rooms_per_connection"):
            rw.RoomManager(max_rooms_per_connection=bad)
    assert rw.RoomManager().max_rooms_per_connection is None
    assert rw.RoomManager.from_url("memory://", max_rooms_per_connection=7
                                   ).max_rooms_per_connection == 7


def test_join_past_the_limit_raises_and_changes_nothing(run: Run) -> None:
    async def main() -> None:
        rooms = rw.RoomManager(max_rooms_per_connection=2)
        handler = Recorder()
        async with running_server(handler) as server, \
                connected(server, handler, KINDS) as pairs:
            (ca, a), (cb, b) = pairs
            assert await rooms.join("one", a) is True
            assert await rooms.join("two", a) is True
            with pytest.raises(rw.RoomLimitError) as raised:
                await rooms.join("three", a)
            assert raised.value.limit == 2 and isinstance(raised.value, rw.WebSocketError)
            assert "at most 2 rooms" in str(raised.value)
            assert await rooms.rooms_of(a) == {"one", "two"}
            assert await rooms.list_rooms() == ["one", "two"]
            assert rooms.stats() == {"rooms": 2, "connections": 1, "memberships": 2,
                                     "room_limit_refusals": 1}
            # At the limit, joining a room it is in is no error (nothing changes).
            assert await rooms.join("two", a) is False
            # Another connection has a limit of its own.
            for name in ("three", "one"):
                assert await rooms.join(name, b) is True
            assert await rooms.leave("one", a) is True
            assert await rooms.join("three", a) is True
            assert await rooms.broadcast("three", "to three") == rw.BroadcastResult(2, 0, ())
            assert await ca.recv() == "to three" and await cb.recv() == "to three"

    run(main())


def test_is_member(run: Run) -> None:
    async def main() -> None:
        rooms = rw.RoomManager()
        handler = Recorder()
        async with running_server(handler) as server, \
                connected(server, handler, KINDS) as pairs:
            (_ca, a), (cb, b) = pairs
            assert await rooms.is_member("r", a) is False  # before any binding
            assert await rooms.join("r", a) is True
            assert await rooms.is_member("r", a) is True
            assert await rooms.is_member("r", b) is False
            assert await rooms.is_member("elsewhere", a) is False
            for i in range(500):
                await rooms.join(f"many{i}", b)
            assert await rooms.is_member("many499", b) is True
            assert await rooms.is_member("r", b) is False
            await cb.close()
            await b.wait_closed()
            assert await rooms.is_member("many0", b) is False  # closing left every room
            assert await rooms.leave("r", a) is True
            assert await rooms.is_member("r", a) is False

    run(main())


def test_in_memory_backend_answers_queries(run: Run) -> None:
    async def main() -> None:
        backend = InMemoryBackend()
        assert await backend.room_size("r") == 0 and await backend.list_rooms() == []
        rooms = rw.RoomManager(backend=backend)
        handler = Recorder()
        async with running_server(handler) as server, \
                connected(server, handler, KINDS) as pairs:
            (_ca, a), (_cb, b) = pairs
            await rooms.join("r", a)
            await rooms.join("r", b)
            await rooms.join("q", b)
            assert await backend.room_size("r") == 2
            assert await backend.list_rooms() == ["q", "r"]
            assert await rooms.room_size("q") == 1

    run(main())
