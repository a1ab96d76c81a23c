"""Our server against clients this project did not write: ``websockets`` and ``aiohttp``."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
import websockets
from websockets.asyncio.client import connect as ws_connect

import reinhardt_ws as rw

from ..core_helpers import Run
from ..fixtures import Recorder, eventually, running_server, url_of


class Scripted(Recorder):
    """Echoes, except text commands: ``!close CODE REASON``, ``!ping DATA``, ``!json``."""

    async def on_message(self, conn: rw.WebSocketConnection, message: rw.Message) -> None:
        self.events.append(("message", conn.id, message))
        data = message.data
        if isinstance(data, str) and data.startswith("!"):
            command, _, rest = data[1:].partition(" ")
            if command == "close":
                code, _, reason = rest.partition(" ")
                await conn.close(int(code), reason)
            elif command == "ping":
                rtt = await conn.ping(rest.encode())
                await conn.send_text(f"pong {rest} {rtt >= 0}")
            elif command == "json":
                await conn.send_json({"got": json.loads(rest)})
            elif command == "envelope":
                await conn.send(rw.WebSocketMessage.from_json(rest).with_timestamp(7))
            return
        await conn.send(message)


TEXTS = ["hello", "", "héllo wörld ✓ 🎉", "x" * 70_000]
BLOBS = [b"\x00\x01\xfe\xff", b"", bytes(range(256)) * 300]


# -- websockets -----------------------------------------------------------------


def test_websockets_text_and_binary(run: Run) -> None:
    async def main() -> None:
        async with running_server(Scripted()) as server, ws_connect(url_of(server)) as ws:
            for text in TEXTS:
                await ws.send(text)
                assert await ws.recv() == text
            for blob in BLOBS:
                await ws.send(blob)
                assert await ws.recv() == blob
            # A fragmented message from the client arrives whole.
            await ws.send(["frag", "men", "ted"])
            assert await ws.recv() == "fragmented"
            await ws.send([b"\x01", b"\x02"])
            assert await ws.recv() == b"\x01\x02"

    run(main())


def test_websockets_json(run: Run) -> None:
    async def main() -> None:
        async with running_server(Scripted()) as server, ws_connect(url_of(server)) as ws:
            await ws.send("!json " + json.dumps({"a": [1, 2.5, None, "é"]}))
            assert json.loads(await ws.recv()) == {"got": {"a": [1, 2.5, None, "é"]}}
            await ws.send("!envelope " + rw.WebSocketMessage.text({"n": 1}).to_json().decode())
            assert json.loads(await ws.recv()) == {
                "message_type": "text", "data": {"n": 1}, "timestamp": 7}

    run(main())


def test_websockets_ping_pong_both_ways(run: Run) -> None:
    async def main() -> None:
        async with running_server(Scripted()) as server, ws_connect(url_of(server)) as ws:
            # The client pings: our server answers with a pong carrying the same data.
            latency = await asyncio.wait_for(await ws.ping(b"client-ping"), 5)
            assert latency >= 0
            # The server pings: conn.ping() returns once websockets' pong is back.
            await ws.send("!ping abc")
            assert await ws.recv() == "pong abc True"

    run(main())


def test_websockets_client_close_code_reaches_on_disconnect(run: Run) -> None:
    async def main() -> None:
        handler = Scripted()
        async with running_server(handler) as server:
            async with ws_connect(url_of(server)) as ws:
                await ws.send("x")
                assert await ws.recv() == "x"
                await ws.close(4000, "client bye")
                assert ws.close_code == 4000
            conn = await asyncio.wait_for(handler.disconnected.get(), 5)
            assert (conn.close_code, conn.close_reason) == (4000, "client bye")
            assert conn.is_closed

    run(main())


def test_websockets_server_close_code_reaches_the_client(run: Run) -> None:
    async def main() -> None:
        handler = Scripted()
        async with running_server(handler) as server, ws_connect(url_of(server)) as ws:
            await ws.send("!close 4001 server bye")
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
            assert (ws.close_code, ws.close_reason) == (4001, "server bye")
            conn = await asyncio.wait_for(handler.disconnected.get(), 5)
            assert (conn.close_code, conn.close_reason) == (4001, "server bye")

    run(main())


def test_websockets_server_shutdown_is_1001(run: Run) -> None:
    async def main() -> None:
        handler = Scripted()
        server = await rw.serve(handler, "127.0.0.1", 0, ping_interval=None)
        async with ws_connect(url_of(server)) as ws:
            await ws.send("x")
            assert await ws.recv() == "x"
            await server.close(timeout=2)
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 1001
        assert [e[0] for e in handler.events].count("disconnect") == 1

    run(main())


def test_websockets_many_clients_concurrently(run: Run) -> None:
    async def client(url: str, n: int) -> list[str]:
        async with ws_connect(url) as ws:
            for i in range(5):
                await ws.send(f"{n}:{i}")
            return [str(await ws.recv()) for _ in range(5)]

    async def main() -> None:
        async with running_server(Scripted()) as server:
            results = await asyncio.gather(*(client(url_of(server), n) for n in range(10)))
            assert results == [[f"{n}:{i}" for i in range(5)] for n in range(10)]

    run(main())


# -- aiohttp ----------------------------------------------------------------------


def test_aiohttp_text_binary_json(run: Run) -> None:
    async def main() -> None:
        async with running_server(Scripted()) as server, aiohttp.ClientSession() as session, \
                session.ws_connect(url_of(server)) as ws:
            for text in TEXTS:
                await ws.send_str(text)
                reply = await ws.receive()
                assert (reply.type, reply.data) == (aiohttp.WSMsgType.TEXT, text)
            for blob in BLOBS:
                await ws.send_bytes(blob)
                reply = await ws.receive()
                assert (reply.type, reply.data) == (aiohttp.WSMsgType.BINARY, blob)
            await ws.send_json({"k": [True, None]})
            assert await ws.receive_json() == {"k": [True, None]}
            await ws.send_str("!json [1, 2]")
            assert await ws.receive_json() == {"got": [1, 2]}

    run(main())


def test_aiohttp_ping_pong_both_ways(run: Run) -> None:
    async def main() -> None:
        async with running_server(Scripted()) as server, aiohttp.ClientSession() as session:
            # autoping=False: pongs reach us and pings from the server must be answered.
            async with session.ws_connect(url_of(server), autoping=False) as ws:
                await ws.ping(b"aio")
                reply = await ws.receive(timeout=5)
                assert (reply.type, reply.data) == (aiohttp.WSMsgType.PONG, b"aio")
                await ws.send_str("!ping xyz")
                ping = await ws.receive(timeout=5)
                assert (ping.type, ping.data) == (aiohttp.WSMsgType.PING, b"xyz")
                await ws.pong(ping.data)
                reply = await ws.receive(timeout=5)
                assert reply.data == "pong xyz True"
            # autoping=True (the default): aiohttp answers the server's ping itself.
            async with session.ws_connect(url_of(server)) as ws:
                await ws.send_str("!ping auto")
                reply = await ws.receive(timeout=5)
                assert reply.data == "pong auto True"

    run(main())


def test_aiohttp_close_codes_both_ways(run: Run) -> None:
    async def main() -> None:
        handler = Scripted()
        async with running_server(handler) as server, aiohttp.ClientSession() as session:
            async with session.ws_connect(url_of(server)) as ws:
                await ws.close(code=4002, message=b"aio bye")
                assert ws.close_code == 4002
            conn = await asyncio.wait_for(handler.disconnected.get(), 5)
            assert (conn.close_code, conn.close_reason) == (4002, "aio bye")

            async with session.ws_connect(url_of(server)) as ws:
                await ws.send_str("!close 4003 from server")
                reply = await ws.receive(timeout=5)
                assert reply.type is aiohttp.WSMsgType.CLOSE
                assert (reply.data, reply.extra) == (4003, "from server")
                await eventually(lambda: ws.closed)
                assert ws.close_code == 4003
            conn = await asyncio.wait_for(handler.disconnected.get(), 5)
            assert conn.close_code == 4003

    run(main())


def test_aiohttp_subprotocol_negotiation(run: Run) -> None:
    async def main() -> None:
        handler = Scripted()
        async with running_server(handler, subprotocols=["chat.v2", "chat.v1"]) as server, \
                aiohttp.ClientSession() as session:
            async with session.ws_connect(url_of(server), protocols=("chat.v1", "chat.v2")) as ws:
                assert ws.protocol == "chat.v2"  # the server's preference wins
                conn = await asyncio.wait_for(handler.connected.get(), 5)
                assert conn.subprotocol == "chat.v2"
            async with session.ws_connect(url_of(server), protocols=("other",)) as ws:
                assert ws.protocol is None
                conn = await asyncio.wait_for(handler.connected.get(), 5)
                assert conn.subprotocol is None

    run(main())
