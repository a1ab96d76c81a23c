"""Our ``connect()`` against a server this project did not write: ``websockets``."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from http import HTTPStatus
from typing import Any

import pytest
import websockets
from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response
from websockets.utils import accept_key

import reinhardt_ws as rw

from ..core_helpers import Run, websockets_server, ws_echo
from ..fixtures import Recorder, eventually, running_server, url_of

WsHandler = Callable[[ServerConnection], Awaitable[None]]


class Observed:
    """A ``websockets`` handler that records how its connections ended."""

    def __init__(self, script: WsHandler | None = None) -> None:
        self.script = script
        self.closed: asyncio.Queue[tuple[int | None, str | None]] = asyncio.Queue()
        self.requests: list[Request] = []

    async def __call__(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        self.requests.append(ws.request)
        try:
            if self.script is not None:
                await self.script(ws)
            else:
                await ws_echo(ws)
            await ws.wait_closed()
        finally:
            self.closed.put_nowait((ws.close_code, ws.close_reason))


def switching_protocols(request: bytes, *extra: bytes, accept: bytes | None = None) -> bytes:
    key = next(line.split(b":", 1)[1].strip() for line in request.split(b"\r\n")
               if line.lower().startswith(b"sec-websocket-key"))
    accept = accept if accept is not None else accept_key(key.decode()).encode()
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n"
            + b"".join(extra) + b"\r\n")


@contextlib.asynccontextmanager
async def silent_ws_server() -> AsyncIterator[tuple[int, asyncio.Queue[asyncio.StreamWriter]]]:
    """Completes the opening handshake, then never says a word (nor answers pings)."""
    accepted: asyncio.Queue[asyncio.StreamWriter] = asyncio.Queue()
    writers: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        writer.write(switching_protocols(await reader.readuntil(b"\r\n\r\n")))
        accepted.put_nowait(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], accepted
    finally:
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


def test_connect_as_context_manager(run: Run) -> None:
    async def main() -> None:
        observed = Observed()
        async with websockets_server(observed) as url:
            async with rw.connect(url + "/room?x=1") as conn:
                assert isinstance(conn, rw.WebSocketConnection)
                assert conn.is_client
                assert not conn.is_closed
                assert conn.path == "/room?x=1"
                await conn.send_text("héllo")
                assert await conn.recv() == rw.Message.text("héllo")
                await conn.send_binary(b"\x00\xff")
                assert await conn.recv() == rw.Message.binary(b"\x00\xff")
                await conn.send(rw.Message.text("as message"))
                assert (await conn.recv()).data == "as message"
            # Leaving the block closes with 1000.
            assert conn.is_closed
            assert conn.close_code == 1000
            assert await asyncio.wait_for(observed.closed.get(), 5) == (1000, "")
            assert observed.requests[0].path == "/room?x=1"

    run(main())


def test_connect_awaited(run: Run) -> None:
    async def main() -> None:
        observed = Observed()
        async with websockets_server(observed) as url:
            conn = await rw.connect(url)
            try:
                await conn.send(b"bytes")
                assert (await conn.recv()).data == b"bytes"
                await conn.send(bytearray(b"ba"))
                assert (await conn.recv()).data == b"ba"
                await conn.send("str")
                assert (await conn.recv()).data == "str"
            finally:
                await conn.close(4000, "done here")
            assert await asyncio.wait_for(observed.closed.get(), 5) == (4000, "done here")
            assert (conn.close_code, conn.close_reason) == (4000, "done here")

    run(main())


def test_json_and_envelopes(run: Run) -> None:
    async def main() -> None:
        async with websockets_server(ws_echo) as url, rw.connect(url) as conn:
            await conn.send_json({"a": [1, None, "é"]})
            message = await conn.recv()
            assert message.type is rw.MessageType.TEXT
            assert message.parse_json() == {"a": [1, None, "é"]}
            envelope = rw.WebSocketMessage.text("hi").with_timestamp(5)
            await conn.send(envelope)
            assert rw.WebSocketMessage.from_json((await conn.recv()).data) == envelope
            with pytest.raises(rw.SendError):
                await conn.send_json(object())

    run(main())


def test_send_argument_types_are_checked(run: Run) -> None:
    async def main() -> None:
        async with websockets_server(ws_echo) as url, rw.connect(url) as conn:
            with pytest.raises(rw.SendError):
                await conn.send_text(b"x")  # type: ignore[arg-type]
            with pytest.raises(rw.SendError):
                await conn.send_binary("x")  # type: ignore[arg-type]
            with pytest.raises(rw.SendError):
                await conn.send(42)  # type: ignore[arg-type]
            with pytest.raises(rw.SendError):
                await conn.ping(b"x" * 126)
            await conn.send("still open")
            assert (await conn.recv()).data == "still open"

    run(main())


def test_fragmented_and_large_messages_from_the_server(run: Run) -> None:
    async def script(ws: ServerConnection) -> None:
        await ws.send(["frag", "ment", "ed ✓"])
        await ws.send([b"\x01", b"\x02\x03"])
        await ws.send("y" * 300_000)

    async def main() -> None:
        async with websockets_server(Observed(script)) as url, rw.connect(url) as conn:
            assert (await conn.recv()).data == "fragmented ✓"
            assert (await conn.recv()).data == b"\x01\x02\x03"
            assert (await conn.recv()).data == "y" * 300_000

    run(main())


def test_ping_waits_for_the_pong(run: Run) -> None:
    async def main() -> None:
        async with websockets_server(ws_echo) as url, rw.connect(url) as conn:
            rtt = await asyncio.wait_for(conn.ping(b"abc"), 5)
            assert isinstance(rtt, float)
            assert rtt >= 0
            # Several pings in flight: each returns once its pong arrives.
            rtts = await asyncio.wait_for(
                asyncio.gather(conn.ping(b"1"), conn.ping(b"2"), conn.ping()), 5)
            assert all(r >= 0 for r in rtts)

    run(main())


def test_ping_raises_connection_closed_if_no_pong_before_close(run: Run) -> None:
    async def main() -> None:
        # A websockets server answers pings by itself; a raw server that never
        # answers lets the ping stay pending until the connection goes away.
        async with silent_ws_server() as (port, accepted):
            conn = await rw.connect(f"ws://127.0.0.1:{port}", close_timeout=0.2)
            writer = await asyncio.wait_for(accepted.get(), 5)
            pending = asyncio.ensure_future(conn.ping(b"lost"))
            await asyncio.sleep(0)
            writer.transport.abort()  # TCP reset, no close frame, no pong
            with pytest.raises(rw.ConnectionClosed) as info:
                await asyncio.wait_for(pending, 5)
            assert info.value.code == 1006
            assert conn.close_code == 1006

    run(main())


def test_client_keepalive_drops_a_silent_server(run: Run) -> None:
    async def main() -> None:
        async with silent_ws_server() as (port, accepted):
            conn = await rw.connect(f"ws://127.0.0.1:{port}", ping_interval=0.2,
                                    ping_timeout=0.2)
            writer = await asyncio.wait_for(accepted.get(), 5)
            with pytest.raises(rw.ConnectionClosed) as info:
                await asyncio.wait_for(conn.recv(), 5)
            assert info.value.code == 1001
            await conn.wait_closed()
            assert conn.close_code == 1001
            assert writer.transport is not None

    run(main())


def test_client_keepalive_spares_a_server_that_answers(run: Run) -> None:
    async def main() -> None:
        pings: asyncio.Queue[bytes] = asyncio.Queue()

        async def answering(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(switching_protocols(await reader.readuntil(b"\r\n\r\n")))
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                while True:  # client frames: masked, short
                    b0, b1 = await reader.readexactly(2)
                    mask = await reader.readexactly(4)
                    data = bytes(b ^ mask[i % 4] for i, b in enumerate(
                        await reader.readexactly(b1 & 0x7F)))
                    if b0 & 0x0F == 0x9:
                        pings.put_nowait(data)
                        writer.write(bytes((0x8A, len(data))) + data)  # the pong
                    elif b0 & 0x0F == 0x8:
                        writer.write(bytes((0x88, len(data))) + data)
                        break
            writer.close()

        server = await asyncio.start_server(answering, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            async with rw.connect(f"ws://127.0.0.1:{port}", ping_interval=0.05,
                                  ping_timeout=0.05) as conn:
                for _ in range(3):  # three keepalive pings, each answered in time
                    await asyncio.wait_for(pings.get(), 5)
                assert not conn.is_closed
            assert conn.close_code == 1000
        finally:
            server.close()
            await server.wait_closed()

    run(main())


def test_server_close_reaches_recv_and_every_send(run: Run) -> None:
    async def script(ws: ServerConnection) -> None:
        await ws.send("last words")
        await ws.close(4005, "server done")

    async def main() -> None:
        async with websockets_server(Observed(script)) as url, rw.connect(url) as conn:
            assert (await conn.recv()).data == "last words"
            with pytest.raises(rw.ConnectionClosed) as info:
                await conn.recv()
            assert (info.value.code, info.value.reason) == (4005, "server done")
            assert isinstance(info.value, rw.ReceiveError)
            await conn.wait_closed()
            assert conn.is_closed
            assert (conn.close_code, conn.close_reason) == (4005, "server done")
            sends: list[Callable[[], Awaitable[Any]]] = [
                lambda: conn.send("x"), lambda: conn.send_text("x"),
                lambda: conn.send_binary(b"x"), lambda: conn.send_json([1]),
                lambda: conn.send(rw.Message.text("x")), lambda: conn.ping(b"x"),
            ]
            for send in sends:
                with pytest.raises(rw.ConnectionClosed) as info:
                    await send()
                assert (info.value.code, info.value.reason) == (4005, "server done")
                assert isinstance(info.value, rw.SendError)
            with pytest.raises(rw.ConnectionClosed):
                await conn.recv()
            await conn.close()  # idempotent

    run(main())


def test_async_iteration_ends_at_close(run: Run) -> None:
    async def script(ws: ServerConnection) -> None:
        for i in range(3):
            await ws.send(str(i))
        await ws.close()

    async def main() -> None:
        async with websockets_server(Observed(script)) as url, rw.connect(url) as conn:
            received = [message.data async for message in conn]
            assert received == ["0", "1", "2"]
            assert conn.close_code == 1000

    run(main())


def test_close_code_and_reason_validation(run: Run) -> None:
    async def main() -> None:
        observed = Observed()
        async with websockets_server(observed) as url, rw.connect(url) as conn:
            for code in (999, 1005, 1006, 1015, 5000):
                with pytest.raises(ValueError):
                    await conn.close(code)
            with pytest.raises(ValueError):
                await conn.close(1000, "x" * 124)
            assert not conn.is_closed
            await conn.send(rw.Message.close(4444, "via send"))
            assert conn.is_closed
            assert await asyncio.wait_for(observed.closed.get(), 5) == (4444, "via send")

    run(main())


def test_the_server_pings_and_our_client_answers(run: Run) -> None:
    async def script(ws: ServerConnection) -> None:
        latency = await asyncio.wait_for(await ws.ping(b"from server"), 5)
        await ws.send(f"pong received {latency >= 0}")

    async def main() -> None:
        async with websockets_server(Observed(script)) as url, rw.connect(url) as conn:
            assert (await conn.recv()).data == "pong received True"

    run(main())


def test_subprotocols_and_headers(run: Run) -> None:
    async def main() -> None:
        observed = Observed()
        async with websockets_server(observed, subprotocols=["v2", "v1"]) as url:
            async with rw.connect(url, subprotocols=["v1", "v2"],
                                  extra_headers={"X-Token": "secret"}) as conn:
                assert conn.subprotocol in ("v1", "v2")
                assert conn.headers["sec-websocket-protocol"] == conn.subprotocol
                assert conn.headers["Upgrade"].lower() == "websocket"
                assert conn.headers["UPGRADE"] == conn.headers["upgrade"]
                assert conn.remote_address[0] == "127.0.0.1"
            request = observed.requests[0]
            assert request.headers["x-token"] == "secret"
            assert request.headers["sec-websocket-protocol"] == "v1, v2"
        async with websockets_server(ws_echo) as url, rw.connect(url, subprotocols=["v1"]) as conn:
            assert conn.subprotocol is None  # the server picked none

    run(main())


def test_client_connections_have_unique_ids_and_their_own_user_data(run: Run) -> None:
    async def main() -> None:
        async with websockets_server(ws_echo) as url, rw.connect(url) as a, rw.connect(url) as b:
            assert a.id != b.id
            a.user_data["who"] = "a"
            assert b.user_data == {}
            assert "WebSocketConnection" in repr(a)

    run(main())


def test_client_message_size_limit(run: Run) -> None:
    async def script(ws: ServerConnection) -> None:
        await ws.send("x" * 1000)
        assert await ws.recv() == "got it"
        await ws.send("z" * 2000)

    async def main() -> None:
        observed = Observed(script)
        async with websockets_server(observed) as url, \
                rw.connect(url, max_message_size=1000) as conn:
            assert (await conn.recv()).data == "x" * 1000  # the limit itself is fine
            await conn.send("got it")
            with pytest.raises(rw.ConnectionClosed) as info:
                await conn.recv()
            assert info.value.code == 1009
            code, _reason = await asyncio.wait_for(observed.closed.get(), 5)
            assert code == 1009
            await conn.wait_closed()
            assert conn.close_code == 1009

    run(main())


def test_a_failed_client_connection_leaves_no_unretrieved_error(run: Run) -> None:
    # picows keeps the error that ended a client connection in a future; nobody
    # awaits it, and asyncio must not log "Future exception was never retrieved".
    async def script(ws: ServerConnection) -> None:
        await ws.send("z" * 2000)

    async def session(url: str) -> None:
        async with rw.connect(url, max_message_size=1000) as conn:
            with pytest.raises(rw.ConnectionClosed):
                await conn.recv()
            await conn.wait_closed()

    async def main() -> None:
        reports: list[dict[str, Any]] = []
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: reports.append(ctx))
        async with websockets_server(Observed(script)) as url:
            await session(url)
            for _ in range(3):
                await asyncio.sleep(0)  # let picows finish tearing down
            gc.collect()
        assert [ctx["message"] for ctx in reports] == []

    run(main())


def test_handshake_error_from_process_request(run: Run) -> None:
    def refuse(connection: ServerConnection, request: Request) -> Response | None:
        if request.path == "/private":
            return connection.respond(HTTPStatus.FORBIDDEN, "keep out\n")
        return None

    async def main() -> None:
        async with websockets_server(ws_echo, process_request=refuse) as url:
            with pytest.raises(rw.HandshakeError) as info:
                await rw.connect(url + "/private")
            assert info.value.status == 403
            assert b"keep out" in info.value.body
            with pytest.raises(rw.HandshakeError) as info:
                async with rw.connect(url + "/private"):
                    raise AssertionError("not reached")
            assert info.value.status == 403
            async with rw.connect(url + "/public") as conn:
                await conn.send("ok")
                assert (await conn.recv()).data == "ok"

    run(main())


def test_handshake_error_from_a_plain_http_server(run: Run) -> None:
    async def main() -> None:
        async def not_found(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\n"
                         b"Connection: close\r\n\r\nnot here\r\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(not_found, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises(rw.HandshakeError) as info:
                await rw.connect(f"ws://127.0.0.1:{port}/")
            assert info.value.status == 404
            assert isinstance(info.value, rw.WebSocketError)
        finally:
            server.close()
            await server.wait_closed()

    run(main())


async def raw_http_server(answer: Callable[[bytes], bytes | None]
                          ) -> tuple[asyncio.Server, int]:
    """A TCP server that reads one request and writes ``answer(request)`` (None: hang up)."""

    async def respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        reply = answer(request)
        if reply is not None:
            writer.write(reply)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(respond, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize("case", ["hang-up", "bad-accept", "unoffered-subprotocol", "not-http"])
def test_handshake_errors_from_misbehaving_servers(run: Run, case: str) -> None:
    answers: dict[str, Callable[[bytes], bytes | None]] = {
        "hang-up": lambda request: None,
        "bad-accept": lambda request: switching_protocols(request, accept=b"AAAA"),
        "unoffered-subprotocol": lambda request: switching_protocols(
            request, b"Sec-WebSocket-Protocol: evil\r\n"),
        "not-http": lambda request: b"SSH-2.0-OpenSSH\r\n\r\n",
    }

    async def main() -> None:
        server, port = await raw_http_server(answers[case])
        try:
            with pytest.raises(rw.HandshakeError):
                await rw.connect(f"ws://127.0.0.1:{port}/", subprotocols=["good"])
        finally:
            server.close()
            await server.wait_closed()

    run(main())


def test_open_timeout_on_a_server_that_never_answers(run: Run) -> None:
    async def main() -> None:
        writers: list[asyncio.StreamWriter] = []

        async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.append(writer)

        server = await asyncio.start_server(mute, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises(rw.HandshakeError) as info:
                await rw.connect(f"ws://127.0.0.1:{port}", open_timeout=0.2)
            assert info.value.status is None
        finally:
            for writer in writers:
                writer.close()
            server.close()
            await server.wait_closed()

    run(main())


def test_connection_refused_is_an_os_error(run: Run) -> None:
    async def main() -> None:
        from ..fixtures import free_port

        with pytest.raises(OSError):
            await rw.connect(f"ws://127.0.0.1:{free_port()}")

    run(main())


@pytest.mark.pure
def test_connect_rejects_other_schemes() -> None:
    with pytest.raises(ValueError):
        rw.connect("http://127.0.0.1:1/")


def test_recv_on_a_server_connection_is_refused(run: Run) -> None:
    async def main() -> None:
        handler = Recorder()
        async with running_server(handler) as server, rw.connect(url_of(server)):
            conn = await asyncio.wait_for(handler.connected.get(), 5)
            with pytest.raises(RuntimeError):
                await conn.recv()

    run(main())


def test_client_backpressure_pauses_reading(run: Run) -> None:
    # The client's inbound queue is bounded too: with nobody calling recv(), the
    # client stops reading and the server's writes eventually wait.
    async def script(ws: ServerConnection) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            for i in range(10_000):
                await ws.send(json.dumps([i, "p" * 1000]))

    async def main() -> None:
        # Uncompressed: compressed, one read would carry hundreds of these messages.
        async with websockets_server(Observed(script), write_limit=1024) as url, \
                rw.connect(url, max_queue=4, close_timeout=30, compression=None) as conn:
            await eventually(lambda: conn._reading_paused)
            # Bounded: max_queue plus what one read had already brought in.
            assert len(conn._inbox) < 100
            for expected in range(50):
                assert json.loads((await conn.recv()).data)[0] == expected
            # Closing reads again, so the server's close frame gets through
            # the backlog: no waiting for close_timeout.
            await asyncio.wait_for(conn.close(), 5)
            assert conn.close_code == 1000

    run(main())
