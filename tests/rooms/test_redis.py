"""RedisBackend against a real ``redis-server``: rooms spanning processes,
``exclude`` and ``send_to`` across them, cluster-wide counts and their expiry when
a process dies, Redis killed and restarted mid-run, and ``serve --workers``.

In-process tests run two managers, each with its own backend (its own process id
in Redis, talking to the other only through Redis), on both event loops; the
others start real server processes (``tests/redis_app.py`` or the CLI).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

try:
    import redis.asyncio as aioredis
except ImportError:  # pragma: no cover - the redis extra is part of the test setup
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail("redis-py is not installed: pip install 'reinhardt-ws[redis]'",
                    pytrace=False)
    pytest.skip("redis-py is not installed (the redis extra)", allow_module_level=True)

import reinhardt_ws as rw
from reinhardt_ws.rooms import RoomManager
from reinhardt_ws.rooms.envelope import (
    KIND_DIRECT,
    KIND_ROOM,
    Envelope,
    pack_envelope,
    unpack_envelope,
)
from reinhardt_ws.rooms.redis import RedisBackend
from reinhardt_ws.rooms.redis.backend import _has_sharded_pubsub

from ..fixtures import free_port, running_server, url_of
from ..redis_app import RoomsApp
from ..redis_fixtures import (
    AppClient,
    AppProcess,
    RedisClusterNodes,
    RedisServer,
    child_env,
    redis_server_binary,
    start_process,
    stop_process,
)

T = TypeVar("T")
Runner = Callable[[Coroutine[Any, Any, T]], T]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer(redis_server_binary()).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterNodes]:
    if not _has_sharded_pubsub():
        pytest.skip("Redis Cluster support needs redis-py 8 or later")
    cluster = RedisClusterNodes(redis_server_binary(), tmp_path_factory.mktemp("cluster"))
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
def prefix() -> str:
    """A namespace of its own for every test."""
    return f"t{uuid.uuid4().hex[:12]}"


async def poll(probe: Callable[[], Coroutine[Any, Any, T]], accept: Callable[[T], bool],
               timeout: float = 5.0, interval: float = 0.05) -> T:
    """Call *probe* until *accept* takes its answer; fail after *timeout*."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await probe()
        if accept(value):
            return value
        if loop.time() > deadline:
            raise AssertionError(f"still {value!r} after {timeout}s")
        await asyncio.sleep(interval)


# -- no server needed -------------------------------------------------------------------
@pytest.mark.pure
def test_envelope_round_trip() -> None:
    frame = b"\x81\x05hello"
    origin = bytes(range(8))
    plain = pack_envelope(KIND_ROOM, origin, (), frame)
    assert len(plain) == 12 + len(frame)  # the frame is carried as it is
    assert unpack_envelope(plain) == Envelope(KIND_ROOM, origin, (), frame)
    ids = ("a" * 32, "é-id")
    packed = pack_envelope(KIND_DIRECT, origin, ids, frame)
    assert unpack_envelope(packed) == Envelope(KIND_DIRECT, origin, ids, frame)
    with pytest.raises(ValueError):
        unpack_envelope(b"\x02" + plain[1:])
    with pytest.raises(ValueError):
        unpack_envelope(packed[:14])


@pytest.mark.pure
def test_options_are_checked() -> None:
    with pytest.raises(ValueError):
        RedisBackend("redis://127.0.0.1:1", ttl=1.0, heartbeat_interval=1.0)
    with pytest.raises(ValueError):
        RedisBackend("redis://127.0.0.1:1", prefix="a{b}")
    manager = RoomManager.from_url("redis://127.0.0.1:1/0", prefix="p", ttl=9.0)
    assert isinstance(manager.backend, RedisBackend)
    assert manager.backend.prefix == "p" and manager.backend.ttl == 9.0
    limited = RoomManager.from_url("redis://127.0.0.1:1/0", max_rooms_per_connection=3)
    assert limited.max_rooms_per_connection == 3 and isinstance(limited.backend, RedisBackend)


@pytest.mark.pure
def test_workers_without_redis_are_refused() -> None:
    done = subprocess.run([sys.executable, "-m", "reinhardt_ws", "serve", "--workers", "2"],
                          capture_output=True, timeout=30, env=child_env("python"))
    assert done.returncode == 2
    assert b"--workers above 1 needs --redis URL" in done.stderr


# -- two backends in one process (both loops) --------------------------------------------
@contextlib.asynccontextmanager
async def two_backends(url: str, prefix: str, **options: Any
                       ) -> AsyncIterator[tuple[tuple[RoomManager, str], tuple[RoomManager, str]]]:
    """Two managers with a backend each, as two processes would have, each behind
    its own server; yields ``(manager, ws_url)`` pairs."""
    m1 = RoomManager(backend=RedisBackend(url, prefix=prefix, **options))
    m2 = RoomManager(backend=RedisBackend(url, prefix=prefix, **options))
    try:
        async with running_server(RoomsApp(m1)) as s1, running_server(RoomsApp(m2)) as s2:
            yield (m1, url_of(s1)), (m2, url_of(s2))
    finally:
        await m1.close()
        await m2.close()


@pytest.mark.redis
@pytest.mark.parametrize("sharded", [False, True], ids=["pubsub", "sharded"])
def test_room_spans_backends(run: Runner[None], redis_server: RedisServer, prefix: str,
                             sharded: bool) -> None:
    if sharded and not _has_sharded_pubsub():
        pytest.skip("sharded pub/sub needs redis-py 8 or later")
    async def main() -> None:
        async with two_backends(redis_server.url, prefix, sharded=sharded) as (
                (m1, u1), (_m2, u2)):
            a = await AppClient.open(u1)
            b = await AppClient.open(u2)
            assert (await a.call("join", room="r"))["size"] == 1
            assert (await b.call("join", room="r"))["size"] == 2
            assert (await a.call("size", room="r"))["size"] == 2
            # Each message published after the previous one arrived everywhere: a
            # duplicate (a process receiving its own publication) would show up
            # before the next message.
            assert (await a.call("broadcast", room="r", data="one"))["delivered"] == 1
            assert [await a.next(), await b.next()] == ["one", "one"]
            await b.call("broadcast", room="r", data="two")
            assert [await b.next(), await a.next()] == ["two", "two"]
            await a.call("broadcast", room="r", data="three")
            assert [await a.next(), await b.next()] == ["three", "three"]

            assert (await b.call("join", room="only-b"))["size"] == 1
            assert await m1.list_rooms() == ["only-b", "r"]
            assert await m1.room_size("only-b") == 1
            await a.call("broadcast_all", data="everyone")
            assert [await a.next(), await b.next()] == ["everyone", "everyone"]

            assert (await b.call("leave", room="r"))["size"] == 1
            assert (await a.call("size", room="r"))["size"] == 1
            await a.call("broadcast", room="r", data="after-leave")
            await b.call("broadcast", room="only-b", data="fence")
            assert await a.next() == "after-leave"
            assert await b.next() == "fence"  # not "after-leave": b left r
            stats1 = m1.backend.stats()  # type: ignore[attr-defined]
            assert stats1["connected"] == 1 and stats1["dropped_publications"] == 0

    run(main())


@pytest.mark.redis
def test_redis_cluster_sharded(run: Runner[None], redis_cluster: RedisClusterNodes,
                               prefix: str) -> None:
    """On a 3-node cluster: rooms on different shards, each subscribed on the node
    that owns its slot; counts, exclude and send_to across the two backends."""

    async def main() -> None:
        m1 = RoomManager(backend=RedisBackend(redis_cluster.nodes[0].url, prefix=prefix,
                                              cluster=True))
        m2 = RoomManager(backend=RedisBackend(redis_cluster.nodes[1].url, prefix=prefix,
                                              cluster=True))
        b1, b2 = m1.backend, m2.backend
        assert isinstance(b1, RedisBackend) and isinstance(b2, RedisBackend)
        assert b1.sharded and b2.sharded
        try:
            async with running_server(RoomsApp(m1)) as s1, running_server(RoomsApp(m2)) as s2:
                a = await AppClient.open(url_of(s1))
                b = await AppClient.open(url_of(s2))
                c = await AppClient.open(url_of(s2))
                rooms = [f"room-{i}" for i in range(12)]
                for room in rooms:
                    for client in (a, b):
                        await client.call("join", room=room)
                await c.call("join", room=rooms[0])
                owners = {b1._rt.client.get_node_from_key(b1._room_channel(r)).name for r in rooms}
                assert len(owners) == 3  # the rooms are spread over the shards
                assert len(b1._rt.subscribers) == 3  # a subscriber on each node it needs
                assert await m1.room_size(rooms[0]) == 3
                assert await m2.list_rooms() == sorted(rooms)
                for room in rooms:
                    await a.call("broadcast", room=room, data=room)
                    assert [await a.next(), await b.next()] == [room, room]
                assert await c.next() == rooms[0]
                await a.call("broadcast", room=rooms[0], data="not-b", exclude=[b.id])
                await a.call("broadcast", room=rooms[0], data="fence")
                assert await b.take_until("fence") == []
                assert await c.take_until("fence") == ["not-b"]
                assert await a.take_until("fence") == ["not-b"]
                assert (await a.call("send_to", id=c.id, data="dm"))["ok"] is True
                assert await c.next() == "dm"
                assert (await a.call("send_to", id="nobody", data="dm"))["ok"] is False
                await b.call("leave", room=rooms[1])
                assert await m1.room_size(rooms[1]) == 1
        finally:
            await m1.close()
            await m2.close()
        cluster = aioredis.RedisCluster.from_url(redis_cluster.url)
        try:
            assert [k async for k in cluster.scan_iter(f"{prefix}:*")] == []
        finally:
            await cluster.aclose()

    run(main())


@pytest.mark.redis
def test_exclude_and_send_to_across_backends(run: Runner[None], redis_server: RedisServer,
                                             prefix: str) -> None:
    async def main() -> None:
        async with two_backends(redis_server.url, prefix) as ((_m1, u1), (_m2, u2)):
            a = await AppClient.open(u1)
            b = await AppClient.open(u2)
            c = await AppClient.open(u2)
            for client in (a, b, c):
                await client.call("join", room="r")
            await a.call("broadcast", room="r", data="not-b", exclude=[b.id])
            await a.call("broadcast", room="r", data="fence")
            assert await b.take_until("fence") == []
            assert await c.take_until("fence") == ["not-b"]
            assert await a.take_until("fence") == ["not-b"]

            await a.call("broadcast", room="r", data="not-b-c", exclude=[b.id, c.id, a.id])
            await a.call("broadcast", room="r", data="fence")
            for client in (a, b, c):
                assert await client.take_until("fence") == []

            assert (await a.call("send_to", id=b.id, data="dm"))["ok"] is True
            assert await b.next() == "dm"
            assert (await c.call("send_to", id=a.id, data="dm-back"))["ok"] is True
            assert await a.next() == "dm-back"
            assert (await a.call("send_to", id=a.id, data="self"))["ok"] is True
            assert await a.next() == "self"
            assert (await a.call("send_to", id="no-such-connection", data="x"))["ok"] is False
            await b.close()
            await poll(lambda: a.call("size", room="r"), lambda r: r["size"] == 2)
            assert (await a.call("send_to", id=b.id, data="gone"))["ok"] is False

    run(main())


@pytest.mark.redis
def test_subscribes_per_room(run: Runner[None], redis_server: RedisServer,
                             prefix: str) -> None:
    async def numsub(client: Any, channel: str) -> int:
        return int(dict(await client.pubsub_numsub(channel))[channel.encode()])

    async def main() -> None:
        client = aioredis.Redis.from_url(redis_server.url)
        try:
            async with two_backends(redis_server.url, prefix) as ((m1, u1), (_m2, u2)):
                a = await AppClient.open(u1)
                b = await AppClient.open(u2)
                room = f"{prefix}:room:r"
                await a.call("join", room="r")
                assert await numsub(client, room) == 1  # joined => subscribed
                await b.call("join", room="r")
                assert await numsub(client, room) == 2
                assert await numsub(client, f"{prefix}:all") == 2
                await b.call("leave", room="r")
                await poll(lambda: numsub(client, room), lambda n: n == 1)
                await a.close()
                await poll(lambda: numsub(client, room), lambda n: n == 0)
                assert await m1.list_rooms() == []
        finally:
            await client.aclose()

    run(main())


@pytest.mark.redis
def test_close_leaves_nothing_behind(run: Runner[None], redis_server: RedisServer,
                                     prefix: str) -> None:
    async def main() -> None:
        before = asyncio.all_tasks()
        client = aioredis.Redis.from_url(redis_server.url)
        try:
            async with two_backends(redis_server.url, prefix) as ((m1, u1), (m2, u2)):
                a = await AppClient.open(u1)
                b = await AppClient.open(u2)
                await a.call("join", room="r")
                await b.call("join", room="r")
                assert [k async for k in client.scan_iter(f"{prefix}:*")]
                names = {m.backend.process_id for m in (m1, m2)}  # type: ignore[attr-defined]
            assert [k async for k in client.scan_iter(f"{prefix}:*")] == []

            async def our_clients() -> list[Any]:
                return [c for c in await client.client_list()
                        if c.get("name", "").removeprefix("rws-") in names]

            await poll(our_clients, lambda found: found == [])
            await asyncio.sleep(0)
            assert asyncio.all_tasks() <= before
        finally:
            await client.aclose()

    run(main())


@pytest.mark.redis
def test_unreachable_redis_keeps_local_delivery(run: Runner[None]) -> None:
    async def main() -> None:
        before = asyncio.all_tasks()
        backend = RedisBackend(f"redis://127.0.0.1:{free_port()}/0", connect_timeout=0.5,
                               command_timeout=0.5, backoff_max=0.2)
        manager = RoomManager(backend=backend)
        async with running_server(RoomsApp(manager)) as server:
            a = await AppClient.open(url_of(server))
            assert (await a.call("join", room="r"))["size"] == 1
            assert (await a.call("broadcast", room="r", data="local"))["delivered"] == 1
            assert await a.next() == "local"
            assert (await a.call("send_to", id="elsewhere", data="x"))["ok"] is False
            assert (await a.call("rooms"))["rooms"] == ["r"]
            stats = backend.stats()
            assert stats["connected"] == 0 and stats["dropped_publications"] == 2
        started = time.monotonic()
        await manager.close()
        assert time.monotonic() - started < 2.0
        await asyncio.sleep(0)
        assert asyncio.all_tasks() <= before

    run(main())


# -- server processes ----------------------------------------------------------------------
def run_async(coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


@contextlib.contextmanager
def app_processes(redis_url: str, prefix: str, implementation: str, tmp_path: Path,
                  count: int = 2, **options: Any) -> Iterator[list[AppProcess]]:
    procs = []
    try:
        for i in range(count):
            procs.append(AppProcess(redis_url, prefix, implementation,
                                    tmp_path / f"app{i}.log", **options).start())
        yield procs
    finally:
        for proc in procs:
            proc.stop()


@pytest.mark.redis
def test_processes_share_rooms(redis_server: RedisServer, prefix: str, implementation: str,
                               tmp_path: Path) -> None:
    with app_processes(redis_server.url, prefix, implementation, tmp_path) as (p1, p2):
        async def main() -> None:
            a = await AppClient.open(p1.url)
            b = await AppClient.open(p2.url)
            c = await AppClient.open(p2.url)
            assert (await a.call("join", room="r"))["size"] == 1
            assert (await b.call("join", room="r"))["size"] == 2
            assert (await c.call("join", room="r"))["size"] == 3
            assert (await a.call("id"))["pid"] != (await b.call("id"))["pid"]
            await a.call("broadcast", room="r", data="hello")
            assert [await x.next() for x in (a, b, c)] == ["hello"] * 3
            await b.call("broadcast", room="r", data="back")
            assert [await x.next() for x in (a, b, c)] == ["back"] * 3

            await a.call("broadcast", room="r", data="not-b", exclude=[b.id])
            await a.call("broadcast", room="r", data="fence")
            assert await b.take_until("fence") == []
            assert await c.take_until("fence") == ["not-b"]
            assert await a.take_until("fence") == ["not-b"]

            assert (await a.call("send_to", id=c.id, data="dm"))["ok"] is True
            assert await c.next() == "dm"
            assert (await a.call("send_to", id="nobody", data="dm"))["ok"] is False

            await c.call("join", room="c-only")
            assert (await a.call("rooms"))["rooms"] == ["c-only", "r"]
            await c.close()
            await poll(lambda: a.call("rooms"), lambda r: r["rooms"] == ["r"])
            assert (await a.call("size", room="r"))["size"] == 2
            for client in (a, b):
                await client.close()

        run_async(main())


@pytest.mark.redis
def test_members_of_a_killed_process_expire(redis_server: RedisServer, prefix: str,
                                            implementation: str, tmp_path: Path) -> None:
    ttl = 1.0
    with app_processes(redis_server.url, prefix, implementation, tmp_path, ttl=ttl) as (p1, p2):
        async def main() -> None:
            a = await AppClient.open(p1.url)
            b = await AppClient.open(p2.url)
            await a.call("join", room="r")
            await b.call("join", room="r")
            await b.call("join", room="b-only")
            assert (await a.call("size", room="r"))["size"] == 2
            assert (await a.call("rooms"))["rooms"] == ["b-only", "r"]

            p2.kill()  # SIGKILL: no goodbye, its keys stay until they expire
            killed = time.monotonic()
            await poll(lambda: a.call("size", room="r"), lambda r: r["size"] == 1,
                       timeout=ttl + 3, interval=0.05)
            gone_after = time.monotonic() - killed
            assert gone_after <= ttl + 0.5, gone_after
            assert (await a.call("rooms"))["rooms"] == ["r"]
            assert (await a.call("send_to", id=b.id, data="x"))["ok"] is False
            await a.call("broadcast", room="r", data="still-here")
            assert await a.next() == "still-here"
            await a.close()

        run_async(main())


@pytest.mark.redis
def test_redis_killed_and_restarted(prefix: str, implementation: str, tmp_path: Path) -> None:
    redis = RedisServer(redis_server_binary()).start()
    try:
        with app_processes(redis.url, prefix, implementation, tmp_path, ttl=2.0,
                           backoff_max=0.5) as (p1, p2):
            async def main() -> None:
                a = await AppClient.open(p1.url)
                b = await AppClient.open(p2.url)
                await a.call("join", room="r")
                await b.call("join", room="r")
                await a.call("broadcast", room="r", data="before")
                assert [await a.next(), await b.next()] == ["before", "before"]

                redis.kill()
                for client in (a, b):
                    await poll(lambda c=client: c.call("stats"),  # type: ignore[misc]
                               lambda r: r["stats"]["connected"] == 0)
                # Local members keep receiving local broadcasts; the rest is dropped.
                assert (await a.call("broadcast", room="r", data="during"))["delivered"] == 1
                assert await a.next() == "during"
                assert (await a.call("stats"))["stats"]["dropped_publications"] >= 1
                assert (await a.call("send_to", id=b.id, data="x"))["ok"] is False
                c = await AppClient.open(p2.url)  # joins during the outage
                assert (await c.call("join", room="r"))["size"] == 2  # p2's own members
                await asyncio.sleep(1.0)  # several reconnection attempts fail meanwhile
                assert (await a.call("broadcast", room="r", data="during"))["delivered"] == 1
                assert await a.next() == "during"

                redis.start()  # same port, empty
                n = 0

                async def probe() -> list[Any]:
                    nonlocal n
                    n += 1
                    await a.call("broadcast", room="r", data=f"after-{n}")
                    with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
                        await b.next(timeout=0.2)
                        return [True]
                    return []

                await poll(probe, bool, timeout=15.0, interval=0.0)
                # Membership was re-registered by both sides, c's join included.
                for client in (a, b):
                    await poll(lambda cl=client: cl.call("size", room="r"),  # type: ignore[misc]
                               lambda r: r["size"] == 3)
                await a.call("broadcast", room="r", data="final")
                missed = await b.take_until("final")
                assert all(m.startswith("after-") for m in missed), missed
                assert "final" in [*(await c.take_until("final")), "final"]
                await b.call("broadcast", room="r", data="from-b")
                assert "from-b" in [*(await a.take_until("from-b")), "from-b"]
                for client in (a, b):
                    stats = (await client.call("stats"))["stats"]
                    assert stats["connected"] == 1 and stats["reconnects"] >= 1, stats
                    assert stats["dropped_publications"] >= (2 if client is a else 0), stats
                # No connection leaked by the failed attempts: a subscriber and a few
                # pooled command connections per process.
                raw = aioredis.Redis.from_url(redis.url)
                try:
                    names = [c.get("name", "") for c in await raw.client_list()]
                finally:
                    await raw.aclose()
                for client in (a, b):
                    process = (await client.call("id"))["process"]
                    assert 1 <= names.count(f"rws-{process}") <= 4, names
                for client in (a, b, c):
                    await client.close()

            run_async(main())
    finally:
        redis.stop()


@pytest.mark.redis
def test_cli_workers_share_rooms(redis_server: RedisServer, prefix: str, implementation: str,
                                 tmp_path: Path) -> None:
    port = free_port()
    proc, lines = start_process(
        [sys.executable, "-m", "reinhardt_ws", "serve", "--redis", redis_server.url,
         "--workers", "2", "--port", str(port), "--redis-prefix", prefix, "--redis-ttl", "2"],
        child_env(implementation), tmp_path / "workers.log", "listening", count=2)
    try:
        assert len({line.rsplit("pid ", 1)[1] for line in lines}) == 2, lines

        async def main() -> None:
            clients = [await rw.connect(f"ws://127.0.0.1:{port}/") for _ in range(8)]
            sizes = []
            for conn in clients:
                await conn.send(json.dumps({"type": "join", "room": "lobby"}))
                sizes.append(json.loads((await conn.recv()).payload)["data"]["size"])
            assert sizes == list(range(1, 9))  # counted across both workers
            await clients[0].send(json.dumps({"type": "message", "room": "lobby",
                                              "data": "hi all"}))
            for conn in clients:
                event = json.loads((await conn.recv()).payload)["data"]
                assert (event["event"], event["data"]) == ("message", "hi all")
            for conn in clients:
                await conn.close()

        run_async(main())
        assert stop_process(proc, 15) == 0  # SIGTERM: both workers leave cleanly

        async def leftovers() -> list[bytes]:
            client = aioredis.Redis.from_url(redis_server.url)
            try:
                return [k async for k in client.scan_iter(f"{prefix}:*")]
            finally:
                await client.aclose()

        assert run_async(leftovers()) == []
    finally:
        stop_process(proc, 0)


@pytest.mark.redis
def test_worker_loop_first_then_connections(run: Runner[None], redis_server: RedisServer,
                                            prefix: str) -> None:
    """Issue 10 item 4 with Redis: the backend starts on the worker's loop (its
    first caller), moves to the connections' loop at the first join, and the
    worker's 200 broadcasts arrive promptly; remote delivery works after the move."""
    from tests.fixtures import Recorder
    from tests.peer_clients import KINDS, connected
    from tests.rooms.loops import broadcast_from_worker, worker_loop

    async def main() -> None:
        rooms = RoomManager(backend=RedisBackend(redis_server.url, prefix=prefix))
        other = RoomManager(backend=RedisBackend(redis_server.url, prefix=prefix))
        async with worker_loop() as worker:
            assert await worker.call(rooms.room_size("feed")) == 0
            assert await worker.call(rooms.broadcast("feed", "nobody")) == rw.BroadcastResult()
            handler = Recorder()
            async with running_server(handler) as server, \
                    connected(server, handler, KINDS) as pairs:
                for _client, conn in pairs:
                    assert await rooms.join("feed", conn) is True
                assert await other.room_size("feed") == 2
                await broadcast_from_worker(worker, rooms, "feed", [c for c, _ in pairs])
                await other.broadcast("feed", "remote")
                for client, _conn in pairs:
                    assert await client.recv() == "remote"
                stats = rooms.backend.stats()  # type: ignore[attr-defined]
                assert stats["connected"] == 1 and stats["rooms"] == 1
            await rooms.close()
            await other.close()

    run(main())
