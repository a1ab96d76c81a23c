"""The chat server (``python -m reinhardt_ws serve``): its protocol with real
clients, its error replies, its HTTP endpoints on the same port; in-process and
once as a subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp
import orjson
import pytest

import reinhardt_ws as rw
from reinhardt_ws.apps.chat import MAX_ROOM_NAME, ChatHandler, chat_router

from .fixtures import RawClient, client_frame, free_port, run_on, running_server
from .peer_clients import KINDS, PeerClient, connected, open_client

Run = Callable[[Coroutine[Any, Any, Any]], Any]


class ObservedChat(ChatHandler):
    """The chat handler, telling the test which server connection is whose."""

    def __init__(self) -> None:
        super().__init__()
        self.connected: asyncio.Queue[rw.WebSocketConnection] = asyncio.Queue()
        self.disconnected: asyncio.Queue[rw.WebSocketConnection] = asyncio.Queue()

    async def on_connect(self, conn: rw.WebSocketConnection) -> None:
        self.connected.put_nowait(conn)

    async def on_disconnect(self, conn: rw.WebSocketConnection) -> None:
        self.disconnected.put_nowait(conn)


def event(raw: str | bytes) -> dict[str, Any]:
    """The event inside one server envelope (a WebSocketMessage, as JSON text)."""
    assert isinstance(raw, str), "chat events are text"
    envelope = orjson.loads(raw)
    assert envelope["message_type"] == "text"
    assert isinstance(envelope["timestamp"], int)
    data = envelope["data"]
    assert isinstance(data, dict)
    return data


async def request(client: PeerClient, obj: Any) -> dict[str, Any]:
    await client.send(orjson.dumps(obj).decode())
    return event(await client.recv())


@contextlib.asynccontextmanager
async def chat_server(**options: Any) -> Any:
    handler = ObservedChat()
    async with running_server(chat_router(handler), **options) as server:
        yield server, handler


def test_join_message_leave(run: Run) -> None:
    async def main() -> None:
        async with chat_server() as (server, handler), \
                connected(server, handler, (*KINDS, "websockets")) as pairs:
            (ca, a), (cb, b), (cc, c) = pairs
            assert await request(ca, {"type": "join", "room": "lobby"}) == \
                {"event": "joined", "room": "lobby", "size": 1}
            assert await request(cb, {"type": "join", "room": "lobby"}) == \
                {"event": "joined", "room": "lobby", "size": 2}
            assert await request(cc, {"type": "join", "room": "other"}) == \
                {"event": "joined", "room": "other", "size": 1}
            # Joining again changes nothing and says so.
            assert await request(cb, {"type": "join", "room": "lobby"}) == \
                {"event": "joined", "room": "lobby", "size": 2}

            # Every member receives it, the sender included; "from" is the sender's id.
            data = {"text": "h\u00e9llo", "n": [1, 2, None]}
            await ca.send(orjson.dumps({"type": "message", "room": "lobby",
                                        "data": data}).decode())
            for client in (ca, cb):
                assert event(await client.recv()) == {
                    "event": "message", "room": "lobby", "from": a.id, "data": data}
            # Several senders: everyone sees every message, each sender's in order.
            for i in range(10):
                for client in (ca, cb):
                    await client.send(orjson.dumps(
                        {"type": "message", "room": "lobby", "data": i}).decode())
            for client in (ca, cb):
                got = [event(m) for m in await client.recv_many(20)]
                assert {g["from"] for g in got} == {a.id, b.id}
                for sender in (a.id, b.id):
                    assert [g["data"] for g in got if g["from"] == sender] == list(range(10))

            assert await request(cb, {"type": "leave", "room": "lobby"}) == \
                {"event": "left", "room": "lobby", "size": 1}
            assert await request(ca, {"type": "message", "room": "lobby", "data": "alone"}) \
                == {"event": "message", "room": "lobby", "from": a.id, "data": "alone"}
            assert await request(cb, {"type": "leave", "room": "lobby"}) == \
                {"event": "error", "error": "not in room 'lobby'"}
            assert await request(ca, {"type": "leave", "room": "lobby"}) == \
                {"event": "left", "room": "lobby", "size": 0}
            # c, in another room, heard none of it.
            assert await request(cc, {"type": "message", "room": "other", "data": 1}) == \
                {"event": "message", "room": "other", "from": c.id, "data": 1}

    run(main())


def test_errors_are_replies_and_the_connection_stays_open(run: Run) -> None:
    long_room = "r" * (MAX_ROOM_NAME + 1)
    cases: list[tuple[str | bytes, str]] = [
        ("not json {", "not JSON"),
        ("", "not JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('"join"', "expected a JSON object"),
        ('{"type": "dance", "room": "x"}', "unknown type: 'dance'"),
        ('{"room": "x"}', "unknown type: None"),
        ('{"type": "join"}', "missing room"),
        ('{"type": "join", "room": ""}', "missing room"),
        ('{"type": "join", "room": 7}', "missing room"),
        ('{"type": "message", "data": 1}', "missing room"),
        ('{"type": "message", "room": "elsewhere", "data": 1}', "not in room 'elsewhere'"),
        ('{"type": "message", "room": "mine"}', "missing data"),
        ('{"type": "leave", "room": "elsewhere"}', "not in room 'elsewhere'"),
        (orjson.dumps({"type": "join", "room": long_room}).decode(),
         f"room name longer than {MAX_ROOM_NAME} characters"),
        (b'{"type": "join", "room": "x"}', "expected a JSON text message"),
    ]

    async def main() -> None:
        async with chat_server() as (server, handler), \
                connected(server, handler, KINDS) as pairs:
            for client, conn in pairs:
                assert (await request(client, {"type": "join", "room": "mine"}))["size"] >= 1
                for raw, error in cases:
                    await client.send(raw)
                    assert event(await client.recv()) == {"event": "error", "error": error}
                    assert not conn.is_closed
                # Still open and working.
                assert await request(client, {"type": "message", "room": "mine",
                                              "data": "still here"}) == \
                    {"event": "message", "room": "mine", "from": conn.id,
                     "data": "still here"}
                assert await handler.rooms.rooms_of(conn) == {"mine"}
            # The first client also got the second one's message to "mine".
            assert event(await pairs[0][0].recv())["from"] == pairs[1][1].id

    run(main())


def test_departed_members_leave_their_rooms(run: Run) -> None:
    async def main() -> None:
        async with chat_server() as (server, handler), \
                connected(server, handler, KINDS) as pairs:
            (ca, _a), (cb, b) = pairs
            for room in ("one", "two"):
                await request(ca, {"type": "join", "room": room})
                await request(cb, {"type": "join", "room": room})
            assert await handler.rooms.room_size("one") == 2
            await ca.close()
            await asyncio.wait_for(handler.disconnected.get(), 5)
            assert await handler.rooms.list_rooms() == ["one", "two"]
            assert await request(cb, {"type": "leave", "room": "one"}) == \
                {"event": "left", "room": "one", "size": 0}
            assert await request(cb, {"type": "message", "room": "two", "data": 0}) == \
                {"event": "message", "room": "two", "from": b.id, "data": 0}
            assert await handler.rooms.list_rooms() == ["two"]

    run(main())


def test_a_client_leaving_mid_conversation_is_not_an_error(
        run: Run, caplog: pytest.LogCaptureFixture) -> None:
    """A client that sends and closes at once: the server's replies find the
    connection closed.  That ends the conversation quietly, with no handler error
    (no 1011, no traceback) and nothing left in the rooms."""

    async def main() -> None:
        async with chat_server() as (server, handler), \
                connected(server, handler, ("websockets",)) as pairs:
            (stay, _stay_conn), = pairs
            await request(stay, {"type": "join", "room": "x"})
            for _ in range(5):
                raw = await RawClient.open(server.port)
                conn = await handler.connected.get()
                raw.send(b"".join(client_frame(0x1, orjson.dumps(obj)) for obj in (
                    {"type": "join", "room": "x"}, {"type": "message", "room": "x", "data": 1},
                    {"type": "leave", "room": "x"}, {"type": "nope"})) +
                    client_frame(0x8, (1000).to_bytes(2, "big")))
                assert await raw.read_close() == 1000
                assert await asyncio.wait_for(handler.disconnected.get(), 5) is conn
                assert conn.close_code == 1000
                await raw.close()
            assert await handler.rooms.room_size("x") == 1

    with caplog.at_level(logging.INFO, logger="reinhardt_ws"):
        run(main())
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []


async def http_get_raw(port: int, path: str) -> tuple[int, bytes]:
    """A plain HTTP/1.1 GET over a raw socket: (status, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                     "Connection: close\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        status = int(head.split(b" ", 2)[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (
            line.partition(b":") for line in head.split(b"\r\n")[1:] if line)}
        length = int(headers.get(b"content-length", b"0"))
        body = await asyncio.wait_for(reader.readexactly(length), 5)
        return status, body
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def check_http_endpoints(port: int) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/html")
            page = await response.text()
            assert page.lstrip().lower().startswith("<!doctype html>")
            assert "WebSocket" in page
        async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
            assert response.status == 200
    assert await http_get_raw(port, "/healthz") == (200, b"ok\n")
    status, _body = await http_get_raw(port, "/no-such-page")
    assert status >= 400


def test_http_endpoints_share_the_websocket_port(run: Run) -> None:
    async def main() -> None:
        async with chat_server() as (server, handler):
            await check_http_endpoints(server.port)
            async with connected(server, handler, KINDS) as pairs:
                for client, _conn in pairs:
                    assert (await request(client, {"type": "join", "room": "r"}))["event"] \
                        == "joined"
            await check_http_endpoints(server.port)

    run(main())


def test_chat_server_as_a_subprocess(implementation: str) -> None:
    """``python -m reinhardt_ws serve --port P``, on the implementation under test."""
    env = {k: v for k, v in os.environ.items() if k != "REINHARDT_WS_NO_EXTENSIONS"}
    if implementation == "python":
        env["REINHARDT_WS_NO_EXTENSIONS"] = "1"

    async def main() -> None:
        port = free_port()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "reinhardt_ws", "serve", "--port", str(port),
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            assert proc.stdout is not None
            banner = await asyncio.wait_for(proc.stdout.readline(), 20)
            assert f"listening on ws://127.0.0.1:{port}/".encode() in banner, banner
            await check_http_endpoints(port)
            clients = [await open_client(f"ws://127.0.0.1:{port}/", kind) for kind in KINDS]
            try:
                ca, cb = clients
                assert await request(ca, {"type": "join", "room": "lobby"}) == \
                    {"event": "joined", "room": "lobby", "size": 1}
                assert await request(cb, {"type": "join", "room": "lobby"}) == \
                    {"event": "joined", "room": "lobby", "size": 2}
                sent = await request(cb, {"type": "message", "room": "lobby", "data": "hi"})
                assert sent["event"] == "message" and sent["data"] == "hi"
                assert event(await ca.recv()) == sent
                assert await request(ca, {"type": "nope"}) == \
                    {"event": "error", "error": "unknown type: 'nope'"}
                from_a = await request(ca, {"type": "message", "room": "lobby", "data": 2})
                assert from_a["data"] == 2 and from_a["from"] != sent["from"]
                assert event(await cb.recv()) == from_a
            finally:
                for client in clients:
                    await client.close()
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            _out, err = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 0, err.decode(errors="replace")

    run_on("asyncio", main())
