"""What room history adds to a broadcast, and what it costs to read back the
1000 publications a returning client missed: in memory and with Redis Streams.

- ``broadcast``: ``BROADCASTS`` broadcasts of 64 bytes to a room with no member
  (so the fan-out costs nothing and what remains is framing, storing and, with
  Redis, publishing), with and without a ``HistoryPolicy``.  With Redis, one
  round is over once every publication has been written (without history
  ``broadcast()`` only queues; with history it waits for the script's reply).
- ``recover``: ``rooms.history(room, since=position)`` of 1000 missed
  publications (the read a recovering join makes before it queues the replay).

Run: ``python -m pytest bench/test_history.py`` (uses ``redis-server`` from PATH).
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

pytest.importorskip("redis")
pytest.importorskip("pytest_benchmark")

from reinhardt_ws import HistoryPolicy, Position, RoomManager  # noqa: E402
from reinhardt_ws.rooms.redis import RedisBackend  # noqa: E402
from tests.redis_fixtures import RedisServer, redis_server_binary  # noqa: E402

BROADCASTS = 2000
MISSED = 1000
POLICY = HistoryPolicy(size=2 * MISSED, ttl=600, max_recovery=MISSED)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer(redis_server_binary()).start()
    yield server
    server.stop()


def manager(store: str, history: bool, url: str) -> RoomManager:
    policy = POLICY if history else None
    if store == "memory":
        return RoomManager(history=policy)
    return RoomManager(backend=RedisBackend(url, prefix=f"b{uuid.uuid4().hex[:8]}"),
                       history=policy)


async def drained(rooms: RoomManager, published: int) -> None:
    backend = rooms.backend
    if isinstance(backend, RedisBackend):
        while backend.stats()["published"] < published:
            await asyncio.sleep(0.001)


@pytest.mark.parametrize("history", [False, True], ids=["plain", "history"])
@pytest.mark.parametrize("store", ["memory", "redis"])
def test_broadcast(benchmark: Any, redis_server: RedisServer, store: str,
                   history: bool) -> None:
    loop = asyncio.new_event_loop()
    rooms = manager(store, history, redis_server.url)
    payload = b"x" * 64
    loop.run_until_complete(rooms.list_rooms())  # bind and connect
    sent = 0

    def one_round() -> None:
        nonlocal sent

        async def go() -> None:
            for _ in range(BROADCASTS):
                await rooms.broadcast("bench", payload)
            await drained(rooms, sent + BROADCASTS)

        loop.run_until_complete(go())
        sent += BROADCASTS

    try:
        benchmark.pedantic(one_round, rounds=5, warmup_rounds=1)
        benchmark.extra_info["ops_per_call"] = BROADCASTS
    finally:
        loop.run_until_complete(rooms.close())
        loop.close()


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_recover(benchmark: Any, redis_server: RedisServer, store: str) -> None:
    loop = asyncio.new_event_loop()
    rooms = manager(store, True, redis_server.url)

    async def fill() -> Position:
        last = None
        for i in range(2 * MISSED):
            last = (await rooms.broadcast("bench", f"message {i}")).position
        assert last is not None
        return Position(last.epoch, last.offset - MISSED)

    since = loop.run_until_complete(fill())

    def one_read() -> None:
        read = loop.run_until_complete(rooms.history("bench", since=since))
        assert read.complete and len(read.publications) == MISSED

    try:
        benchmark.pedantic(one_read, rounds=20, warmup_rounds=2)
        benchmark.extra_info["publications"] = MISSED
    finally:
        loop.run_until_complete(rooms.close())
        loop.close()
