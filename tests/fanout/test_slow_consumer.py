"""Slow consumers over real connections: a client that stops reading, under both
policies, while healthy clients receive everything and the server's memory for
the slow one stays within ``max_write_buffer`` (plus one frame)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import orjson
import pytest

import reinhardt_ws as rw

from ..fixtures import Recorder, eventually, running_server
from ..peer_clients import (
    PeerClient,
    PeerClosed,
    WebsocketsClient,
    connect_small_window,
    connected,
)

Run = Callable[[Coroutine[Any, Any, Any]], Any]

LIMIT = 128 * 1024
SIZE = 4096
HEALTHY = ("websockets", "aiohttp")


#: Incompressible, so that every message costs SIZE bytes on the wire even when
#: permessage-deflate is negotiated (it goes uncompressed when it does not shrink).
NOISE = random.Random(12).randbytes(SIZE - 4)


def message(seq: int) -> bytes:
    return seq.to_bytes(4, "big") + NOISE


def seq_of(data: str | bytes) -> int:
    assert isinstance(data, bytes) and len(data) == SIZE and data[4:] == NOISE
    return int.from_bytes(data[:4], "big")


class Collector:
    """Reads a client continuously, as a healthy consumer does."""

    def __init__(self, client: PeerClient) -> None:
        self.client = client
        self.received: list[int] = []
        self.closed_code: int | None = None
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        try:
            while True:
                self.received.append(seq_of(await self.client.recv(30)))
        except PeerClosed as closed:
            self.closed_code = closed.code

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


class Flood:
    """Broadcasts numbered messages to a room, paced by the healthy readers, and
    records the results and the slow member's buffered bytes."""

    def __init__(self, rooms: rw.RoomManager, healthy: list[Collector],
                 slow: rw.WebSocketConnection) -> None:
        self.rooms = rooms
        self.healthy = healthy
        self.slow = slow
        # Held here: a closed connection lets go of its peer (no reference cycles).
        self.slow_peer = slow._peer
        assert self.slow_peer is not None
        self.seq = 0
        self.results: list[rw.BroadcastResult] = []
        self.worst = 0

    def slow_buffered(self) -> int:
        return int(self.slow_peer.buffered_size())

    async def send(self, count: int, burst: int = 1) -> None:
        """*count* broadcasts, *burst* of them per event-loop iteration."""
        for start in range(0, count, burst):
            # Pace on the healthy readers, so only the slow one falls behind.
            lag = self.seq - (16 if burst == 1 else 0)
            await eventually(lambda lag=lag: all(len(h.received) >= lag for h in self.healthy),
                             10)
            for _ in range(min(burst, count - start)):
                self.results.append(await self.rooms.broadcast("room", message(self.seq)))
                self.seq += 1
                self.worst = max(self.worst, self.slow_buffered())
            await asyncio.sleep(0)  # the flush
            self.worst = max(self.worst, self.slow_buffered())

    async def until_dropped(self, limit: int = 20_000) -> int:
        """Broadcast, in bursts of varied sizes, until one is dropped for the slow
        member; its sequence number."""
        bursts = [1, 3, 8, 24, 2, 16, 5, 20]
        n = 0
        while self.seq < limit:
            first = self.seq
            await self.send(bursts[n % len(bursts)], bursts[n % len(bursts)])
            n += 1
            for seq in range(first, self.seq):
                if self.results[seq].dropped:
                    return seq
        raise AssertionError("the slow consumer never went over its limit")

    async def healthy_got_everything(self) -> None:
        want = list(range(self.seq))
        await eventually(lambda: all(len(h.received) >= self.seq for h in self.healthy), 10)
        for collector in self.healthy:
            assert collector.received == want


@dataclasses.dataclass
class Scene:
    """A room of healthy clients and one client that does not read."""

    rooms: rw.RoomManager
    handler: Recorder
    slow_client: WebsocketsClient
    slow: rw.WebSocketConnection
    pairs: list[tuple[PeerClient, rw.WebSocketConnection]]
    healthy: list[Collector]
    flood: Flood


@contextlib.asynccontextmanager
async def slow_room(policy: str, close_timeout: float = 5.0,
                    abort: bool = False, flush_interval: float | None = None
                    ) -> AsyncIterator[Scene]:
    """Serve with *policy*; join the slow client and the healthy ones to "room"
    (a manager with *flush_interval*: its broadcasts are held up to that long).
    On exit the slow client is closed (or aborted: one that never reads would
    wait in vain for a close frame)."""
    rooms = rw.RoomManager(flush_interval=flush_interval)
    handler = Recorder()
    async with running_server(handler, max_write_buffer=LIMIT, slow_consumer=policy,
                              close_timeout=close_timeout) as server, \
            connected(server, handler, HEALTHY) as pairs:
        slow_client: WebsocketsClient = await connect_small_window(server)
        try:
            slow = await handler.connected.get()
            for conn in [slow] + [conn for _, conn in pairs]:
                await rooms.join("room", conn)
            healthy = [Collector(client) for client, _ in pairs]
            yield Scene(rooms, handler, slow_client, slow, list(pairs), healthy,
                        Flood(rooms, healthy, slow))
        finally:
            if abort:
                await slow_client.abort()
            else:
                await slow_client.close()


#: The policies hold with broadcasts held by a flush interval too.
FLUSH_INTERVALS = pytest.mark.parametrize("flush_interval", [None, 0.002],
                                          ids=["no-interval", "interval"])


@FLUSH_INTERVALS
def test_drop_policy_skips_the_slow_member_then_resumes(run: Run,
                                                        flush_interval: float | None) -> None:
    async def main() -> None:
        async with slow_room("drop", flush_interval=flush_interval) as scene:
            rooms = scene.rooms
            slow_client = scene.slow_client
            slow = scene.slow
            healthy = scene.healthy
            flood = scene.flood
            await flood.until_dropped()
            await flood.send(200)  # well past the limit: dropped, not queued
            assert flood.results[-1] == rw.BroadcastResult(2, 1, ())
            assert all(r.delivered + r.dropped == 3 and not r.failed for r in flood.results)
            assert flood.worst <= LIMIT + SIZE + 16
            assert not slow.is_closed
            assert await rooms.room_size("room") == 3
            await flood.healthy_got_everything()

            # The slow client reads again: it drains, then receives again.
            reader = Collector(slow_client)
            await eventually(lambda: flood.slow_buffered() == 0, 10)
            resumed_from = flood.seq
            await flood.send(50)
            assert all(r == rw.BroadcastResult(3, 0, ())
                       for r in flood.results[resumed_from:])
            await eventually(lambda: reader.received[-1:] == [flood.seq - 1], 10)
            got = reader.received
            assert got == sorted(set(got))  # in order, each once, whole messages
            assert got[-50:] == list(range(resumed_from, flood.seq))
            missing = set(range(flood.seq)) - set(got)
            dropped = {i for i, r in enumerate(flood.results) if r.dropped}
            assert missing == dropped
            await flood.healthy_got_everything()
            for collector in [*healthy, reader]:
                await collector.stop()

    run(main())


@FLUSH_INTERVALS
def test_close_policy_closes_the_slow_member_with_1013(run: Run,
                                                       flush_interval: float | None) -> None:
    """The slow client, once it reads again, gets everything queued before the
    overflow and then close 1013; the healthy ones get everything."""

    async def main() -> None:
        async with slow_room("close", close_timeout=10,
                             flush_interval=flush_interval) as scene:
            rooms = scene.rooms
            handler = scene.handler
            slow_client = scene.slow_client
            slow = scene.slow
            healthy = scene.healthy
            flood = scene.flood
            first_drop = await flood.until_dropped()
            assert flood.worst <= LIMIT + SIZE + 16
            await eventually(lambda: slow.is_closed)
            await flood.send(30)
            # The next broadcast reports it failed, once, and it leaves the room.
            assert flood.results[first_drop] == rw.BroadcastResult(2, 1, ())
            assert flood.results[first_drop + 1] == rw.BroadcastResult(2, 0, (slow.id,))
            assert all(r == rw.BroadcastResult(2, 0, ())
                       for r in flood.results[first_drop + 2:])
            assert await rooms.room_size("room") == 2

            reader = Collector(slow_client)  # well-behaved: it reads again
            await asyncio.wait_for(reader.task, 15)
            assert reader.closed_code == 1013
            got = reader.received
            assert got == list(range(len(got)))  # a prefix, in order
            assert len(got) <= first_drop
            disconnected = await asyncio.wait_for(handler.disconnected.get(), 10)
            assert disconnected is slow
            assert slow.close_code == 1013
            await flood.healthy_got_everything()
            for collector in healthy:
                await collector.stop()
            assert rooms.stats()["connections"] == 2

    run(main())


def test_close_policy_aborts_a_client_that_never_reads(run: Run) -> None:
    async def main() -> None:
        async with slow_room("close", close_timeout=0.5, abort=True) as scene:
            rooms = scene.rooms
            handler = scene.handler
            slow = scene.slow
            pairs = scene.pairs
            healthy = scene.healthy
            flood = scene.flood
            await flood.until_dropped()
            assert flood.worst <= LIMIT + SIZE + 16
            # It never reads, so never answers the close: the server aborts it.
            disconnected = await asyncio.wait_for(handler.disconnected.get(), 10)
            assert disconnected is slow
            assert slow.close_code == 1013
            await eventually(lambda: rooms.stats()["connections"] == 2)
            assert [m.id for m in await rooms.members("room")] == [c.id for _, c in pairs]
            await flood.send(20)
            assert flood.results[-1] == rw.BroadcastResult(2, 0, ())
            await flood.healthy_got_everything()
            for collector in healthy:
                await collector.stop()

    run(main())


def test_a_burst_cannot_push_the_slow_member_past_its_limit(run: Run) -> None:
    """The case where the transport holds a little (under its high-water mark, so
    not paused) and a burst of broadcasts arrives within one iteration: the peer
    still takes no more than ``max_write_buffer``."""

    async def main() -> None:
        async with slow_room("drop") as scene:
            slow = scene.slow
            healthy = scene.healthy
            flood = scene.flood
            while flood.slow_buffered() == 0:  # until the kernel stops taking more
                await flood.send(1)
            await flood.send(4, burst=4)
            peer = slow._peer
            assert peer is not None
            assert SIZE < peer.buffered_size() < LIMIT // 4 and not peer.paused
            await flood.send(31, burst=31)
            assert flood.worst <= LIMIT + SIZE + 16
            assert flood.results[-1] == rw.BroadcastResult(2, 1, ())
            await flood.healthy_got_everything()
            for collector in healthy:
                await collector.stop()

    run(main())


def test_own_sends_wait_instead_of_queueing(run: Run) -> None:
    """A connection's own send() in a loop that never yields to the event loop
    still meets backpressure: it waits while the client does not read, what the
    server holds stays bounded, and nothing is lost or reordered."""
    count = 2000

    async def main() -> None:
        handler = Recorder()
        async with running_server(handler, max_write_buffer=LIMIT) as server:
            slow_client = await connect_small_window(server)
            try:
                conn = await handler.connected.get()
                peer = conn._peer
                assert peer is not None
                worst = 0
                sent = 0

                async def send_all() -> None:
                    nonlocal worst, sent
                    for seq in range(count):
                        await conn.send(message(seq))
                        sent += 1
                        worst = max(worst, peer.buffered_size())

                sender = asyncio.ensure_future(send_all())
                await eventually(lambda: peer.paused, 10)
                assert not sender.done() and sent < count
                high_water = LIMIT // 4  # what the server sets for this limit
                assert worst <= LIMIT + high_water + 2 * (SIZE + 16)
                reader = Collector(slow_client)
                await asyncio.wait_for(sender, 20)
                assert worst <= LIMIT + high_water + 2 * (SIZE + 16)
                await eventually(lambda: len(reader.received) == count, 20)
                assert reader.received == list(range(count))
                await reader.stop()
            finally:
                await slow_client.close()

    run(main())


def test_one_legal_message_larger_than_max_write_buffer_reaches_the_whole_room(
        run: Run) -> None:
    """Issue 10, item 2: a 1,048,474-byte message (under max_message_size) that the
    server re-encodes before broadcasting it, as the chat server does, so that the
    frame is larger than max_write_buffer, reaches every member whose buffer is
    empty: ten healthy members and the sender, none closed, under the close policy."""
    mib = 1024 * 1024
    size = 1_048_474

    class Relay(Recorder):
        def __init__(self, rooms: rw.RoomManager) -> None:
            super().__init__()
            self.rooms = rooms
            self.results: list[rw.BroadcastResult] = []

        async def on_message(self, conn: rw.WebSocketConnection, message: rw.Message) -> None:
            await super().on_message(conn, message)
            event = orjson.dumps({"type": "message", "from": conn.id, "text": message.data})
            self.results.append(await self.rooms.broadcast("room", event.decode()))

    async def main() -> None:
        rooms = rw.RoomManager()
        handler = Relay(rooms)
        kinds = [HEALTHY[i % 2] for i in range(11)]
        async with running_server(handler, max_write_buffer=mib, max_message_size=mib,
                                  slow_consumer="close") as server, \
                connected(server, handler, kinds) as pairs:
            for _, conn in pairs:
                await rooms.join("room", conn)
            sender, sender_conn = pairs[0]
            for round_ in range(2):
                # Quotes double when re-encoded: the broadcast outgrows the limit.
                text = chr(0x61 + round_) * (size - 2000) + '"' * 2000
                await sender.send(text)
                got = await asyncio.gather(*(client.recv(30) for client, _ in pairs))
                assert handler.results[round_] == rw.BroadcastResult(11, 0, ())
                for data in got:
                    assert isinstance(data, str) and len(data) > mib
                    assert orjson.loads(data) == {"type": "message", "from": sender_conn.id,
                                                  "text": text}
            assert not any(conn.is_closed for _, conn in pairs)
            assert await rooms.room_size("room") == 11

    run(main(), 90)
