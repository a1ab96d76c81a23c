"""A worker thread with its own long-running event loop, and what such a worker
does with a RoomManager: the harness of the loop-binding tests."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import TypeVar

import reinhardt_ws as rw
from tests.peer_clients import PeerClient

__all__ = ["MESSAGES", "WorkerLoop", "broadcast_from_worker", "worker_loop"]

T = TypeVar("T")

#: Broadcasts the worker makes (issue 10, item 4).
MESSAGES = 200


class WorkerLoop:
    """A worker thread running its own long-lived event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="worker-loop")
        self.thread.start()

    async def call(self, coro: Awaitable[T], timeout: float = 20.0) -> T:
        """Run *coro* on the worker's loop; await it from the caller's loop."""

        async def on_worker() -> T:
            assert threading.current_thread() is self.thread
            return await coro

        future = asyncio.run_coroutine_threadsafe(on_worker(), self.loop)
        return await asyncio.wait_for(asyncio.wrap_future(future), timeout)

    async def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        await asyncio.get_running_loop().run_in_executor(None, self.thread.join, 10)
        self.loop.close()


async def worker_broadcasts(rooms: rw.RoomManager, room: str, count: int
                            ) -> list[rw.BroadcastResult]:
    """What the issue's worker does: broadcasts from its own thread's loop, one
    every few milliseconds, while the server's loop has nothing else to do."""
    results = []
    for i in range(count):
        results.append(await rooms.broadcast(room, f"n{i}"))
        await asyncio.sleep(0.002)
    return results



@contextlib.asynccontextmanager
async def worker_loop() -> AsyncIterator[WorkerLoop]:
    """A :class:`WorkerLoop`, stopped afterwards."""
    worker = WorkerLoop()
    try:
        yield worker
    finally:
        await worker.stop()


async def broadcast_from_worker(worker: WorkerLoop, rooms: rw.RoomManager, room: str,
                                clients: Sequence[PeerClient]) -> None:
    """The scenario of issue 10 item 4: *worker* broadcasts :data:`MESSAGES` to
    *room*, whose members are *clients*; each receives all of them, in order,
    promptly.  The worker's job is not awaited through this loop until the end,
    so nothing but the broadcasts themselves may wake the server's loop."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    job = asyncio.run_coroutine_threadsafe(worker_broadcasts(rooms, room, MESSAGES),
                                           worker.loop)
    for client in clients:
        assert await client.recv_many(MESSAGES, timeout=30) == [
            f"n{i}" for i in range(MESSAGES)]
    # Generous; the stall this guards against delivered the first message only
    # when a receive timeout happened to wake the loop.
    assert loop.time() - started < 8.0
    results = await asyncio.wrap_future(job)
    assert results == [rw.BroadcastResult(len(clients), 0, ())] * MESSAGES
