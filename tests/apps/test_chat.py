"""The chat server (``python -m reinhardt_ws serve``): its protocol with real
clients, its error replies, its HTTP endpoints on the same port; in-process and
once as a subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp
import orjson
import pytest
import websockets

import reinhardt_ws as rw
from reinhardt_ws.__main__ import TOKEN_SECRET_ENV
from reinhardt_ws.apps.chat import (
    CHAT_SUBPROTOCOL,
    DEMO_NOTICE,
    MAX_ROOM_NAME,
    MAX_ROOMS_PER_CONNECTION,
    ChatHandler,
    chat_http_handler,
    make_chat_http_handler,
)

from ..fixtures import RawClient, child_env, client_frame, free_port, run_on, running_server
from ..peer_clients import KINDS, PeerClient, PeerClosed, connected, open_client

Run = Callable[[Coroutine[Any, Any, Any]], Any]


class ObservedChat(ChatHandler):
    """The chat handler, telling the test which server connection is whose."""

    def __init__(self, rooms: rw.RoomManager | None = None, **options: Any) -> None:
        super().__init__(rooms, **options)
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
    return without_position(data)


def without_position(data: dict[str, Any]) -> dict[str, Any]:
    """*data* without the history fields every message and joined event carries
    (checked here: an offset and an 8-hex-digit epoch), for the tests that look
    at the rest; the history tests call :func:`event_with_position`."""
    kind = data.get("event")
    if kind == "message" or (kind == "joined" and "offset" in data):  # joined: with history
        offset, epoch = data.pop("offset"), data.pop("epoch")
        assert type(offset) is int and offset >= 0, data
        assert isinstance(epoch, str) and len(epoch) == 8, data
    if kind == "joined" and "recovered" in data:
        assert type(data.pop("recovered")) is bool
    return data


def event_with_position(raw: str | bytes) -> dict[str, Any]:
    assert isinstance(raw, str)
    data: dict[str, Any] = orjson.loads(raw)["data"]
    return data


async def request(client: PeerClient, obj: Any) -> dict[str, Any]:
    await client.send(orjson.dumps(obj).decode())
    return event(await client.recv())


async def join_room(client: PeerClient, room: str, **extra: Any
                    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Join *room*: the joined event, and the messages replayed before it (a join
    first gets the room's recent messages)."""
    await client.send(orjson.dumps({"type": "join", "room": room, **extra}).decode())
    replayed = []
    while True:
        got = event_with_position(await client.recv())
        if got["event"] == "joined":
            return got, replayed
        assert got["event"] == "message", got
        replayed.append(got)


@contextlib.asynccontextmanager
async def chat_server(chat: dict[str, Any] | None = None, **options: Any) -> Any:
    """A chat server (*options* are the server's, *chat* the handler's)."""
    handler = ObservedChat(**(chat or {}))
    options.setdefault("http_handler", chat_http_handler)
    async with running_server(handler, **options) as server:
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
                joined, _replayed = await join_room(client, "mine")  # the second: 1 replayed
                assert joined["size"] >= 1
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


def test_a_message_that_grows_past_the_limit_is_refused(run: Run) -> None:
    """Issue 10 item 2: floats re-encode longer (``9e15`` -> ``9000000000000000.0``).
    A message accepted at 50 KB that would be broadcast at 190 KB, past the 64 KiB
    every member accepts, gets the sender an error event; nobody receives it and
    nobody is closed (the write buffer, 128 KiB, could not even take it)."""
    limit = 64 * 1024
    count = 10_000
    raw = '{"type":"message","room":"r","data":[' + ",".join(["9e15"] * count) + "]}"
    assert len(raw) < limit

    async def main() -> None:
        async with chat_server({"max_message_size": limit}, max_message_size=limit,
                               max_write_buffer=128 * 1024) as (server, handler), \
                connected(server, handler, (*KINDS, "websockets")) as pairs:
            clients = [client for client, _ in pairs]
            for client in clients:
                assert (await request(client, {"type": "join", "room": "r"}))["event"] == "joined"
            sender = clients[0]
            await sender.send(raw)
            refused = event(await sender.recv())
            assert refused["event"] == "error"
            assert refused["error"].startswith("message too large to deliver: ")
            assert f"the limit is {limit}" in refused["error"]
            assert int(refused["error"].split(": ")[1].split()[0]) > 3 * len(raw)
            # Under the limit, after re-encoding, it goes to everyone (sender included),
            # and it is the next thing each member receives.
            fits = {"type": "message", "room": "r", "data": "x" * 30_000}
            sent = await request(sender, fits)
            assert sent["event"] == "message" and sent["data"] == fits["data"]
            for client in clients[1:]:
                assert event(await client.recv()) == sent
            assert not any(conn.is_closed for _client, conn in pairs)

    run(main())


def test_room_limit_per_connection(run: Run) -> None:
    """A join past the manager's room limit is an error event; the connection's
    rooms and the conversation go on."""
    assert ChatHandler().rooms.max_rooms_per_connection == MAX_ROOMS_PER_CONNECTION == 100

    async def main() -> None:
        rooms = rw.RoomManager(max_rooms_per_connection=3)
        async with chat_server({"rooms": rooms}) as (server, handler), \
                connected(server, handler, KINDS) as pairs:
            (ca, a), (cb, _b) = pairs
            for name in ("r1", "r2", "r3"):
                assert (await request(ca, {"type": "join", "room": name}))["event"] == "joined"
            assert await request(ca, {"type": "join", "room": "r4"}) == {
                "event": "error", "error": "room limit reached: at most 3 rooms per connection"}
            assert await rooms.rooms_of(a) == {"r1", "r2", "r3"}
            # Joining a room it is in is still fine; so is a join after a leave.
            assert (await request(ca, {"type": "join", "room": "r2"}))["size"] == 1
            assert (await request(ca, {"type": "leave", "room": "r1"}))["event"] == "left"
            assert (await request(ca, {"type": "join", "room": "r4"}))["event"] == "joined"
            # The limit is per connection: another one joins as it likes.
            assert (await request(cb, {"type": "join", "room": "r1"}))["event"] == "joined"
            assert (await request(cb, {"type": "message", "room": "r1", "data": 1}))["data"] == 1
            assert await request(ca, {"type": "message", "room": "r1", "data": 2}) == {
                "event": "error", "error": "not in room 'r1'"}

    run(main())


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
    env = child_env(implementation, **{TOKEN_SECRET_ENV: None})

    async def main() -> None:
        port = free_port()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "reinhardt_ws", "serve", "--port", str(port),
            "--max-rooms", "2", "--max-write-buffer", str(256 * 1024),
            "--max-message-size", str(64 * 1024),
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
                # --max-rooms 2
                assert (await request(ca, {"type": "join", "room": "two"}))["size"] == 1
                assert await request(ca, {"type": "join", "room": "three"}) == {
                    "event": "error", "error": "room limit reached: at most 2 rooms per "
                                               "connection"}
                # --max-message-size: checked after re-encoding
                floats = ",".join(["9e15"] * 10_000)
                await ca.send('{"type":"message","room":"lobby","data":[' + floats + "]}")
                too_big = event(await ca.recv())
                assert too_big["event"] == "error" and "65536" in too_big["error"]
                assert (await request(ca, {"type": "message", "room": "lobby",
                                           "data": 3}))["data"] == 3
                assert event(await cb.recv())["data"] == 3
            finally:
                for client in clients:
                    await client.close()
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            _out, err = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 0, err.decode(errors="replace")

    run_on("asyncio", main())


# -- tokens and the policy ------------------------------------------------------------

SECRET = "chat-test-secret-" + "x" * 16


@contextlib.asynccontextmanager
async def token_chat_server(signer: rw.TokenSigner) -> Any:
    """The chat server as ``serve --token-secret`` runs it."""
    async with chat_server({"policy": rw.ClaimsPolicy()},
                           authenticate=rw.SignedTokenAuth(signer),
                           subprotocols=(CHAT_SUBPROTOCOL,),
                           http_handler=make_chat_http_handler(signer)) as pair:
        yield pair


async def demo_token(port: int, name: str = "") -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/token" + (f"/{name}" if name else "")
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        assert response.headers["Cache-Control"] == "no-store"
        assert response.headers["Content-Type"] == "application/json"
        body: dict[str, Any] = await response.json()
        return body


async def with_token(url: str, token: str, kind: str, via: str) -> PeerClient:
    if via == "query":
        return await open_client(f"{url}?token={token}", kind)
    protocols = [CHAT_SUBPROTOCOL, rw.bearer_subprotocol(token)]
    if kind == "websockets":
        client = await open_client(url, kind, subprotocols=protocols)
    else:
        client = await open_client(url, kind, protocols=protocols)
    return client


@pytest.mark.parametrize("via", ["query", "subprotocol"])
def test_signed_tokens_from_the_demo_endpoint(run: Run, via: str) -> None:
    async def main() -> None:
        signer = rw.TokenSigner(SECRET)
        async with token_chat_server(signer) as (server, handler):
            alice = await demo_token(server.port, "alice")
            assert alice["user"] == "alice" and alice["demo"] == DEMO_NOTICE
            assert "DEMO" in alice["demo"] and "anyone" in alice["demo"]
            assert signer.verify(alice["token"])["sub"] == "alice"
            guest = await demo_token(server.port)
            assert guest["user"].startswith("guest-")
            url = f"ws://127.0.0.1:{server.port}/ws"
            ca = await with_token(url, alice["token"], "websockets", via)
            cb = await with_token(url, guest["token"], "aiohttp", via)
            try:
                a = await asyncio.wait_for(handler.connected.get(), 5)
                b = await asyncio.wait_for(handler.connected.get(), 5)
                assert {a.user["sub"], b.user["sub"]} == {"alice", guest["user"]}
                if a.user["sub"] != "alice":
                    a, b = b, a
                assert await request(ca, {"type": "join", "room": "lobby"}) == \
                    {"event": "joined", "room": "lobby", "size": 1}
                await request(cb, {"type": "join", "room": "lobby"})
                said = {"event": "message", "room": "lobby", "from": a.id, "user": "alice",
                        "data": "hi"}
                assert await request(ca, {"type": "message", "room": "lobby",
                                          "data": "hi"}) == said
                assert event(await cb.recv()) == said
            finally:
                await ca.close()
                await cb.close()

    run(main())


@pytest.mark.parametrize("kind", KINDS)
def test_connections_without_a_valid_token_are_refused(run: Run, kind: str) -> None:
    async def main() -> None:
        signer = rw.TokenSigner(SECRET)
        expired = rw.TokenSigner(SECRET, clock=lambda: 0.0).sign("old", ttl=60)
        async with token_chat_server(signer) as (server, handler):
            url = f"ws://127.0.0.1:{server.port}/ws"
            for path, reason in ((url, "token required"),
                                 (f"{url}?token={expired}", "token expired"),
                                 (f"{url}?token=forged.x", "malformed token"),
                                 (f"{url}?token={rw.TokenSigner('y' * 32).sign('eve')}",
                                  "bad token signature")):
                client = await open_client(path, kind)
                try:
                    # The refusal may come before this is sent: the check is quick.
                    with contextlib.suppress(websockets.ConnectionClosed, ConnectionError):
                        await client.send(orjson.dumps({"type": "join",
                                                        "room": "lobby"}).decode())
                    with pytest.raises(PeerClosed) as refused:
                        await client.recv()
                    assert refused.value.code == 3000, reason
                finally:
                    await client.close()
            assert handler.connected.empty()
            assert await handler.rooms.list_rooms() == []

    run(main())


def test_the_policy_refuses_with_error_events(run: Run) -> None:
    async def main() -> None:
        signer = rw.TokenSigner(SECRET)
        async with token_chat_server(signer) as (server, handler):
            url = f"ws://127.0.0.1:{server.port}/ws"
            reader = signer.sign("reader", rooms=["lobby", "team-*"], publish=["team-*"])
            client = await with_token(url, reader, "websockets", "query")
            conn = await asyncio.wait_for(handler.connected.get(), 5)
            try:
                assert await request(client, {"type": "join", "room": "secret"}) == \
                    {"event": "error", "error": "may not join room 'secret'"}
                assert (await request(client, {"type": "join", "room": "lobby"}))["event"] \
                    == "joined"
                assert await request(client, {"type": "message", "room": "lobby",
                                              "data": 1}) == \
                    {"event": "error", "error": "may not publish to room 'lobby'"}
                await request(client, {"type": "join", "room": "team-a"})
                said = await request(client, {"type": "message", "room": "team-a", "data": 2})
                assert (said["event"], said["user"], said["data"]) == ("message", "reader", 2)
                assert not conn.is_closed
                assert await handler.rooms.rooms_of(conn) == {"lobby", "team-a"}
            finally:
                await client.close()

    run(main())


class GuardedRooms:
    """An asynchronous policy with its own reasons: "vip-*" rooms need the vip
    claim; nobody publishes to "announcements"."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []

    async def can_join(self, conn: rw.WebSocketConnection, room: str) -> bool:
        self.asked.append(("join", room))
        await asyncio.sleep(0.01)  # as a database lookup would
        if room.startswith("vip-") and conn.user != "vip":
            raise rw.PermissionDenied("vip rooms are for vip members")
        return True

    def can_publish(self, conn: rw.WebSocketConnection, room: str) -> bool:
        self.asked.append(("publish", room))
        return room != "announcements"


def test_an_asynchronous_policy_with_its_own_reasons(run: Run) -> None:
    async def main() -> None:
        policy = GuardedRooms()
        async with chat_server({"policy": policy}) as (server, handler), \
                connected(server, handler, KINDS) as pairs:
            for client, conn in pairs:
                assert await request(client, {"type": "join", "room": "vip-lounge"}) == \
                    {"event": "error", "error": "vip rooms are for vip members"}
                await request(client, {"type": "join", "room": "announcements"})
                assert await request(client, {"type": "message", "room": "announcements",
                                              "data": 0}) == \
                    {"event": "error", "error": "may not publish to room 'announcements'"}
                assert not conn.is_closed
            assert policy.asked == [("join", "vip-lounge"), ("join", "announcements"),
                                    ("publish", "announcements")] * 2

    run(main())


class BrokenPolicy:
    def can_join(self, conn: rw.WebSocketConnection, room: str) -> Any:
        return "yes"  # not a bool: a bug, refused loudly

    def can_publish(self, conn: rw.WebSocketConnection, room: str) -> bool:
        return True


def test_a_broken_policy_closes_with_1011(run: Run, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with chat_server({"policy": BrokenPolicy()}) as (server, handler), \
                connected(server, handler, ("websockets",)) as pairs:
            ((client, conn),) = pairs
            await client.send(orjson.dumps({"type": "join", "room": "x"}).decode())
            with pytest.raises(PeerClosed) as closed:
                await client.recv()
            assert closed.value.code == 1011
            assert await handler.rooms.rooms_of(conn) == set()

    with caplog.at_level(logging.ERROR, logger="reinhardt_ws"):
        run(main())
    assert any("must return a bool" in r.getMessage() or
               (r.exc_info and "must return a bool" in str(r.exc_info[1]))
               for r in caplog.records)


def test_token_endpoint_answers(run: Run) -> None:
    async def main() -> None:
        async with chat_server() as (server, _handler):  # no signer: no tokens
            status, body = await http_get_raw(server.port, "/token/alice")
            assert status == 404
            assert orjson.loads(body) == {"error": "this server does not use tokens"}
        async with token_chat_server(rw.TokenSigner(SECRET)) as (server, _handler):
            status, body = await http_get_raw(server.port, "/token/" + "n" * 41)
            assert status == 400
            assert orjson.loads(body)["demo"] == DEMO_NOTICE
            status, body = await http_get_raw(server.port, "/token/a%07b")
            assert status == 400
            status, body = await http_get_raw(server.port, "/token/bob%20smith")
            assert status == 200 and orjson.loads(body)["user"] == "bob smith"

    run(main())
