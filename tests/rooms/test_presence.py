"""Presence: who is in a room, with each member's info; in memory, across two
Redis backends, and expiring when a server process is SIGKILLed; join and leave
events."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

import reinhardt_ws as rw
from reinhardt_ws.rooms import RoomManager
from reinhardt_ws.rooms.redis import RedisBackend

from ..fixtures import Recorder, running_server, url_of
from ..peer_clients import KINDS, connected
from ..redis_app import RoomsApp
from ..redis_fixtures import AppClient, RedisServer
from . import test_redis as shared
from .test_redis import app_processes, poll, run_async

Run = Callable[[Coroutine[Any, Any, Any]], Any]

redis_server = shared.redis_server
prefix = shared.prefix


def test_presence_in_memory_and_events(run: Run) -> None:
    async def main() -> None:
        events: list[tuple[str, str, str, dict[str, Any]]] = []

        def announce(room: str, kind: str, conn_id: str, info: dict[str, Any]) -> str:
            events.append((room, kind, conn_id, info))
            return json.dumps({"presence": kind, "id": conn_id, "info": info})

        rooms = rw.RoomManager(presence_event=announce)
        handler = Recorder()
        async with running_server(handler) as server, \
                connected(server, handler, KINDS) as pairs:
            (ca, a), (cb, b) = pairs
            a.user = {"name": "ann"}  # what an authenticate hook would set
            assert await rooms.join("r", a) is True
            assert await rooms.join("r", b, info={"name": "bob"}) is True
            assert await rooms.presence("r") == {a.id: {"name": "ann"}, b.id: {"name": "bob"}}
            assert await rooms.presence("empty") == {}
            # a is told b joined; b (the joiner) is not told about itself
            assert json.loads(await ca.recv()) == {"presence": "join", "id": b.id,
                                                   "info": {"name": "bob"}}
            assert await rooms.leave("r", b) is True
            assert json.loads(await ca.recv())["presence"] == "leave"
            assert await rooms.presence("r") == {a.id: {"name": "ann"}}
            await rooms.join("r", b, info={"name": "bob"})
            assert json.loads(await ca.recv())["presence"] == "join"
            await cb.close()  # closing leaves every room: a leave event too
            assert json.loads(await ca.recv()) == {"presence": "leave", "id": b.id,
                                                   "info": {"name": "bob"}}
            assert await rooms.presence("r") == {a.id: {"name": "ann"}}
            assert [e[1] for e in events] == ["join", "join", "leave", "join", "leave"]
        off = rw.RoomManager()
        with pytest.raises(ValueError, match="presence is off"):
            await off.presence("r")
        await rooms.close()

    run(main())


@pytest.mark.redis
def test_presence_across_backends(run: Run, redis_server: RedisServer, prefix: str) -> None:
    async def main() -> None:
        managers = [RoomManager(backend=RedisBackend(redis_server.url, prefix=prefix),
                                presence=True) for _ in range(2)]
        try:
            async with running_server(RoomsApp(managers[0])) as s1, \
                    running_server(RoomsApp(managers[1])) as s2:
                a, b = await AppClient.open(url_of(s1)), await AppClient.open(url_of(s2))
                await a.call("join", room="r", info={"name": "ann"})
                await b.call("join", room="r", info={"name": "bob"})
                await b.call("join", room="b-only")
                want = {a.id: {"name": "ann"}, b.id: {"name": "bob"}}
                assert (await a.call("presence", room="r"))["presence"] == want
                assert (await b.call("presence", room="r"))["presence"] == want
                assert (await a.call("presence", room="b-only"))["presence"] == {b.id: {}}
                await b.call("leave", room="r")
                assert (await a.call("presence", room="r"))["presence"] == \
                    {a.id: {"name": "ann"}}
                await a.close()
                await poll(lambda: b.call("presence", room="r"),
                           lambda r: r["presence"] == {})
                await b.close()
        finally:
            for manager in managers:
                await manager.close()

    run(main())


@pytest.mark.redis
def test_presence_of_a_killed_process_expires(redis_server: RedisServer, prefix: str,
                                              implementation: str, tmp_path: Path) -> None:
    ttl = 1.0
    with app_processes(redis_server.url, prefix, implementation, tmp_path, ttl=ttl,
                       presence=True) as (p1, p2):
        async def main() -> None:
            a = await AppClient.open(p1.url)
            b = await AppClient.open(p2.url)
            await a.call("join", room="r", info={"name": "ann"})
            await b.call("join", room="r", info={"name": "bob"})
            await asyncio.sleep(2 * ttl)  # the heartbeat keeps live members in
            assert set((await a.call("presence", room="r"))["presence"]) == {a.id, b.id}
            p2.kill()
            killed = time.monotonic()
            await poll(lambda: a.call("presence", room="r"),
                       lambda r: r["presence"] == {a.id: {"name": "ann"}},
                       timeout=ttl + 3, interval=0.05)
            assert time.monotonic() - killed <= ttl + 0.5
            await a.close()

        run_async(main())
