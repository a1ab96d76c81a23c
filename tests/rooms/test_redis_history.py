"""Room history in Redis Streams against a real ``redis-server``: positions agree
across processes, reads, recovering joins racing broadcasts, trimmed history,
an epoch change when Redis loses the stream, and a client that recovers on
another server process after its own was SIGKILLed."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from reinhardt_ws.rooms import HistoryPolicy, Position, RoomManager
from reinhardt_ws.rooms.redis import RedisBackend
from reinhardt_ws.rooms.redis.history import hash_tag

from ..fixtures import running_server, url_of
from ..redis_app import RoomsApp
from ..redis_fixtures import AppClient, RedisClusterNodes, RedisServer
from . import test_redis as shared
from .test_redis import Runner, app_processes, run_async

# The fixtures of the Redis suite: a redis-server per session, a key prefix per test.
redis_server = shared.redis_server
redis_cluster = shared.redis_cluster
prefix = shared.prefix

pytestmark = pytest.mark.redis


@contextlib.asynccontextmanager
async def two_history_backends(url: str, prefix: str, policy: HistoryPolicy
                               ) -> AsyncIterator[list[tuple[RoomManager, str]]]:
    managers = [RoomManager(backend=RedisBackend(url, prefix=prefix), history=policy)
                for _ in range(2)]
    try:
        async with running_server(RoomsApp(managers[0])) as s1, \
                running_server(RoomsApp(managers[1])) as s2:
            yield [(managers[0], url_of(s1)), (managers[1], url_of(s2))]
    finally:
        for manager in managers:
            await manager.close()


def payload(frame: bytes) -> bytes:
    """The payload of a short unmasked server frame."""
    assert frame[1] < 126
    return frame[2:]


@pytest.mark.pure
def test_hash_tag() -> None:
    assert hash_tag(b"rws:room:chat") == b"rws:room:chat"
    assert hash_tag(b"rws:room:a{b}c") == b"b"
    assert hash_tag(b"x{}y") == b"x{}y"  # an empty tag does not count


def test_offsets_agree_across_processes(run: Runner[None], redis_server: RedisServer,
                                        prefix: str) -> None:
    """Two processes broadcasting concurrently: one sequence of offsets, and every
    member in either process receives the publications in that order."""
    async def main() -> None:
        policy = HistoryPolicy(size=500, ttl=60)
        async with two_history_backends(redis_server.url, prefix, policy) as pairs:
            (m1, u1), (m2, u2) = pairs
            a, b = await AppClient.open(u1), await AppClient.open(u2)
            await a.call("join", room="r")
            await b.call("join", room="r")
            r1, r2 = await asyncio.gather(
                a.call("series", room="r", first=1, last=100),
                b.call("series", room="r", first=101, last=200))
            positions = [Position(*p) for p in r1["positions"] + r2["positions"]]
            assert len({p.epoch for p in positions}) == 1
            assert sorted(p.offset for p in positions) == list(range(1, 201))
            by_offset = {p.offset: n for p, n in zip(positions, range(1, 201), strict=True)}
            expected = [by_offset[o] for o in range(1, 201)]
            got_a = [await a.next() for _ in range(200)]  # next() takes what call() kept first
            got_b = [await b.next() for _ in range(200)]
            assert got_a == expected and got_b == expected
            # The stored history is the same sequence, read from either process.
            read = await m2.history("r")
            assert [p.offset for p in read.publications] == list(range(1, 201))
            assert [json.loads(payload(p.frame))["msg"] for p in read.publications] == expected
            since = await m1.history("r", since=Position(positions[0].epoch, 190))
            assert since.complete and [p.offset for p in since.publications] == \
                list(range(191, 201))
            # positioned: the stored and delivered frames carry their own position
            from .test_history import positioned_text

            result = await m2.broadcast("r", positioned_text(7), positioned=True)
            assert result.position is not None
            want = {"offset": result.position.offset, "epoch": result.position.epoch,
                    "seq": 7}
            for client in (a, b):
                assert json.loads((await client.conn.recv()).payload) == want
            stored = (await m1.history("r", limit=1)).publications[0]
            assert json.loads(payload(stored.frame)) == want
            # delivered counts this process's members (its own copy came back)
            assert (await m1.broadcast("r", "x")).delivered == 1
            for client in (a, b):
                await client.close()

    run(main())


def test_recovery_races_broadcasts_and_dedupes(run: Runner[None], redis_server: RedisServer,
                                               prefix: str) -> None:
    async def main() -> None:
        policy = HistoryPolicy(size=2000, ttl=60, max_recovery=2000)
        async with two_history_backends(redis_server.url, prefix, policy) as pairs:
            (_m1, u1), (_m2, u2) = pairs
            driver = await AppClient.open(u1)
            await driver.call("series", room="feed", first=1, last=500)
            position = (await driver.call("position", room="feed"))["position"]
            assert position[1] == 500
            joiner = await AppClient.open(u2)
            racing = asyncio.create_task(driver.call("series", room="feed", first=501,
                                                     last=1000, timeout=30))
            reply = await joiner.call("join", room="feed", since=[position[0], 100])
            assert reply["recovered"] is True and reply["added"] is True
            await racing
            got = [await joiner.next() for _ in range(900)]
            assert got == list(range(101, 1001))
            await driver.call("broadcast", room="feed", data="end")
            assert await joiner.next() == "end"  # nothing doubled before it
            for client in (driver, joiner):
                await client.close()

    run(main())


def test_trimmed_history_and_lost_stream(run: Runner[None], redis_server: RedisServer,
                                         prefix: str) -> None:
    async def main() -> None:
        policy = HistoryPolicy(size=10, ttl=60, max_recovery=100)
        async with two_history_backends(redis_server.url, prefix, policy) as pairs:
            (m1, u1), (_m2, u2) = pairs
            driver = await AppClient.open(u1)
            await driver.call("series", room="t", first=1, last=30)
            epoch, top = (await driver.call("position", room="t"))["position"]
            assert top == 30
            client = await AppClient.open(u2)
            reply = await client.call("join", room="t", since=[epoch, 5])  # trimmed
            assert reply["recovered"] is False and reply["position"] == [epoch, 30]
            assert reply["replayed"] == 0 and client.received == []
            await client.call("leave", room="t")
            reply = await client.call("join", room="t", since=[epoch, 25])
            assert reply["recovered"] is True and reply["replayed"] == 5
            assert [await client.next() for _ in range(5)] == [26, 27, 28, 29, 30]
            # recent=n: the last n
            other = await AppClient.open(u1)
            reply = await other.call("join", room="t", recent=3)
            assert reply["recovered"] is True
            assert [await other.next() for _ in range(3)] == [28, 29, 30]

            # Redis loses the room's history: a new epoch, offsets start again.
            r = aioredis.Redis.from_url(redis_server.url)
            keys = [k async for k in r.scan_iter(match=f"*{prefix}:room:t*")]
            assert len(keys) == 2
            await r.delete(*keys)
            await r.aclose()
            reply = await driver.call("broadcast", room="t", data="after")
            new_epoch, offset = reply["position"]
            assert new_epoch != epoch and offset == 1
            assert await client.next() == "after"
            await client.call("leave", room="t")
            reply = await client.call("join", room="t", since=[epoch, 30])
            assert reply["recovered"] is False and reply["position"] == [new_epoch, 1]
            assert not (await m1.history("t", since=Position(epoch, 30))).complete
            for c in (driver, client, other):
                await c.close()

    run(main())


def test_history_on_a_redis_cluster(run: Runner[None], redis_cluster: RedisClusterNodes,
                                    prefix: str) -> None:
    """Rooms on every shard (and one whose name carries a hash tag): the script's
    keys and the shard channel share a slot; order, positions and recovery hold."""
    async def main() -> None:
        policy = HistoryPolicy(size=100, ttl=60)
        managers = [RoomManager(backend=RedisBackend(redis_cluster.nodes[i].url, prefix=prefix,
                                                     cluster=True), history=policy)
                    for i in range(2)]
        try:
            async with running_server(RoomsApp(managers[0])) as s1, \
                    running_server(RoomsApp(managers[1])) as s2:
                a, b = await AppClient.open(url_of(s1)), await AppClient.open(url_of(s2))
                rooms = [f"room-{i}" for i in range(6)] + ["tagged{x}room"]
                for room in rooms:
                    await a.call("join", room=room)
                for room in rooms:
                    reply = await b.call("series", room=room, first=1, last=5)
                    assert [p[1] for p in reply["positions"]] == [1, 2, 3, 4, 5]
                    assert [await a.next() for _ in range(5)] == [1, 2, 3, 4, 5]
                    epoch = reply["positions"][0][0]
                    joined = await b.call("join", room=room, since=[epoch, 2])
                    assert joined["recovered"] is True
                    assert [await b.next() for _ in range(3)] == [3, 4, 5]
        finally:
            for manager in managers:
                await manager.close()

    run(main())


def test_client_recovers_on_another_process_after_sigkill(
        redis_server: RedisServer, prefix: str, implementation: str, tmp_path: Path) -> None:
    """1000 broadcasts from process B; the client's own process A is SIGKILLed
    after it got some; it reconnects to B and recovers exactly the rest, in order."""
    with app_processes(redis_server.url, prefix, implementation, tmp_path,
                       history=2000) as (p1, p2):
        async def main() -> None:
            client = await AppClient.open(p1.url)
            driver = await AppClient.open(p2.url)
            epoch, offset = (await client.call("position", room="feed"))["position"]
            await client.call("join", room="feed")
            series = asyncio.create_task(driver.call("series", room="feed", first=1,
                                                     last=1000, timeout=60))
            seen = [await client.next(10) for _ in range(100)]
            p1.kill()
            assert seen == list(range(1, 101))
            with contextlib.suppress(Exception):
                await client.close()
            again = await AppClient.open(p2.url)
            reply = await again.call("join", room="feed", since=[epoch, offset + len(seen)])
            assert reply["recovered"] is True, reply
            await series
            got = [await again.next(10) for _ in range(900)]
            assert got == list(range(101, 1001))
            await driver.call("broadcast", room="feed", data="end")
            assert await again.next() == "end"
            await again.close()
            await driver.close()

        run_async(main(), timeout=120)
