"""Rooms over real servers and real clients (python-websockets and aiohttp):
membership, broadcasts, exclusion, ordering, failures and clean-up."""

from __future__ import annotations

import asyncio
import gc
import socket
import struct
import sys
import weakref
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
import pytest

import reinhardt_ws as rw

from ..fixtures import RawClient, Recorder, client_frame, eventually, running_server, url_of
from ..peer_clients import KINDS, PeerClient, PeerClosed, connected, open_client, reset

Run = Callable[[Coroutine[Any, Any, Any]], Any]

#: Created at import time, before any event loop exists.
MODULE_ROOMS = rw.RoomManager()

EMPTY = {"rooms": 0, "connections": 0, "memberships": 0, "room_limit_refusals": 0}


def ids(conns: list[rw.WebSocketConnection]) -> set[str]:
    return {c.id for c in conns}


# -- membership --------------------------------------------------------------------
def test_join_and_leave_report_changes_and_are_idempotent(run: Run) -> None:
    async def main() -> None:
        rooms = rw.RoomManager()
        handler = Recorder()
        async with running_server(handler) as server, \
                connected(server, handler, KINDS) as pairs:
            (_, a), (_, b) = pairs
            assert await rooms.join("lobby", a) is True
            assert await rooms.join("lobby", a) is False
            assert await rooms.join("lobby", b) is True
            assert await rooms.join("games", a) is True
            assert await rooms.room_size("lobby") == 2
            assert await rooms.room_size("games") == 1
            assert await rooms.room_size("nowhere") == 0
            assert await rooms.list_rooms() == ["games", "lobby"]
            assert ids(await rooms.members("lobby")) == {a.id, b.id}
            assert await rooms.members("nowhere") == []
            assert await rooms.rooms_of(a) == {"lobby", "games"}
            assert await rooms.rooms_of(b) == {"lobby"}
            assert rooms.stats() == {"rooms": 2, "connections": 2, "memberships": 3,
                                     "room_limit_refusals": 0}

            assert await rooms.leave("games", a) is True
            assert await rooms.leave("games", a) is False
            assert await rooms.leave("never", a) is False
            assert await rooms.list_rooms() == ["lobby"]  # the empty room is gone
            assert await rooms.room_size("games") == 0
            assert await rooms.rooms_of(a) == {"lobby"}
            assert await rooms.leave("lobby", a) is True
            assert await rooms.leave("lobby", b) is True
            assert await rooms.list_rooms() == []
            assert await rooms.rooms_of(a) == set()
            assert rooms.stats() == EMPTY
            # Joining again after leaving everything works as the first time.
            assert await rooms.join("lobby", b) is True
            assert ids(await rooms.members("lobby")) == {b.id}
            await rooms.close()

    run(main())


def test_only_open_server_connections_join(run: Run) -> None:
    async def main() -> None:
        rooms = rw.RoomManager()
        handler = Recorder()
        async with running_server(handler) as server:
            async with rw.connect(url_of(server)) as client_side:
                with pytest.raises(ValueError, match="server-side"):
                    await rooms.join("r", client_side)
                conn = await handler.connected.get()
            await handler.disconnected.get()
            assert conn.is_closed
            assert await rooms.join("r", conn) is False
            assert rooms.stats() == EMPTY

    run(main())


def test_module_level_manager_binds_to_the_first_loop_using_it(run: Run) -> None:
    """MODULE_ROOMS was created before any loop; each test run binds it afresh
    (the previous run's loop is closed by then)."""

    async def main() -> None:
        handler = Recorder()
        async with running_server(handler) as server, \
                connected(server, handler, KINDS) as pairs:
            for _client, conn in pairs:
                assert await MODULE_ROOMS.join("module", conn) is True
            result = await MODULE_ROOMS.broadcast("module", "from module level")
            assert result == rw.BroadcastResult(2, 0, ())
            for client, _conn in pairs:
                assert await client.recv() == "from module level"
        await eventually(lambda: MODULE_ROOMS.stats() == EMPTY)

    run(main())
    run(main())


# -- broadcasting ------------------------------------------------------------------
def test_broadcast_accepts_every_message_kind(run: Run) -> None:
    envelope = rw.WebSocketMessage.text({"k": [1, 2]}).with_timestamp(1_700_000_000)
    sent: list[Any] = [
        rw.Message.text("t\u00e9xt"), rw.Message.binary(b"\x00\x01"), "plain str",
        b"\xffbytes", bytearray(b"array"), memoryview(b"view"), envelope,
        rw.Message.json({"a": 1}), "",
    ]
    expected: list[str | bytes] = [
        "t\u00e9xt", b"\x00\x01", "plain str", b"\xffbytes", b"array", b"view",
        envelope.to_json().decode(), '{"a":1}', "",
    ]

    async def main() -> None:
        rooms = rw.RoomManager()
        handler = Recorder()
        async with running_server(handler) as server, \
                connected(server, handler, KINDS * 2) as pairs:
            for _client, conn in pairs:
                await rooms.join("all", conn)
            for message in sent:
                assert await rooms.broadcast("all", message) == rw.BroadcastResult(4, 0, ())
            for client, _conn in pairs:
                got = await client.recv_many(len(expected))
                assert got == expected
                assert orjson.loads(got[6]) == {"message_type": "text", "data": {"k": [1, 2]},
                                                "timestamp": 1_700_000_000}
            with pytest.raises(ValueError, match="close"):
                await rooms.broadcast("all", rw.Message.close())
            with pytest.raises(TypeError):
                await rooms.broadcast("all", 42)  # type: ignore[arg-type]
            with pytest.raises(TypeError):
                await rooms.broadcast_all({"not": "encoded"})  # type: ignore[arg-type]
            assert await rooms.broadcast("empty", "x") == rw.BroadcastResult(0, 0, ())

    run(main())


def test_exclude_takes_a_connection_an_id_or_an_iterable(run: Run) -> None:
    async def main() -> None:
        rooms = rw.RoomManager()
        handler = Recorder()
        async with running_server(handler) as server, \
                connected(server, handler, KINDS * 2) as pairs:
            clients = [client for client, _ in pairs]
            a, b, c, d = (conn for _, conn in pairs)
            for conn in (a, b, c, d):
                await rooms.join("r", conn)
            cases: list[tuple[Any, set[int]]] = [
                (a, {1, 2, 3}),
                (b.id, {0, 2, 3}),
                ([a, b], {2, 3}),
                ((c.id, d.id), {0, 1}),
                ({a, d}, {1, 2}),
                (frozenset({b.id}), {0, 2, 3}),
                ((x for x in (a, c.id)), {1, 3}),
                ([a, b, c, d], set()),
                ([], {0, 1, 2, 3}),
                (None, {0, 1, 2, 3}),
                ("no-such-id", {0, 1, 2, 3}),
            ]
            expected: list[list[str]] = [[] for _ in clients]
            for n, (exclude, receivers) in enumerate(cases):
                result = await rooms.broadcast("r", f"case {n}", exclude=exclude)
                assert result == rw.BroadcastResult(len(receivers), 0, ()), n
                for i in receivers:
                    expected[i].append(f"case {n}")
            await rooms.broadcast("r", "end")
            for client, want in zip(clients, expected, strict=True):
                got = []
                while (message := await client.recv()) != "end":
                    got.append(message)
                assert got == want
            assert await rooms.broadcast_all("all", exclude=[b, c.id]) == \
                rw.BroadcastResult(2, 0, ())
            assert await clients[0].recv() == "all"
            assert await clients[3].recv() == "all"

    run(main())


def test_broadcast_all_reaches_each_connection_once(run: Run) -> None:
    async def main() -> None:
        rooms = rw.RoomManager()
        handler = Recorder()
        async with running_server(handler) as server, \
                connected(server, handler, KINDS * 2 + ("websockets",)) as pairs:
            clients = [client for client, _ in pairs]
            a, b, c, d, outsider = (conn for _, conn in pairs)
            for room, members in {"x": (a, b), "y": (a, b, c), "z": (a, d)}.items():
                for conn in members:
                    await rooms.join(room, conn)
            assert await rooms.broadcast_all("once") == rw.BroadcastResult(4, 0, ())
            assert await rooms.broadcast_all(b"twice?", exclude=a) == \
                rw.BroadcastResult(3, 0, ())
            await outsider.send("direct")  # the outsider is in no room
            await rooms.broadcast("y", "end")
            await rooms.broadcast("z", "end")
            assert await clients[0].recv_many(2) == ["once", "end"]
            assert await clients[1].recv_many(3) == ["once", b"twice?", "end"]
            assert await clients[2].recv_many(3) == ["once", b"twice?", "end"]
            assert await clients[3].recv_many(3) == ["once", b"twice?", "end"]
            assert await clients[4].recv() == "direct"

    run(main())


def test_send_to_one_connection(run: Run) -> None:
    async def main() -> None:
        rooms = rw.RoomManager()
        handler = Recorder()
        async with running_server(handler) as server, \
                connected(server, handler, KINDS) as pairs:
            (ca, a), (cb, b) = pairs
            await rooms.join("r", a)
            assert await rooms.send_to(a.id, "for a") is True
            assert await rooms.send_to(b.id, "for b") is False  # in no room: unknown
            assert await rooms.send_to("nobody", "x") is False
            assert await ca.recv() == "for a"
            await rooms.leave("r", a)
            assert await rooms.send_to(a.id, "gone") is False
            await b.send("direct b")
            assert await cb.recv() == "direct b"

    run(main())


def test_order_holds_across_interleaved_broadcasts_and_direct_sends(run: Run) -> None:
    """Within one event-loop iteration and across them, each client receives
    broadcasts, direct sends and send_to in exactly the order they were made."""
    rounds = 150

    async def main() -> None:
        rooms = rw.RoomManager()
        handler = Recorder()
        async with running_server(handler) as server, \
                connected(server, handler, (*KINDS, "websockets")) as pairs:
            clients = [client for client, _ in pairs]
            a, b, c = (conn for _, conn in pairs)
            for room, members in {"r1": (a, b), "r2": (b, c)}.items():
                for conn in members:
                    await rooms.join(room, conn)
            expected: list[list[str | bytes]] = [[], [], []]
            for k in range(rounds):
                # No suspension between these calls (the in-memory backend does
                # not suspend, and send() only waits under backpressure).
                await rooms.broadcast("r1", f"{k}.1")
                await a.send(f"{k}.2")
                await rooms.broadcast("r2", f"{k}.3".encode(), exclude=c)
                await b.send(f"{k}.4".encode())
                await rooms.broadcast_all(f"{k}.5")
                await rooms.send_to(c.id, f"{k}.6")
                await rooms.broadcast("r2", f"{k}.7", exclude=[b])
                await c.send(f"{k}.8")
                await rooms.broadcast("r1", f"{k}.9", exclude=a.id)
                expected[0] += [f"{k}.1", f"{k}.2", f"{k}.5"]
                expected[1] += [f"{k}.1", f"{k}.3".encode(), f"{k}.4".encode(), f"{k}.5",
                                f"{k}.9"]
                expected[2] += [f"{k}.5", f"{k}.6", f"{k}.7", f"{k}.8"]
                if k % 3 == 0:
                    await asyncio.sleep(0)  # some rounds span iterations
            for client, want in zip(clients, expected, strict=True):
                assert await client.recv_many(len(want)) == want

    run(main())


def data_segments_in(client: RawClient) -> int:
    """Data segments the client's socket has received (Linux ``tcpi_data_segs_in``)."""
    sock = client.writer.get_extra_info("socket")
    raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 160)
    return int(struct.unpack_from("I", raw, 152)[0])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts segments with TCP_INFO")
def test_one_write_per_member_per_iteration(run: Run) -> None:
    """Broadcasts, broadcast_all and direct sends made within one iteration reach
    each member in a single TCP segment: one write per connection."""

    async def main() -> None:
        rooms = rw.RoomManager()
        handler = Recorder()
        async with running_server(handler) as server:
            raws = []
            try:
                for _ in range(3):
                    raws.append(await RawClient.open(server.port))
                conns = [await handler.connected.get() for _ in raws]
                for conn in conns:
                    await rooms.join("r", conn)
                for round_ in range(3):
                    before = [data_segments_in(raw) for raw in raws]
                    expected: list[list[bytes]] = [[], [], []]
                    for i in range(20):
                        await rooms.broadcast("r", f"{round_}.{i}", exclude=conns[i % 3])
                        await conns[i % 3].send(f"direct {round_}.{i}")
                        await rooms.broadcast_all(b"all")
                        for n in range(3):
                            if n != i % 3:
                                expected[n].append(f"{round_}.{i}".encode())
                            else:
                                expected[n].append(f"direct {round_}.{i}".encode())
                            expected[n].append(b"all")
                    for raw, want, segments in zip(raws, expected, before, strict=True):
                        got = [(await raw.read_frame())[2] for _ in want]
                        assert got == want
                        assert data_segments_in(raw) - segments == 1
            finally:
                for raw in raws:
                    await raw.close()

    run(main())


# -- failures and clean-up --------------------------------------------------------
class Stalling(Recorder):
    """on_message waits until released: with a small max_queue the server stops
    reading the socket, so it learns of a reset only when it writes."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def on_message(self, conn: rw.WebSocketConnection, message: rw.Message) -> None:
        await super().on_message(conn, message)
        await self.release.wait()


def test_failed_member_is_reported_and_removed_from_every_room(run: Run) -> None:
    async def main() -> None:
        rooms = rw.RoomManager()
        handler = Stalling()
        async with running_server(handler, max_queue=4) as server:
            async with connected(server, handler, KINDS) as pairs:
                raw = await RawClient.open(server.port)
                victim = await handler.connected.get()
                for room in ("r1", "r2", "r3"):
                    await rooms.join(room, victim)
                    for _client, conn in pairs:
                        await rooms.join(room, conn)
                # Fill the victim's inbox: the server stops reading its socket.
                raw.send(b"".join(client_frame(0x1, b"stall %d" % i) for i in range(8)))
                await eventually(lambda: victim._reading_paused)
                reset(raw)
                failed_at = None
                for i in range(200):
                    result = await rooms.broadcast("r1", f"m{i}")
                    if victim.id in result.failed:
                        failed_at = i
                        assert result.delivered == 2
                        break
                    assert result == rw.BroadcastResult(3, 0, ())
                    await asyncio.sleep(0)
                assert failed_at is not None, "the failed write was never reported"
                # Reported once, then gone from every room at once.
                assert await rooms.rooms_of(victim) == set()
                for room in ("r1", "r2", "r3"):
                    assert await rooms.room_size(room) == 2
                    assert victim.id not in ids(await rooms.members(room))
                assert await rooms.broadcast("r2", "after") == rw.BroadcastResult(2, 0, ())
                for client, _conn in pairs:
                    want = [f"m{i}" for i in range(failed_at + 1)] + ["after"]
                    assert await client.recv_many(len(want)) == want
                handler.release.set()
                await asyncio.wait_for(handler.disconnected.get(), 5)
            await eventually(lambda: rooms.stats() == EMPTY)

    run(main())


async def _leave_by(how: str, client: PeerClient | RawClient, conn: rw.WebSocketConnection
                    ) -> None:
    if how == "client close":
        assert isinstance(client, PeerClient)
        await client.close()
    elif how == "server close":
        assert isinstance(client, PeerClient)

        async def read_to_the_end() -> int | None:
            try:
                while True:
                    await client.recv()
            except PeerClosed as closed:
                return closed.code

        _, code = await asyncio.gather(conn.close(), read_to_the_end())
        assert code == 1000
    elif how == "reset":
        assert isinstance(client, RawClient)
        reset(client)
    else:  # "tcp close": the socket goes away without a close frame
        assert isinstance(client, RawClient)
        await client.close()


def test_disconnects_leave_all_rooms_and_nothing_leaks(run: Run) -> None:
    """Many connect/join/disconnect cycles, every way a connection can end: the
    manager ends up empty and the connection objects are freed."""
    ways = ("client close", "server close", "reset", "tcp close")
    cycles = 6

    async def main() -> None:
        rooms = rw.RoomManager()
        handler = Recorder()
        refs: list[weakref.ref[rw.WebSocketConnection]] = []
        async with running_server(handler, close_timeout=1) as server, \
                connected(server, handler, ("websockets",)) as stay:
            (stay_client, stay_conn) = stay[0]
            await rooms.join("lobby", stay_conn)
            for cycle in range(cycles):
                how = ways[cycle % len(ways)]
                clients: list[PeerClient | RawClient] = []
                conns = []
                for i in range(4):
                    if how in ("reset", "tcp close"):
                        clients.append(await RawClient.open(server.port))
                    else:
                        clients.append(await open_client(url_of(server), KINDS[i % 2]))
                    conn = await handler.connected.get()
                    conns.append(conn)
                    refs.append(weakref.ref(conn))
                    for room in ("lobby", f"room{i % 2}", f"solo{cycle}.{i}"):
                        assert await rooms.join(room, conn)
                assert await rooms.room_size("lobby") == 5
                assert rooms.stats()["connections"] == 5
                await asyncio.gather(*(_leave_by(how, client, conn)
                                       for client, conn in zip(clients, conns, strict=True)))
                for _ in conns:
                    await asyncio.wait_for(handler.disconnected.get(), 5)
                for client in clients:  # those the server closed
                    if isinstance(client, PeerClient):
                        await client.close()
                assert await rooms.list_rooms() == ["lobby"]
                assert ids(await rooms.members("lobby")) == {stay_conn.id}
                assert rooms.stats() == {"rooms": 1, "connections": 1, "memberships": 1,
                                         "room_limit_refusals": 0}
                result = await rooms.broadcast_all(f"cycle {cycle}")
                assert result == rw.BroadcastResult(1, 0, ())
                assert await stay_client.recv() == f"cycle {cycle}"
                del clients, conns, conn
            await rooms.leave("lobby", stay_conn)
            assert rooms.stats() == EMPTY
        handler.events.clear()
        for _ in range(3):
            gc.collect()
            await asyncio.sleep(0)
        alive = [ref() for ref in refs if ref() is not None]
        assert alive == [], f"{len(alive)} of {len(refs)} connections were not freed"

    run(main())
