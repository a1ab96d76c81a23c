"""The server's life: start, port 0, shutdown, timeouts, keepalive and inbound backpressure."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import connect as ws_connect

import reinhardt_ws as rw

from ..core_helpers import BINARY, PING, PONG, TEXT, Run
from ..fixtures import (
    RawClient,
    Recorder,
    client_frame,
    eventually,
    free_port,
    running_server,
    url_of,
)


def disconnect_codes(handler: Recorder) -> list[Any]:
    return [code for kind, _cid, code in handler.events if kind == "disconnect"]


# -- starting ----------------------------------------------------------------------


def test_port_zero_picks_a_free_port(run: Run) -> None:
    async def main() -> None:
        server = rw.serve(Recorder(), "127.0.0.1", 0)
        with pytest.raises(RuntimeError):
            _ = server.port  # not listening yet
        assert server.sockets == ()
        assert await server is server
        try:
            assert server.port > 0
            assert server.sockets[0].getsockname()[1] == server.port
            assert await server.start() is server  # idempotent
            async with ws_connect(url_of(server)):
                pass
        finally:
            await server.close(timeout=2)

    run(main())


def test_explicit_port(run: Run) -> None:
    async def main() -> None:
        port = free_port()
        async with rw.serve(Recorder(echo=True), "127.0.0.1", port, ping_interval=None) as server:
            assert server.port == port
            async with ws_connect(f"ws://127.0.0.1:{port}/") as ws:
                await ws.send("x")
                assert await ws.recv() == "x"

    run(main())


def test_async_context_manager_closes_with_1001(run: Run) -> None:
    async def main() -> None:
        handler = Recorder(echo=True)
        async with rw.serve(handler, "127.0.0.1", 0, ping_interval=None) as server:
            port = server.port
            ws = await ws_connect(url_of(server))
            await ws.send("hi")
            assert await ws.recv() == "hi"
        # Leaving the block closed the connection (1001) and ran on_disconnect.
        assert disconnect_codes(handler) == [1001]
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 1001
        await ws.close()
        with pytest.raises(OSError):
            await ws_connect(f"ws://127.0.0.1:{port}/", open_timeout=2)

    run(main())


@pytest.mark.pure
def test_serve_checks_its_arguments() -> None:
    with pytest.raises(TypeError):
        rw.serve(object(), "127.0.0.1", 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        rw.serve(Recorder(), ping_interval=1, ping_timeout=2)
    with pytest.raises(ValueError):
        rw.serve(Recorder(), slow_consumer="ignore")
    with pytest.raises(ValueError):
        rw.serve(Recorder(), max_message_size=0)
    with pytest.raises(ValueError):
        rw.serve(Recorder(), max_queue=0)


# -- shutting down --------------------------------------------------------------------


@pytest.mark.parametrize("code", [None, 1012, 4000])
def test_close_closes_every_connection_with_its_code(run: Run, code: int | None) -> None:
    async def main() -> None:
        handler = Recorder(echo=True)
        server = await rw.serve(handler, "127.0.0.1", 0, ping_interval=None)
        clients = [await ws_connect(url_of(server)) for _ in range(5)]
        try:
            await eventually(lambda: len(server.connections) == 5)
            if code is None:
                await server.close(timeout=2)
            else:
                await server.close(code=code, timeout=2)
            expected = 1001 if code is None else code
            # close() returns after every on_disconnect ran.
            assert disconnect_codes(handler) == [expected] * 5
            assert server.connections == frozenset()
            for ws in clients:
                with pytest.raises(websockets.ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), 5)
                assert ws.close_code == expected
        finally:
            for ws in clients:
                await ws.close()
            await server.close()

    run(main())


def test_close_rejects_codes_that_may_not_be_sent(run: Run) -> None:
    async def main() -> None:
        async with running_server(Recorder()) as server:
            with pytest.raises(ValueError):
                await server.close(code=1006)

    run(main())


def test_close_is_idempotent_and_concurrent(run: Run) -> None:
    async def main() -> None:
        handler = Recorder()
        server = await rw.serve(handler, "127.0.0.1", 0, ping_interval=None)
        async with ws_connect(url_of(server)):
            await asyncio.wait_for(handler.connected.get(), 5)
            await asyncio.wait_for(asyncio.gather(server.close(), server.close()), 5)
            await asyncio.wait_for(server.close(), 5)
        assert disconnect_codes(handler) == [1001]

    run(main())


def test_serve_forever_returns_when_closed(run: Run) -> None:
    async def main() -> None:
        server = rw.serve(Recorder(), "127.0.0.1", 0, ping_interval=None)
        forever = asyncio.ensure_future(server.serve_forever())
        await eventually(lambda: bool(server.sockets))
        assert not forever.done()
        await server.close()
        await asyncio.wait_for(forever, 5)

    run(main())


def test_close_gives_up_on_a_peer_that_never_answers(run: Run) -> None:
    async def main() -> None:
        handler = Recorder()
        server = await rw.serve(handler, "127.0.0.1", 0, ping_interval=None, close_timeout=30)
        client = await RawClient.open(server.port)
        try:
            await asyncio.wait_for(handler.connected.get(), 5)
            loop = asyncio.get_running_loop()
            started = loop.time()
            closing = asyncio.ensure_future(server.close(timeout=0.3))
            assert await client.read_close() == 1001  # never answered
            await asyncio.wait_for(closing, 5)
            assert loop.time() - started < 2
            assert disconnect_codes(handler) == [1001]
            assert await asyncio.wait_for(client.reader.read(), 5) == b""
        finally:
            await client.close()

    run(main())


class Stuck(Recorder):
    """on_message never returns by itself."""

    async def on_message(self, conn: rw.WebSocketConnection, message: rw.Message) -> None:
        self.events.append(("message", conn.id, message))
        await asyncio.Event().wait()


def test_close_cancels_a_stuck_handler_and_still_runs_on_disconnect(run: Run) -> None:
    async def main() -> None:
        handler = Stuck()
        server = await rw.serve(handler, "127.0.0.1", 0, ping_interval=None)
        async with ws_connect(url_of(server)) as ws:
            await ws.send("never answered")
            await eventually(lambda: len(handler.events) == 2)
            loop = asyncio.get_running_loop()
            started = loop.time()
            await asyncio.wait_for(server.close(timeout=0.3), 5)
            assert loop.time() - started < 1
            assert [kind for kind, _, _ in handler.events] == ["connect", "message", "disconnect"]
            assert disconnect_codes(handler) == [1001]

    run(main())


def test_new_connections_after_close_are_refused(run: Run) -> None:
    async def main() -> None:
        server = await rw.serve(Recorder(), "127.0.0.1", 0, ping_interval=None)
        port = server.port
        await server.close()
        with pytest.raises(OSError):
            await rw.connect(f"ws://127.0.0.1:{port}/")

    run(main())


# -- handshake timeout and keepalive --------------------------------------------------


@pytest.mark.parametrize("sent", [b"", b"GET / HTTP/1.1\r\nHost: x\r\n"], ids=["silent", "partial"])
def test_handshake_timeout(run: Run, sent: bytes) -> None:
    async def main() -> None:
        handler = Recorder()
        async with running_server(handler, handshake_timeout=0.2) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            try:
                writer.write(sent)
                # The server hangs up by itself: nothing else ends this read.
                assert await asyncio.wait_for(reader.read(), 5) == b""
            finally:
                writer.close()
                await writer.wait_closed()
            assert handler.events == []
            assert server.connections == frozenset()

    run(main())


def test_ping_timeout_drops_a_silent_peer(run: Run) -> None:
    async def main() -> None:
        handler = Recorder()
        async with running_server(handler, ping_interval=0.2, ping_timeout=0.2) as server:
            silent = await RawClient.open(server.port)
            try:
                opcode, _fin, _payload = await silent.read_frame()
                assert opcode == PING
                assert await silent.read_close() == 1001
                assert await asyncio.wait_for(silent.reader.read(), 5) == b""
            finally:
                await silent.close()
            conn = await asyncio.wait_for(handler.disconnected.get(), 5)
            assert conn.close_code == 1001

    run(main())


def test_keepalive_spares_a_peer_that_answers(run: Run) -> None:
    async def main() -> None:
        handler = Recorder(echo=True)
        async with running_server(handler, ping_interval=0.1, ping_timeout=0.1) as server:
            client = await RawClient.open(server.port)
            try:
                for _ in range(3):
                    opcode, _fin, payload = await client.read_frame()
                    assert opcode == PING
                    client.send(client_frame(PONG, payload))
                client.send(client_frame(TEXT, b"still here"))
                assert await client.read_frame() == (TEXT, True, b"still here")
                assert handler.disconnected.empty()
            finally:
                await client.close()

    run(main())


def test_keepalive_with_a_websockets_client(run: Run) -> None:
    async def main() -> None:
        handler = Recorder(echo=True)
        async with running_server(handler, ping_interval=0.1, ping_timeout=0.1) as server, \
                ws_connect(url_of(server), ping_interval=None) as ws:
            conn = await asyncio.wait_for(handler.connected.get(), 5)
            # websockets answers our keepalive pings by itself: several intervals
            # pass (each one ends with our ping answered) and nothing closes.
            for _ in range(3):
                await ws.send("tick")
                assert await asyncio.wait_for(ws.recv(), 5) == "tick"
                await asyncio.wait_for(conn.ping(b"probe"), 5)
            assert not conn.is_closed

    run(main())


# -- inbound backpressure ----------------------------------------------------------------


class Blocking(rw.WebSocketHandler):
    """Counts messages and checks their order; on_message waits for ``gate``."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.count = 0
        self.in_order = True
        self.conn: rw.WebSocketConnection | None = None
        self.connected = asyncio.Event()

    async def on_connect(self, conn: rw.WebSocketConnection) -> None:
        self.conn = conn
        self.connected.set()

    async def on_message(self, conn: rw.WebSocketConnection, message: rw.Message) -> None:
        await self.gate.wait()
        if int.from_bytes(message.payload[:4], "big") != self.count:
            self.in_order = False
        self.count += 1


def test_slow_handler_stops_the_server_reading_that_socket(run: Run) -> None:
    async def main() -> None:
        handler = Blocking()
        async with running_server(handler, max_queue=4, max_message_size=None) as server:
            slow = await RawClient.open(server.port)
            await asyncio.wait_for(handler.connected.wait(), 5)
            conn = handler.conn
            assert conn is not None
            other = await RawClient.open(server.port)
            try:
                transport = conn._ws.underlying_transport  # the server's side of `slow`
                padding = b"p" * 65532
                sent = 0

                def send_one() -> None:
                    nonlocal sent
                    slow.send(client_frame(BINARY, sent.to_bytes(4, "big") + padding))
                    sent += 1

                for _ in range(8):
                    send_one()
                await eventually(lambda: not transport.is_reading())
                # With the server not reading, the client's writes pile up in its
                # own buffer once the kernel's buffers are full.
                while slow.writer.transport.get_write_buffer_size() < 1 << 20:
                    assert sent < 2048, "the server kept reading"
                    send_one()
                    await asyncio.sleep(0)
                assert not transport.is_reading()
                assert handler.count == 0
                # Other connections are read as usual.
                other.send(client_frame(PING, b"other"))
                assert await other.read_frame() == (PONG, True, b"other")
                # Once the handler catches up, reading resumes and nothing was lost.
                handler.gate.set()
                await asyncio.wait_for(slow.writer.drain(), 10)
                await eventually(lambda: handler.count == sent, timeout=10)
                assert handler.in_order
                assert transport.is_reading()
            finally:
                await slow.close()
                await other.close()

    run(main())
