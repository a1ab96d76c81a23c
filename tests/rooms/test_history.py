"""Room history and recovery with the in-memory store, over real servers and real
clients (python-websockets): positions, reads, recovering joins that race
broadcasts, trimmed history and epochs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

import reinhardt_ws as rw
from reinhardt_ws.rooms import HistoryPolicy, JoinResult, Position

from ..fixtures import Recorder, running_server, url_of
from ..peer_clients import WebsocketsClient

Run = Callable[[Coroutine[Any, Any, Any]], Any]


class HistoryApp(Recorder):
    """``{"join": room, "since": [epoch, offset] | null, "recent": n}`` joins
    (recovering when asked) and replies ``{"joined": ..., "recovered": ...,
    "position": [epoch, offset]}``."""

    def __init__(self, rooms: rw.RoomManager) -> None:
        super().__init__()
        self.rooms = rooms

    async def on_message(self, conn: rw.WebSocketConnection, message: rw.Message) -> None:
        request = json.loads(message.payload)
        since = request.get("since")
        result = await self.rooms.join(
            request["join"], conn, recover=Position(*since) if since else None,
            recent=request.get("recent", 0))
        if isinstance(result, JoinResult):
            await conn.send(json.dumps({
                "joined": result.joined, "recovered": result.recovered,
                "position": list(result.position) if result.position else None}))
        else:
            await conn.send(json.dumps({"joined": result}))


async def join(client: WebsocketsClient, room: str, **args: Any) -> dict[str, Any]:
    """Join and return the reply; publications that arrive before it are an error."""
    await client.send(json.dumps({"join": room, **args}))
    reply: dict[str, Any] = json.loads(await client.recv())
    assert "seq" not in reply, reply
    return reply


async def take(client: WebsocketsClient, last: int) -> tuple[list[int], list[dict[str, Any]]]:
    """Sequence numbers up to *last* (included), and the replies seen meanwhile."""
    seqs: list[int] = []
    replies: list[dict[str, Any]] = []
    while not seqs or seqs[-1] < last:
        obj = json.loads(await client.recv())
        if "seq" in obj:
            seqs.append(obj["seq"])
        else:
            replies.append(obj)
    return seqs, replies


async def blast(rooms: rw.RoomManager, room: str, first: int, last: int
                ) -> list[Position | None]:
    positions = []
    for seq in range(first, last + 1):
        positions.append((await rooms.broadcast(room, json.dumps({"seq": seq}))).position)
        if seq % 50 == 0:
            await asyncio.sleep(0)
    return positions


def test_killed_socket_recovers_exactly_what_it_missed(run: Run) -> None:
    """1000 broadcasts while the client's socket is dead, 200 more racing its
    recovering join: it gets all of them, in order, once each."""
    async def main() -> None:
        rooms = rw.RoomManager(history=HistoryPolicy(size=2000, ttl=60, max_recovery=2000))
        handler = HistoryApp(rooms)
        async with running_server(handler) as server:
            client = await WebsocketsClient.open(url_of(server))
            reply = await join(client, "feed", since=None, recent=0)
            assert reply == {"joined": True}
            first = await blast(rooms, "feed", 1, 100)
            seqs, _ = await take(client, 100)
            assert seqs == list(range(1, 101))
            assert first[-1] is not None
            epoch, seen = first[-1]
            assert [p.offset for p in first if p] == list(range(1, 101))

            await client.abort()  # no closing handshake: the server finds out later
            await asyncio.wait_for(handler.disconnected.get(), 10)
            await blast(rooms, "feed", 101, 1100)

            again = await WebsocketsClient.open(url_of(server))
            racing = asyncio.create_task(blast(rooms, "feed", 1101, 1300))
            await again.send(json.dumps({"join": "feed", "since": [epoch, seen]}))
            seqs, replies = await take(again, 1300)
            await racing
            assert seqs == list(range(101, 1301))
            assert len(replies) == 1 and replies[0]["recovered"] is True
            assert replies[0]["joined"] is True
            assert replies[0]["position"][0] == epoch
            # nothing more (no duplicate of the tail) arrives
            await rooms.broadcast("feed", json.dumps({"seq": 1301}))
            assert json.loads(await again.recv()) == {"seq": 1301}
            await again.close()
        await rooms.close()

    run(main())


def test_recovery_past_trimmed_history_or_another_epoch_is_refused(run: Run) -> None:
    async def main() -> None:
        rooms = rw.RoomManager(history=HistoryPolicy(size=10, ttl=60, max_recovery=5))
        handler = HistoryApp(rooms)
        async with running_server(handler) as server:
            await blast(rooms, "r", 1, 20)
            epoch = (await rooms.history("r")).position.epoch
            client = await WebsocketsClient.open(url_of(server))
            # Offset 5 was trimmed (the ring keeps 11..20): nothing replayed.
            reply = await join(client, "r", since=[epoch, 5])
            assert reply == {"joined": True, "recovered": False, "position": [epoch, 20]}
            await rooms.leave("r", await handler.connected.get())
            # Another epoch (a restarted server's): refused.
            reply = await join(client, "r", since=["deadbeef", 20])
            assert reply == {"joined": True, "recovered": False, "position": [epoch, 20]}
            conn = (await rooms.members("r"))[0]
            await rooms.leave("r", conn)
            # Within the ring but more than max_recovery (5) missing: refused.
            reply = await join(client, "r", since=[epoch, 12])
            assert reply["recovered"] is False
            await rooms.leave("r", conn)
            # Exactly max_recovery missing: replayed, then the reply.
            await client.send(json.dumps({"join": "r", "since": [epoch, 15]}))
            got = [json.loads(await client.recv()) for _ in range(6)]
            assert [g["seq"] for g in got[:5]] == [16, 17, 18, 19, 20]
            assert got[5] == {"joined": True, "recovered": True, "position": [epoch, 20]}
            # Live delivery follows the refusal and the replay alike.
            await rooms.broadcast("r", json.dumps({"seq": 21}))
            assert json.loads(await client.recv()) == {"seq": 21}
            # Up to date: recovered, nothing replayed.
            await rooms.leave("r", conn)
            reply = await join(client, "r", since=[epoch, 21])
            assert reply == {"joined": True, "recovered": True, "position": [epoch, 21]}
            # Already a member: nothing replayed, not recovered.
            reply = await join(client, "r", since=[epoch, 18])
            assert reply == {"joined": False, "recovered": False, "position": None}
            await client.close()
        await rooms.close()

    run(main())


def test_recent_replays_the_last_publications(run: Run) -> None:
    async def main() -> None:
        rooms = rw.RoomManager(history=HistoryPolicy(size=50, ttl=60, rooms="chat:*"))
        handler = HistoryApp(rooms)
        async with running_server(handler) as server:
            await blast(rooms, "chat:a", 1, 30)
            client = await WebsocketsClient.open(url_of(server))
            await client.send(json.dumps({"join": "chat:a", "recent": 3}))
            got = [json.loads(await client.recv()) for _ in range(4)]
            assert [g["seq"] for g in got[:3]] == [28, 29, 30]
            assert got[3]["recovered"] is True and got[3]["position"][1] == 30
            # A room outside the pattern keeps nothing: recovered False, no position.
            assert (await rooms.broadcast("other", "x")).position is None
            reply = await join(client, "other", recent=3)
            assert reply == {"joined": True, "recovered": False, "position": None}
            await client.close()
        await rooms.close()

    run(main())


def test_history_reads_and_positions(run: Run) -> None:
    async def main() -> None:
        rooms = rw.RoomManager(history=HistoryPolicy(size=5, ttl=60, rooms=("a", "b*")))
        results = [await rooms.broadcast("a", f"m{i}") for i in range(1, 8)]
        positions = [r.position for r in results]
        assert all(p is not None for p in positions)
        epoch = positions[0].epoch if positions[0] else ""
        assert positions == [Position(epoch, i) for i in range(1, 8)]
        assert (await rooms.broadcast("b1", "x")).position == Position(epoch, 1)
        read = await rooms.history("a")
        assert read.complete and read.position == Position(epoch, 7)
        assert [p.offset for p in read.publications] == [3, 4, 5, 6, 7]
        # What is stored is the frame the fan-out sent: an unmasked text frame.
        assert read.publications[0].frame == b"\x81\x02m3"
        assert [p.offset for p in (await rooms.history("a", limit=2)).publications] == [6, 7]
        since = await rooms.history("a", since=Position(epoch, 4))
        assert since.complete and [p.offset for p in since.publications] == [5, 6, 7]
        assert not (await rooms.history("a", since=Position(epoch, 1))).complete
        assert not (await rooms.history("a", since=(epoch, 9))).complete  # from the future
        assert not (await rooms.history("a", since=Position("other", 4))).complete
        assert not (await rooms.history("a", since=(epoch, 2), limit=3)).complete
        empty = await rooms.history("bee")
        assert empty.publications == () and empty.position == Position(epoch, 0)
        with pytest.raises(ValueError, match="no history"):
            await rooms.history("c")
        with pytest.raises(ValueError):
            await rooms.history("a", limit=-1)
        with pytest.raises(ValueError, match="negative"):
            await rooms.history("a", since=(epoch, -1))
        # broadcast_all never keeps history
        assert (await rooms.broadcast_all("all")).position is None
        # Another manager (a restarted process) has another epoch.
        other = rw.RoomManager(history=HistoryPolicy(size=5, ttl=60))
        assert (await other.broadcast("a", "x")).position != Position(epoch, 1)
        await rooms.close()
        await other.close()

    run(main())


def test_history_expires_with_its_ttl(run: Run) -> None:
    async def main() -> None:
        rooms = rw.RoomManager(history=HistoryPolicy(size=5, ttl=0.2))
        await rooms.broadcast("a", "old")
        await asyncio.sleep(0.3)
        position = (await rooms.broadcast("a", "new")).position
        assert position is not None and position.offset == 2  # the offset survives
        read = await rooms.history("a")
        assert [p.frame for p in read.publications] == [b"\x81\x03new"]
        assert not (await rooms.history("a", since=(position.epoch, 0))).complete
        assert (await rooms.history("a", since=(position.epoch, 1))).complete
        await rooms.close()

    run(main())


@pytest.mark.pure
def test_policy_is_checked() -> None:
    for bad in ({"size": 0, "ttl": 1}, {"size": 1, "ttl": 0}, {"size": True, "ttl": 1},
                {"size": 1, "ttl": 1, "rooms": ()}, {"size": 1, "ttl": 1, "rooms": ""},
                {"size": 1, "ttl": 1, "max_recovery": 0},
                {"size": 1, "ttl": 10, "meta_ttl": 1}):
        with pytest.raises(ValueError):
            HistoryPolicy(**bad)  # type: ignore[arg-type]
    policy = HistoryPolicy(size=3, ttl=1, rooms=["chat:*", "news"])  # type: ignore[arg-type]
    assert policy.applies("chat:x") and policy.applies("news") and not policy.applies("new")
    assert not policy.applies(None)
    with pytest.raises(TypeError):
        rw.RoomManager(history={"size": 1})  # type: ignore[arg-type]
    assert bool(JoinResult(True, False, None)) and not JoinResult(False, True, None)


def positioned_text(seq: int) -> str:
    from reinhardt_ws.rooms.history import EPOCH_MARK, OFFSET_MARK

    return f'{{"offset":{OFFSET_MARK},"epoch":"{EPOCH_MARK}","seq":{seq}}}'


def test_positioned_broadcasts_carry_their_position(run: Run) -> None:
    async def main() -> None:
        rooms = rw.RoomManager(history=HistoryPolicy(size=10, ttl=60, rooms="h"))
        handler = HistoryApp(rooms)
        async with running_server(handler) as server:
            client = await WebsocketsClient.open(url_of(server))
            await join(client, "h")
            results = [await rooms.broadcast("h", positioned_text(i), positioned=True)
                       for i in (1, 2)]
            got = [json.loads(await client.recv()) for _ in range(2)]
            assert [(g["offset"], g["epoch"], g["seq"]) for g in got] == \
                [(r.position.offset, r.position.epoch, i)  # type: ignore[union-attr]
                 for r, i in zip(results, (1, 2), strict=True)]
            stored = (await rooms.history("h")).publications
            assert [json.loads(p.frame[2:])["offset"] for p in stored] == [1, 2]
            # a room without history: no position (0, "00000000")
            await join(client, "plain")
            await rooms.broadcast("plain", positioned_text(3), positioned=True)
            assert json.loads(await client.recv()) == {"offset": 0, "epoch": "00000000",
                                                       "seq": 3}
            with pytest.raises(ValueError, match="OFFSET_MARK"):
                await rooms.broadcast("h", '{"no": "marks"}', positioned=True)
            await client.close()
        await rooms.close()

    run(main())
