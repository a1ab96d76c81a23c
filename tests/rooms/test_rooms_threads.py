"""RoomManager calls from other threads are carried onto the loop that owns it:
from a plain thread running ``asyncio.run(...)``, and from a thread with its own
long-lived loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import reinhardt_ws as rw

from ..fixtures import Recorder, running_server
from ..peer_clients import KINDS, connected

Run = Callable[[Coroutine[Any, Any, Any]], Any]
T = TypeVar("T")


async def in_thread(fn: Callable[[], T], timeout: float = 20.0) -> T:
    """Run *fn* in a new plain thread; await its result from this loop."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def target() -> None:
        try:
            result = fn()
        except BaseException as exc:
            loop.call_soon_threadsafe(done.set_exception, exc)
        else:
            loop.call_soon_threadsafe(done.set_result, result)

    thread = threading.Thread(target=target, name="rooms-caller")
    thread.start()
    try:
        return await asyncio.wait_for(done, timeout)
    finally:
        await asyncio.get_running_loop().run_in_executor(None, thread.join, timeout)


class LoopThread:
    """A thread running its own event loop until stopped."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="own-loop")
        self.thread.start()

    async def call(self, coro: Awaitable[T]) -> T:
        """Run *coro* on the thread's loop; await it from the caller's loop."""

        async def wrapper() -> T:
            assert threading.current_thread() is self.thread
            return await coro

        future = asyncio.run_coroutine_threadsafe(wrapper(), self.loop)
        return await asyncio.wait_for(asyncio.wrap_future(future), 20)

    async def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        await asyncio.get_running_loop().run_in_executor(None, self.thread.join, 10)
        self.loop.close()


def test_plain_thread_running_asyncio_run(run: Run) -> None:
    async def main() -> None:
        rooms = rw.RoomManager()
        handler = Recorder()
        async with running_server(handler) as server, \
                connected(server, handler, KINDS * 2) as pairs:
            clients = [client for client, _ in pairs]
            a, b, c, d = (conn for _, conn in pairs)
            await rooms.join("main", a)  # the server's loop owns the manager now

            def from_thread() -> list[Any]:
                async def calls() -> list[Any]:
                    return [
                        await rooms.join("main", b),
                        await rooms.join("main", b),
                        await rooms.join("side", c),
                        await rooms.join("side", d),
                        await rooms.broadcast("main", "to main"),
                        await rooms.broadcast("side", b"to side", exclude=c),
                        await rooms.broadcast_all("to all", exclude=[a, d.id]),
                        await rooms.send_to(a.id, "to a"),
                        await rooms.room_size("main"),
                        await rooms.list_rooms(),
                        sorted(m.id for m in await rooms.members("side")),
                        await rooms.rooms_of(b),
                        await rooms.leave("side", d),
                        await rooms.leave("side", d),
                    ]

                return asyncio.run(calls())

            got = await in_thread(from_thread)
            assert got == [
                True, False, True, True,
                rw.BroadcastResult(2, 0, ()),
                rw.BroadcastResult(1, 0, ()),
                rw.BroadcastResult(2, 0, ()),
                True, 2, ["main", "side"], sorted([c.id, d.id]), {"main"}, True, False,
            ]
            # One-shot calls, each its own asyncio.run.
            assert await in_thread(lambda: asyncio.run(rooms.broadcast("main", "again"))) \
                == rw.BroadcastResult(2, 0, ())
            assert await in_thread(lambda: asyncio.run(rooms.room_size("side"))) == 1
            assert await rooms.list_rooms() == ["main", "side"]
            assert await clients[0].recv_many(3) == ["to main", "to a", "again"]
            assert await clients[1].recv_many(3) == ["to main", "to all", "again"]
            assert await clients[2].recv() == "to all"
            assert await clients[3].recv() == b"to side"
            # The manager still belongs to the server's loop: local calls stay local.
            assert await rooms.broadcast("side", "local") == rw.BroadcastResult(1, 0, ())
            assert await clients[2].recv() == "local"

    run(main())


def test_thread_with_its_own_loop(run: Run) -> None:
    async def main() -> None:
        rooms = rw.RoomManager()
        handler = Recorder()
        worker = LoopThread()
        try:
            async with running_server(handler) as server, \
                    connected(server, handler, KINDS) as pairs:
                (ca, a), (cb, b) = pairs
                assert await rooms.join("r", a) is True
                assert await worker.call(rooms.join("r", b)) is True
                assert await worker.call(rooms.join("r", b)) is False
                for i in range(20):
                    result = await worker.call(rooms.broadcast("r", f"w{i}"))
                    assert result == rw.BroadcastResult(2, 0, ())
                    await rooms.broadcast("r", f"m{i}", exclude=b)
                assert await worker.call(rooms.room_size("r")) == 2
                assert await worker.call(rooms.rooms_of(a)) == {"r"}
                expected_a = [x for i in range(20) for x in (f"w{i}", f"m{i}")]
                assert await ca.recv_many(40) == expected_a
                assert await cb.recv_many(20) == [f"w{i}" for i in range(20)]
                assert await worker.call(rooms.leave("r", b)) is True
                assert [m.id for m in await worker.call(rooms.members("r"))] == [a.id]
                await worker.call(rooms.close())
        finally:
            await worker.stop()

    run(main())


def test_many_threads_broadcasting_at_once(run: Run) -> None:
    """Concurrent broadcasts from several threads: each client gets every message
    exactly once, and each thread's messages in the order it sent them."""
    threads, per_thread = 4, 40

    async def main() -> None:
        rooms = rw.RoomManager()
        handler = Recorder()
        async with running_server(handler) as server, \
                connected(server, handler, KINDS) as pairs:
            for _, conn in pairs:
                await rooms.join("r", conn)
            start = threading.Barrier(threads)

            def sender(t: int) -> list[rw.BroadcastResult]:
                async def send_all() -> list[rw.BroadcastResult]:
                    start.wait(10)
                    return [await rooms.broadcast("r", f"{t}:{i}") for i in range(per_thread)]

                return asyncio.run(send_all())

            results = await asyncio.gather(
                *(in_thread(lambda t=t: sender(t)) for t in range(threads)))
            assert all(r == rw.BroadcastResult(2, 0, ()) for rs in results for r in rs)
            for client, _ in pairs:
                got = await client.recv_many(threads * per_thread)
                assert sorted(got) == sorted(f"{t}:{i}" for t in range(threads)
                                             for i in range(per_thread))
                for t in range(threads):
                    mine = [m for m in got if isinstance(m, str) and m.startswith(f"{t}:")]
                    assert mine == [f"{t}:{i}" for i in range(per_thread)]

    run(main())
