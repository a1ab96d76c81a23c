"""The ``authenticate`` hook (``serve(authenticate=...)``), on a real server with
real clients: it runs after the 101 and before ``on_connect``; what a client sends
while it is pending is held, dispatched in order once it accepts, and never
dispatched when it refuses (close 3000 / 3003 with its reason), fails (1011) or
the server closes meanwhile (1001)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import websockets
from websockets.asyncio.client import connect as ws_connect

import reinhardt_ws as rw

from ..core_helpers import CLOSE, TEXT, Run, close_payload, event_kinds
from ..fixtures import RawClient, Recorder, client_frame, eventually, running_server, url_of
from ..redis_fixtures import RedisServer, redis_server_binary

VERDICT_DELAY = 0.3


def token_of(conn: rw.WebSocketConnection) -> str | None:
    values = parse_qs(urlsplit(conn.path).query).get("token")
    return values[0] if values else None


class TokenTable:
    """An authenticator that looks tokens up in an asyncio-backed table, slowly
    (as a database would), and records what it was asked."""

    def __init__(self, table: dict[str, Any], delay: float = VERDICT_DELAY) -> None:
        self.table = table
        self.delay = delay
        self.asked: list[str | None] = []
        self.started = asyncio.Event()

    async def __call__(self, conn: rw.WebSocketConnection) -> Any:
        token = token_of(conn)
        self.asked.append(token)
        self.started.set()
        await asyncio.sleep(self.delay)
        if token is None:
            raise rw.AuthenticationFailed("token required")
        if token == "banned":
            raise rw.PermissionDenied("banned from this server")
        if token == "graphql":
            raise rw.AuthenticationFailed("unauthorized", code=4401)  # graphql-ws' code
        if token == "broken":
            raise RuntimeError("the token database is down")
        try:
            return self.table[token]
        except KeyError:
            raise rw.AuthenticationFailed("unknown token") from None


class Observed(Recorder):
    """Echoes, and records ``conn.user`` as on_connect saw it."""

    def __init__(self) -> None:
        super().__init__(echo=True)
        self.users: list[Any] = []

    async def on_connect(self, conn: rw.WebSocketConnection) -> None:
        self.users.append(conn.user)
        await super().on_connect(conn)


async def read_close(client: RawClient) -> tuple[int, str, list[bytes]]:
    """Frames until the close frame: (code, reason, data payloads seen before it)."""
    seen: list[bytes] = []
    while True:
        opcode, _fin, payload = await client.read_frame(timeout=10)
        if opcode == CLOSE:
            return (int.from_bytes(payload[:2], "big"), payload[2:].decode("utf-8"), seen)
        seen.append(payload)


async def send_early(client: RawClient, count: int = 5) -> None:
    for i in range(count):
        client.send(client_frame(TEXT, f"early {i}".encode()))
    await client.writer.drain()


@pytest.mark.parametrize(("token", "code", "reason"), [
    (None, 3000, "token required"),
    ("nope", 3000, "unknown token"),
    ("banned", 3003, "banned from this server"),
    ("graphql", 4401, "unauthorized"),
    ("broken", 1011, "authentication failed"),
])
def test_refusal_closes_with_its_code_and_dispatches_nothing(
        run: Run, token: str | None, code: int, reason: str) -> None:
    async def main() -> None:
        handler = Observed()
        auth = TokenTable({"good": "alice"})
        async with running_server(handler, authenticate=auth) as server:
            client = await RawClient.open(server.port,
                                          "/" if token is None else f"/?token={token}")
            await send_early(client)  # before the verdict: the hook sleeps 0.3 s
            assert await read_close(client) == (code, reason, [])  # no echo of anything
            client.send(client_frame(CLOSE, close_payload(code)))
            await eventually(lambda: not server.connections)
            await client.close()
            await asyncio.sleep(0.05)
            assert handler.events == []  # no on_connect, on_message nor on_disconnect
            assert auth.asked == [token]

    run(main())


def test_refusal_seen_by_the_websockets_client(run: Run) -> None:
    async def main() -> None:
        handler = Observed()
        async with running_server(handler, authenticate=TokenTable({})) as server:
            async with ws_connect(url_of(server, "/?token=banned")) as ws:
                await ws.send("hello")
                with pytest.raises(websockets.ConnectionClosed) as caught:
                    await asyncio.wait_for(ws.recv(), 10)
            assert caught.value.rcvd is not None
            assert (caught.value.rcvd.code, caught.value.rcvd.reason) == \
                (3003, "banned from this server")
            await asyncio.sleep(0.05)
            assert handler.events == []

    run(main())


def test_acceptance_sets_user_then_delivers_in_order(run: Run) -> None:
    async def main() -> None:
        handler = Observed()
        identity = {"name": "alice", "roles": ["admin"]}
        auth = TokenTable({"good": identity})
        async with running_server(handler, authenticate=auth) as server:
            client = await RawClient.open(server.port, "/?token=good")
            started = time.monotonic()
            await send_early(client, 10)
            echoes = [(await client.read_frame(timeout=10))[2] for _ in range(10)]
            assert time.monotonic() - started >= VERDICT_DELAY * 0.9  # held, not dispatched
            assert echoes == [f"early {i}".encode() for i in range(10)]
            assert event_kinds(handler) == ["connect"] + ["message"] * 10
            assert handler.users == [identity]
            (conn,) = server.connections
            assert conn.user is identity
            assert "token" not in repr(conn)  # what logs show: no query string, no token
            # After the verdict messages flow as usual.
            client.send(client_frame(TEXT, b"late"))
            assert (await client.read_frame())[2] == b"late"
            client.send(client_frame(CLOSE, close_payload(1000)))
            assert await client.read_close() == 1000
            await client.close()
            await asyncio.wait_for(handler.disconnected.get(), 5)
            assert event_kinds(handler)[-1] == "disconnect"

    run(main())


def test_none_identity_accepts_anonymously(run: Run) -> None:
    async def main() -> None:
        handler = Observed()

        async def anyone(conn: rw.WebSocketConnection) -> None:
            await asyncio.sleep(0.01)

        async with running_server(handler, authenticate=anyone) as server, \
                ws_connect(url_of(server)) as ws:
            await ws.send("hi")
            assert await asyncio.wait_for(ws.recv(), 5) == "hi"
            assert handler.users == [None]

    run(main())


def test_client_closes_while_authenticate_is_pending(run: Run) -> None:
    """The client gives up before the verdict: even an accepting verdict then
    dispatches nothing (no on_connect, no on_message, no on_disconnect)."""
    async def main() -> None:
        handler = Observed()
        auth = TokenTable({"good": "alice"}, delay=0.5)
        async with running_server(handler, authenticate=auth) as server:
            client = await RawClient.open(server.port, "/?token=good")
            await send_early(client, 3)
            await asyncio.wait_for(auth.started.wait(), 5)
            client.send(client_frame(CLOSE, close_payload(1000, b"bye")))
            assert await client.read_close() == 1000
            await client.close()
            await eventually(lambda: not server.connections)
            await asyncio.sleep(0.7)  # past the verdict
            assert handler.events == []

    run(main())


def test_server_close_while_authenticate_is_pending(run: Run) -> None:
    async def main() -> None:
        handler = Observed()
        auth = TokenTable({"good": "alice"}, delay=0.5)
        server = await rw.serve(handler, "127.0.0.1", 0, ping_interval=None, authenticate=auth)
        try:
            client = await RawClient.open(server.port, "/?token=good")
            await send_early(client, 3)
            await asyncio.wait_for(auth.started.wait(), 5)
            closing = asyncio.ensure_future(server.close(timeout=3))
            code, reason, seen = await read_close(client)
            assert (code, reason, seen) == (1001, "server shutdown", [])
            client.send(client_frame(CLOSE, close_payload(1001)))
            await asyncio.wait_for(closing, 10)
            await client.close()
            assert handler.events == []
        finally:
            await server.close(timeout=1)

    run(main())


def test_server_close_cancels_an_authenticate_that_never_answers(run: Run) -> None:
    async def main() -> None:
        handler = Observed()
        entered = asyncio.Event()

        async def forever(conn: rw.WebSocketConnection) -> str:
            entered.set()
            await asyncio.Event().wait()
            return "never"

        server = await rw.serve(handler, "127.0.0.1", 0, ping_interval=None,
                                authenticate=forever)
        async with ws_connect(url_of(server)) as ws:
            await ws.send("held")
            await asyncio.wait_for(entered.wait(), 5)
            started = time.monotonic()
            await asyncio.wait_for(server.close(timeout=0.5), 10)
            assert time.monotonic() - started < 5
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 1001
        assert handler.events == []

    run(main())


def test_a_long_refusal_reason_is_cut_to_fit_a_close_frame(run: Run) -> None:
    """A reason longer than a close frame holds (123 UTF-8 bytes) is cut on a
    character boundary, never sent as an oversized control frame."""
    async def main() -> None:
        async def refuse(conn: rw.WebSocketConnection) -> None:
            raise rw.AuthenticationFailed("é" * 100)  # 200 UTF-8 bytes

        async with running_server(Observed(), authenticate=refuse) as server:
            client = await RawClient.open(server.port)
            code, reason, _ = await read_close(client)
            assert code == 3000
            assert reason == "é" * 61  # 122 bytes: the 62nd "é" would not fit
            await client.close()

    run(main())


# -- a real token store: redis-server -----------------------------------------------


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    server = RedisServer(redis_server_binary()).start()
    yield server.url
    server.stop()


@contextlib.asynccontextmanager
async def redis_tokens(url: str, tokens: dict[str, str]) -> AsyncIterator[Any]:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        for token, user in tokens.items():
            await client.set(f"auth-test:{token}", user, ex=60)
        yield client
    finally:
        await client.aclose()


@pytest.mark.redis
def test_tokens_looked_up_in_redis(run: Run, redis_url: str) -> None:
    async def main() -> None:
        handler = Observed()
        async with redis_tokens(redis_url, {"t-alice": "alice"}) as store:
            async def lookup(conn: rw.WebSocketConnection) -> str:
                token = token_of(conn) or ""
                await asyncio.sleep(VERDICT_DELAY)  # a slow store: clients send meanwhile
                user = await store.get(f"auth-test:{token}")
                if user is None:
                    raise rw.AuthenticationFailed("unknown token")
                return str(user)

            async with running_server(handler, authenticate=lookup) as server:
                good = await RawClient.open(server.port, "/?token=t-alice")
                bad = await RawClient.open(server.port, "/?token=t-mallory")
                await send_early(good, 3)
                await send_early(bad, 3)
                assert await read_close(bad) == (3000, "unknown token", [])
                assert [(await good.read_frame())[2] for _ in range(3)] == \
                    [f"early {i}".encode() for i in range(3)]
                assert handler.users == ["alice"]
                assert event_kinds(handler) == ["connect"] + ["message"] * 3
                for client in (good, bad):
                    await client.close()

    run(main())


# -- the built-in authenticators on a real server -------------------------------------

SECRET = "k" * 32


def test_bearer_token_in_the_header_with_websockets_and_aiohttp(run: Run) -> None:
    import aiohttp

    async def main() -> None:
        handler = Observed()
        auth = rw.BearerTokenAuth({"tok-alice": "alice"})
        async with running_server(handler, authenticate=auth) as server:
            async with ws_connect(url_of(server),
                                  additional_headers={"Authorization": "Bearer tok-alice"}) as ws:
                await ws.send("one")
                assert await asyncio.wait_for(ws.recv(), 5) == "one"
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(url_of(server),
                                              headers={"Authorization": "Bearer tok-alice"}
                                              ) as ws2:
                    await ws2.send_str("two")
                    assert (await ws2.receive(5)).data == "two"
                async with session.ws_connect(url_of(server),
                                              headers={"Authorization": "Bearer tok-eve"}
                                              ) as ws3:
                    await ws3.send_str("never echoed")
                    closing = await ws3.receive(5)
                    assert closing.type is aiohttp.WSMsgType.CLOSE
                    assert (closing.data, closing.extra) == (3000, "unknown token")
            assert handler.users == ["alice", "alice"]
            assert texts_received(handler) == ["one", "two"]

    run(main())


def texts_received(handler: Recorder) -> list[str]:
    return [str(m.data) for kind, _cid, m in handler.events if kind == "message"]


def test_signed_token_in_the_query_string(run: Run) -> None:
    async def main() -> None:
        handler = Observed()
        signer = rw.TokenSigner(SECRET)
        expired = rw.TokenSigner(SECRET, clock=lambda: time.time() - 3600).sign("old", ttl=60)
        async with running_server(handler, authenticate=rw.SignedTokenAuth(signer)) as server:
            token = signer.sign("alice", ttl=60, rooms=["lobby"])
            client = await RawClient.open(server.port, f"/chat?token={token}")
            await send_early(client, 2)
            assert [(await client.read_frame())[2] for _ in range(2)] == [b"early 0", b"early 1"]
            assert handler.users[0]["sub"] == "alice"
            assert handler.users[0]["rooms"] == ["lobby"]
            await client.close()
            for bad, reason in ((expired, "token expired"), (token[:-2], "malformed token"),
                                (rw.TokenSigner("x" * 32).sign("eve"), "bad token signature")):
                refused = await RawClient.open(server.port, f"/chat?token={bad}")
                await send_early(refused, 2)
                assert await read_close(refused) == (3000, reason, [])
                await refused.close()
            assert handler.users == [handler.users[0]]

    run(main())


def test_signed_token_in_the_subprotocol_is_never_echoed(run: Run) -> None:
    """The client offers ``["chat", "bearer.<token>"]``: the server selects "chat"
    (its own), so the 101 carries no token."""
    async def main() -> None:
        handler = Observed()
        signer = rw.TokenSigner(SECRET)
        token = signer.sign("alice", ttl=60)
        async with running_server(handler, authenticate=rw.SignedTokenAuth(signer),
                                  subprotocols=("chat",)) as server:
            async with ws_connect(url_of(server),
                                  subprotocols=["chat", rw.bearer_subprotocol(token)]) as ws:
                assert ws.subprotocol == "chat"
                assert token not in str(ws.response.headers)
                await ws.send("hi")
                assert await asyncio.wait_for(ws.recv(), 5) == "hi"
            assert handler.users[0]["sub"] == "alice"
            # A raw look at the 101 itself.
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            request = (f"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                       f"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                       f"Sec-WebSocket-Version: 13\r\n"
                       f"Sec-WebSocket-Protocol: chat, bearer.{token}\r\n\r\n")
            writer.write(request.encode())
            head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).decode()
            assert head.startswith("HTTP/1.1 101")
            assert "sec-websocket-protocol: chat\r\n" in head.lower()
            assert token not in head and "bearer" not in head.lower()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    run(main())
