"""The handler's promises and the server-side ``WebSocketConnection`` API."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import connect as ws_connect

import reinhardt_ws as rw

from ..core_helpers import CLOSE, PING, PONG, TEXT, Run, event_kinds
from ..fixtures import RawClient, Recorder, client_frame, eventually, running_server, url_of


def texts(handler: Recorder, conn_id: str) -> list[str]:
    return [str(m.data) for kind, cid, m in handler.events if kind == "message" and cid == conn_id]


async def round_trip(client: RawClient, data: bytes = b"sync") -> None:
    """Ping and wait for the pong: every frame sent before has reached the server."""
    client.send(client_frame(PING, data))
    while True:
        opcode, _fin, payload = await client.read_frame()
        if opcode == PONG and payload == data:
            return


# -- ordering ----------------------------------------------------------------------


class SlowConnect(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def on_connect(self, conn: rw.WebSocketConnection) -> None:
        self.events.append(("connect-start", conn.id, None))
        await self.gate.wait()
        await super().on_connect(conn)


def test_on_connect_completes_before_the_first_on_message(run: Run) -> None:
    async def main() -> None:
        handler = SlowConnect()
        async with running_server(handler) as server, ws_connect(url_of(server)) as ws:
            for i in range(5):
                await ws.send(f"m{i}")
            await asyncio.wait_for(await ws.ping(), 5)  # all five are at the server now
            assert event_kinds(handler) == ["connect-start"]
            handler.gate.set()
            await eventually(lambda: len(handler.events) == 7)
            conn_id = handler.events[0][1]
            assert event_kinds(handler) == ["connect-start", "connect"] + ["message"] * 5
            assert texts(handler, conn_id) == [f"m{i}" for i in range(5)]

    run(main())


class Serial(Recorder):
    """Yields inside on_message and checks no two calls overlap on one connection."""

    def __init__(self) -> None:
        super().__init__()
        self.active: dict[str, int] = {}
        self.overlaps = 0
        self.blocked: dict[str, asyncio.Event] = {}

    async def on_message(self, conn: rw.WebSocketConnection, message: rw.Message) -> None:
        self.active[conn.id] = self.active.get(conn.id, 0) + 1
        if self.active[conn.id] > 1:
            self.overlaps += 1
        try:
            if message.data == "block":
                self.blocked[conn.id] = gate = asyncio.Event()
                await gate.wait()
            for _ in range(3):
                await asyncio.sleep(0)
            await super().on_message(conn, message)
        finally:
            self.active[conn.id] -= 1


def test_on_message_runs_one_at_a_time_in_arrival_order(run: Run) -> None:
    async def client(url: str, name: str) -> None:
        async with ws_connect(url) as ws:
            for i in range(40):
                await ws.send(f"{name}{i}")
            for _ in range(40):
                await asyncio.wait_for(ws.recv(), 5)

    async def main() -> None:
        handler = Serial()
        handler.echo = True
        async with running_server(handler) as server:
            await asyncio.gather(*(client(url_of(server), name) for name in "abc"))
            assert handler.overlaps == 0
            by_conn: dict[str, list[str]] = {}
            for kind, cid, message in handler.events:
                if kind == "message":
                    by_conn.setdefault(cid, []).append(message.data)
            assert sorted(by_conn.values()) == [
                [f"{name}{i}" for i in range(40)] for name in "abc"]

    run(main())


def test_connections_run_concurrently(run: Run) -> None:
    async def main() -> None:
        handler = Serial()
        handler.echo = True
        async with running_server(handler) as server, \
                ws_connect(url_of(server)) as blocked, ws_connect(url_of(server)) as free:
            await blocked.send("block")
            await eventually(lambda: len(handler.blocked) == 1)
            await free.send("not blocked")
            assert await asyncio.wait_for(free.recv(), 5) == "not blocked"
            next(iter(handler.blocked.values())).set()
            assert await asyncio.wait_for(blocked.recv(), 5) == "block"

    run(main())


class Gated(Recorder):
    """on_message waits for ``gate`` on the first message, so later ones queue up."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()

    async def on_message(self, conn: rw.WebSocketConnection, message: rw.Message) -> None:
        self.entered.set()
        await self.gate.wait()
        await super().on_message(conn, message)

    async def on_disconnect(self, conn: rw.WebSocketConnection) -> None:
        assert conn.is_closed
        await super().on_disconnect(conn)


ENDINGS = {"close-frame": 1000, "tcp-reset": 1006, "ping-timeout": 1001, "server-shutdown": 1001}


@pytest.mark.parametrize("ending", list(ENDINGS))
def test_on_disconnect_runs_once_after_the_last_on_message(run: Run, ending: str) -> None:
    async def main() -> None:
        handler = Gated()
        options: dict[str, Any] = {"close_timeout": 30}
        if ending == "ping-timeout":
            options.update(ping_interval=0.2, ping_timeout=0.2)
        server = await rw.serve(handler, "127.0.0.1", 0, **{"ping_interval": None, **options})
        shutdown: asyncio.Future[None] | None = None
        client = await RawClient.open(server.port)
        try:
            for i in range(5):
                client.send(client_frame(TEXT, f"m{i}".encode()))
            await asyncio.wait_for(handler.entered.wait(), 5)
            if ending != "ping-timeout":
                await round_trip(client)  # the other four are queued at the server
            conn = await asyncio.wait_for(handler.connected.get(), 5)
            if ending == "close-frame":
                client.send(client_frame(CLOSE, (1000).to_bytes(2, "big")))
                assert await client.read_close() == 1000
            elif ending == "tcp-reset":
                client.writer.transport.abort()
            elif ending == "ping-timeout":
                opcode, _fin, _payload = await client.read_frame()
                assert opcode == PING  # and we never answer it
                assert await client.read_close() == 1001
            else:
                shutdown = asyncio.ensure_future(server.close(timeout=5))
                assert await client.read_close() == 1001
                client.send(client_frame(CLOSE, (1001).to_bytes(2, "big")))
            if ending != "tcp-reset":
                assert await asyncio.wait_for(client.reader.read(), 5) == b""
            await eventually(lambda: conn.is_closed and not server.connections)
            assert "disconnect" not in event_kinds(handler)  # on_message is still busy
            handler.gate.set()
            gone = await asyncio.wait_for(handler.disconnected.get(), 5)
            assert gone is conn
            assert conn.close_code == ENDINGS[ending]
            if ending == "ping-timeout":
                # The server read whatever arrived before the peer went silent.
                assert len(texts(handler, conn.id)) >= 1
            else:
                assert texts(handler, conn.id) == [f"m{i}" for i in range(5)]
            assert event_kinds(handler, conn.id)[-1] == "disconnect"
            assert event_kinds(handler, conn.id).count("disconnect") == 1
            if shutdown is not None:
                await asyncio.wait_for(shutdown, 5)
        finally:
            await client.close()
            await server.close(timeout=2)
        assert event_kinds(handler, conn.id).count("disconnect") == 1

    run(main())


# -- connection attributes ----------------------------------------------------------


def test_server_connection_attributes(run: Run) -> None:
    async def main() -> None:
        handler = Recorder()
        async with running_server(handler, subprotocols=["proto.a", "proto.b"]) as server, \
                ws_connect(url_of(server, "/chat/room%201?user=ann&x=1"),
                           subprotocols=["proto.b", "proto.a"],  # type: ignore[list-item]
                           additional_headers={"X-Custom": "Value"}) as ws1, \
                ws_connect(url_of(server)) as ws2:
            first = await asyncio.wait_for(handler.connected.get(), 5)
            second = await asyncio.wait_for(handler.connected.get(), 5)
            assert first.id != second.id
            assert isinstance(first.id, str) and first.id
            assert first.path == "/chat/room%201?user=ann&x=1"
            assert second.path == "/"
            assert first.headers["X-Custom"] == "Value"
            assert first.headers["x-custom"] == "Value"
            assert first.headers["X-CUSTOM"] == "Value"
            assert "host" in first.headers
            assert first.subprotocol == "proto.a"  # the server's preference
            assert ws1.subprotocol == "proto.a"
            assert second.subprotocol is None
            local = ws1.transport.get_extra_info("sockname")
            assert tuple(first.remote_address[:2]) == tuple(local[:2])
            assert first.user_data == {} and second.user_data == {}
            first.user_data["name"] = "ann"
            assert second.user_data == {}
            assert not first.is_closed
            assert first.close_code is None
            assert not first.is_client
            assert server.connections == {first, second}
            await ws2.close()
            await asyncio.wait_for(handler.disconnected.get(), 5)
            assert second.is_closed
            assert second.close_code == 1000
            assert server.connections == {first}

    run(main())


class Talker(Recorder):
    """Uses every send API from on_connect, then closes with 4100."""

    def __init__(self) -> None:
        super().__init__()
        self.rtt: float | None = None
        self.after_close: list[rw.ConnectionClosed] = []

    async def on_connect(self, conn: rw.WebSocketConnection) -> None:
        await super().on_connect(conn)
        await conn.send_text("text ✓")
        await conn.send_binary(b"\x00bin")
        await conn.send_json({"json": [1, None]})
        await conn.send("str")
        await conn.send(b"bytes")
        await conn.send(memoryview(b"view"))
        await conn.send(rw.Message.binary(b"message"))
        await conn.send(rw.WebSocketMessage.text("env").with_timestamp(3))
        self.rtt = await conn.ping(b"server ping")
        await conn.close(4100, "talked enough")
        assert conn.is_closed
        assert (conn.close_code, conn.close_reason) == (4100, "talked enough")
        for send in (conn.send_text("x"), conn.send_binary(b"x"), conn.send_json(1),
                     conn.send("x"), conn.ping()):
            try:
                await send
            except rw.ConnectionClosed as exc:
                self.after_close.append(exc)


def test_server_side_send_api(run: Run) -> None:
    async def main() -> None:
        handler = Talker()
        async with running_server(handler) as server, ws_connect(url_of(server)) as ws:
            received = [await asyncio.wait_for(ws.recv(), 5) for _ in range(8)]
            assert received[:7] == ["text ✓", b"\x00bin", '{"json":[1,null]}', "str", b"bytes",
                                    b"view", b"message"]
            assert json.loads(received[7]) == {
                "message_type": "text", "data": "env", "timestamp": 3}
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
            assert (ws.close_code, ws.close_reason) == (4100, "talked enough")
            await asyncio.wait_for(handler.disconnected.get(), 5)
            assert handler.rtt is not None and handler.rtt >= 0
            assert len(handler.after_close) == 5
            assert all((e.code, e.reason) == (4100, "talked enough") for e in handler.after_close)

    run(main())


class ClosedSender(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.errors: list[BaseException] = []

    async def on_disconnect(self, conn: rw.WebSocketConnection) -> None:
        for send in (conn.send("late"), conn.send_binary(b"late"), conn.send_json([]),
                     conn.ping(b"late")):
            try:
                await send
            except rw.WebSocketError as exc:
                self.errors.append(exc)
        await conn.close()  # a no-op now
        await super().on_disconnect(conn)


def test_sends_after_the_client_closed_raise_connection_closed(run: Run) -> None:
    async def main() -> None:
        handler = ClosedSender()
        async with running_server(handler) as server:
            async with ws_connect(url_of(server)) as ws:
                await ws.close(4200, "client leaves")
            conn = await asyncio.wait_for(handler.disconnected.get(), 5)
            assert len(handler.errors) == 4
            for error in handler.errors:
                assert isinstance(error, rw.ConnectionClosed)
                assert (error.code, error.reason) == (4200, "client leaves")
            assert (conn.close_code, conn.close_reason) == (4200, "client leaves")

    run(main())


def test_send_while_closing_raises_and_close_validates(run: Run) -> None:
    async def main() -> None:
        handler = Recorder()
        async with running_server(handler, close_timeout=30) as server:
            client = await RawClient.open(server.port)
            try:
                conn = await asyncio.wait_for(handler.connected.get(), 5)
                with pytest.raises(ValueError):
                    await conn.close(1005)
                with pytest.raises(ValueError):
                    await conn.close(1000, "é" * 62)
                assert not conn.is_closed
                closing = asyncio.ensure_future(conn.close(4300, "closing"))
                assert await client.read_close() == 4300
                # Our close frame is out and the peer has not answered: closing.
                assert conn.is_closed
                with pytest.raises(rw.ConnectionClosed) as info:
                    await conn.send("too late")
                assert (info.value.code, info.value.reason) == (4300, "closing")
                assert not closing.done()
                client.send(client_frame(CLOSE, (4300).to_bytes(2, "big")))
                await asyncio.wait_for(closing, 5)
                assert conn.close_code == 4300
            finally:
                await client.close()

    run(main())


@pytest.mark.parametrize(("payload", "seen", "echoed"), [
    (b"", (1005, ""), 1000),
    ((1000).to_bytes(2, "big"), (1000, ""), 1000),
    ((4321).to_bytes(2, "big") + "au revoir ✓".encode(), (4321, "au revoir ✓"), 4321),
], ids=["empty", "1000", "4321-with-reason"])
def test_client_close_frame_is_echoed(run: Run, payload: bytes, seen: tuple[int, str],
                                      echoed: int) -> None:
    async def main() -> None:
        handler = Recorder()
        async with running_server(handler) as server:
            client = await RawClient.open(server.port)
            try:
                client.send(client_frame(CLOSE, payload))
                assert await client.read_close() == echoed
                # The server closes TCP first (RFC 6455 section 7.1.1).
                assert await asyncio.wait_for(client.reader.read(), 5) == b""
            finally:
                await client.close()
            conn = await asyncio.wait_for(handler.disconnected.get(), 5)
            assert (conn.close_code, conn.close_reason) == seen

    run(main())


def test_ping_waits_for_its_pong(run: Run) -> None:
    async def main() -> None:
        handler = Recorder()
        async with running_server(handler) as server:
            client = await RawClient.open(server.port)
            try:
                conn = await asyncio.wait_for(handler.connected.get(), 5)
                first = asyncio.ensure_future(conn.ping(b"one"))
                second = asyncio.ensure_future(conn.ping(b"two"))
                assert await client.read_frame() == (PING, True, b"one")
                assert await client.read_frame() == (PING, True, b"two")
                client.send(client_frame(PONG, b"unsolicited"))
                await round_trip(client)  # the unsolicited pong has been processed
                assert not first.done() and not second.done()
                # A pong acknowledges its own ping and every earlier one.
                client.send(client_frame(PONG, b"two"))
                rtts = await asyncio.wait_for(asyncio.gather(first, second), 5)
                assert all(isinstance(rtt, float) and rtt >= 0 for rtt in rtts)
            finally:
                await client.close()

    run(main())


def test_server_answers_pings_with_the_same_payload(run: Run) -> None:
    async def main() -> None:
        async with running_server(Recorder()) as server:
            client = await RawClient.open(server.port)
            try:
                for payload in (b"", b"x", b"y" * 125):
                    client.send(client_frame(PING, payload))
                    assert await client.read_frame() == (PONG, True, payload)
            finally:
                await client.close()

    run(main())
