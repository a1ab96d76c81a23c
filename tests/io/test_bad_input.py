"""Bad input: what the server answers, and that only the offending connection suffers."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import connect as ws_connect

import reinhardt_ws as rw

from ..core_helpers import BINARY, CLOSE, CONT, PING, TEXT, Run, close_payload, event_kinds
from ..fixtures import RawClient, Recorder, client_frame, handshake_request, running_server, url_of


async def expect_close(client: RawClient, code: int) -> None:
    """The server's close frame carries *code*; answer it, then see TCP end."""
    assert await client.read_close() == code
    client.send(client_frame(CLOSE, close_payload(1000)))
    assert await asyncio.wait_for(client.reader.read(), 5) == b""


async def echo_still_works(server: rw.Server) -> None:
    async with ws_connect(url_of(server)) as ws:
        await ws.send("still alive")
        assert await asyncio.wait_for(ws.recv(), 5) == "still alive"


# -- oversized messages ------------------------------------------------------------


@pytest.mark.parametrize("fragments", [["x" * 1001], ["x" * 600, "x" * 401]],
                         ids=["one-frame", "fragmented"])
def test_oversized_message_gets_1009_and_others_carry_on(run: Run, fragments: list[str]) -> None:
    async def main() -> None:
        handler = Recorder(echo=True)
        async with running_server(handler, max_message_size=1000) as server, \
                ws_connect(url_of(server)) as bystander:
            await bystander.send("before")
            assert await bystander.recv() == "before"
            async with ws_connect(url_of(server)) as offender:
                await offender.send("x" * 1000)  # exactly the limit is fine
                assert await offender.recv() == "x" * 1000
                await offender.send(fragments if len(fragments) > 1 else fragments[0])
                with pytest.raises(websockets.ConnectionClosed):
                    await offender.recv()
                assert offender.close_code == 1009
            gone = await asyncio.wait_for(handler.disconnected.get(), 5)
            assert gone.close_code == 1009
            assert event_kinds(handler, gone.id) == ["connect", "message", "disconnect"]
            await bystander.send("after")
            assert await bystander.recv() == "after"
            assert not handler.disconnected.qsize()

    run(main())


def test_oversized_frame_from_a_raw_client(run: Run) -> None:
    # A frame over the limit is refused by its header, before its payload arrives.
    async def main() -> None:
        handler = Recorder(echo=True)
        async with running_server(handler, max_message_size=100) as server:
            client = await RawClient.open(server.port)
            try:
                client.send(client_frame(BINARY, b"x" * 100_000))
                assert await client.read_close() == 1009
                conn = await asyncio.wait_for(handler.disconnected.get(), 5)
                assert conn.close_code == 1009  # what picows sent, not 1006
                assert event_kinds(handler, conn.id) == ["connect", "disconnect"]
            finally:
                await client.close()
            await echo_still_works(server)

    run(main())


# -- invalid UTF-8 -------------------------------------------------------------------


@pytest.mark.parametrize("frames", [
    [client_frame(TEXT, b"caf\xc3")],
    [client_frame(TEXT, b"\xff\xfe")],
    [client_frame(TEXT, b"ok ", fin=False), client_frame(CONT, b"bad \xed\xa0\x80", fin=False)],
    [client_frame(TEXT, b"\xe2\x82", fin=False), client_frame(CONT, b"")],
], ids=["truncated", "invalid-byte", "bad-fragment", "truncated-over-fragments"])
def test_invalid_utf8_gets_1007(run: Run, frames: list[bytes]) -> None:
    async def main() -> None:
        handler = Recorder(echo=True)
        async with running_server(handler, close_timeout=30) as server:
            client = await RawClient.open(server.port)
            try:
                client.send(client_frame(TEXT, "fine ✓".encode()))
                assert await client.read_frame() == (TEXT, True, "fine ✓".encode())
                client.send(b"".join(frames))
                await expect_close(client, 1007)
            finally:
                await client.close()
            conn = await asyncio.wait_for(handler.disconnected.get(), 5)
            assert conn.close_code == 1007
            assert event_kinds(handler, conn.id) == ["connect", "message", "disconnect"]
            await echo_still_works(server)

    run(main())


def test_invalid_utf8_is_fine_in_binary(run: Run) -> None:
    async def main() -> None:
        async with running_server(Recorder(echo=True)) as server:
            client = await RawClient.open(server.port)
            try:
                client.send(client_frame(BINARY, b"\xff\xfe"))
                assert await client.read_frame() == (BINARY, True, b"\xff\xfe")
            finally:
                await client.close()

    run(main())


# -- protocol violations -----------------------------------------------------------------


def unmasked(opcode: int, payload: bytes) -> bytes:
    return bytes((0x80 | opcode, len(payload))) + payload


@pytest.mark.parametrize(("frames", "code"), [
    ([client_frame(TEXT, b"x", rsv=4)], 1002),
    ([client_frame(PING, b"", rsv=1)], 1002),
    ([unmasked(TEXT, b"x")], 1002),
    ([client_frame(CONT, b"x")], 1002),
    ([client_frame(TEXT, b"a", fin=False), client_frame(BINARY, b"b")], 1002),
    ([client_frame(0x3, b"")], 1002),
    ([client_frame(PING, b"", fin=False)], 1002),
    ([client_frame(PING, b"x" * 126)], 1002),
    ([client_frame(CLOSE, b"\x03")], 1002),
    ([client_frame(CLOSE, close_payload(1005))], 1002),
    ([client_frame(CLOSE, close_payload(999))], 1002),
    ([client_frame(CLOSE, close_payload(5000))], 1002),
    ([client_frame(CLOSE, close_payload(1000, b"\xff"))], 1007),
], ids=["rsv-data", "rsv-control", "unmasked", "orphan-continuation", "interleaved",
        "bad-opcode", "fragmented-ping", "long-ping", "one-byte-close", "close-1005",
        "close-999", "close-5000", "close-bad-utf8"])
def test_protocol_violations_are_refused(run: Run, frames: list[bytes], code: int) -> None:
    async def main() -> None:
        handler = Recorder(echo=True)
        # A long close_timeout: the server must drop TCP by itself, promptly.
        async with running_server(handler, close_timeout=30) as server:
            client = await RawClient.open(server.port)
            try:
                client.send(b"".join(frames) + client_frame(TEXT, b"never delivered"))
                assert await client.read_close() == code
                if frames[0][0] & 0x0F != CLOSE:
                    # A peer that has not sent a close frame yet answers ours
                    # (one that has must not send another); either way TCP ends.
                    client.send(client_frame(CLOSE, close_payload(1000)))
                assert await asyncio.wait_for(client.reader.read(), 5) == b""
            finally:
                await client.close()
            conn = await asyncio.wait_for(handler.disconnected.get(), 5)
            assert conn.close_code == code
            assert event_kinds(handler, conn.id) == ["connect", "disconnect"]
            await echo_still_works(server)

    run(main())


@pytest.mark.parametrize("bad_close", [close_payload(1005), close_payload(1), b"\x03"],
                         ids=["close-1005", "close-1", "one-byte-close"])
def test_nothing_is_delivered_after_a_refused_close_frame(run: Run, bad_close: bytes) -> None:
    # picows refuses these close frames itself (1002); a peer that keeps talking
    # must not reach the handler, nor change how the connection ended.
    async def main() -> None:
        handler = Recorder(echo=True)
        async with running_server(handler, close_timeout=30) as server:
            client = await RawClient.open(server.port)
            try:
                client.send(client_frame(CLOSE, bad_close))
                assert await client.read_close() == 1002
                client.send(client_frame(TEXT, b"after the close")
                            + client_frame(CLOSE, close_payload(1000)))
                assert await asyncio.wait_for(client.reader.read(), 5) == b""
            finally:
                await client.close()
            conn = await asyncio.wait_for(handler.disconnected.get(), 5)
            assert conn.close_code == 1002
            assert event_kinds(handler, conn.id) == ["connect", "disconnect"]

    run(main())


def test_picows_logs_under_the_reinhardt_ws_logger(run: Run,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    # Configuring logging.getLogger("reinhardt_ws") must cover what picows reports
    # about our connections (the CLI quiets "reinhardt_ws.picows").
    async def main() -> None:
        async with running_server(Recorder()) as server:
            client = await RawClient.open(server.port)
            try:
                client.send(client_frame(0x3, b""))  # picows refuses the opcode
                assert await client.read_close() == 1002
            finally:
                await client.close()

    with caplog.at_level(logging.INFO):
        run(main())
    refused = [r for r in caplog.records if "invalid opcode" in r.getMessage()]
    assert refused
    assert all(r.name.startswith("reinhardt_ws.picows") for r in refused), [
        r.name for r in refused]


# -- handshakes ------------------------------------------------------------------------


def _request(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


GARBAGE_HANDSHAKES = {
    "not-http": b"hello there\r\n\r\n",
    "binary": b"\x00\xff\xfe\x16\x03\x01\r\n\r\n",
    # A POST upgrade (now 405), HTTP/1.0 and a plain GET (now 404) and version 12
    # (now 426): tests/io/test_handshake_http.py.
    "no-key": _request("GET / HTTP/1.1", "Host: x", "Upgrade: websocket",
                       "Connection: Upgrade", "Sec-WebSocket-Version: 13"),
    "bad-key": _request("GET / HTTP/1.1", "Host: x", "Upgrade: websocket",
                        "Connection: Upgrade", "Sec-WebSocket-Key: short",
                        "Sec-WebSocket-Version: 13"),
    "bad-header": _request("GET / HTTP/1.1", "Host x"),
}


@pytest.mark.parametrize("request_bytes", list(GARBAGE_HANDSHAKES.values()),
                         ids=list(GARBAGE_HANDSHAKES))
def test_garbage_handshake_gets_400(run: Run, request_bytes: bytes) -> None:
    async def main() -> None:
        handler = Recorder(echo=True)
        async with running_server(handler) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            try:
                writer.write(request_bytes)
                answer = await asyncio.wait_for(reader.read(), 5)  # then the server hangs up
            finally:
                writer.close()
                await writer.wait_closed()
            assert answer.startswith(b"HTTP/1.1 400 "), answer
            assert server.connections == frozenset()
            assert handler.events == []
            await echo_still_works(server)
            # Refused handshakes leave nothing behind for close() to wait on.
            started = asyncio.get_running_loop().time()
            await server.close(timeout=5)
            assert asyncio.get_running_loop().time() - started < 2

    run(main())


def test_http_handler_answers_plain_requests(run: Run) -> None:
    def http(path: str, headers: Any) -> rw.HTTPResponse | None:
        if path == "/health":
            return rw.HTTPResponse(200, b"ok\n", headers={"X-Check": headers.get("x-probe", "")})
        if path == "/missing":
            return rw.HTTPResponse(404, b"no such page\n")
        return None

    async def fetch(port: int, path: str) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(_request(f"GET {path} HTTP/1.1", "Host: x", "X-Probe: yes"))
            return await asyncio.wait_for(reader.read(), 5)
        finally:
            writer.close()
            await writer.wait_closed()

    async def main() -> None:
        handler = Recorder(echo=True)
        async with running_server(handler, http_handler=http) as server:
            health = await fetch(server.port, "/health")
            assert health.startswith(b"HTTP/1.1 200 ")
            assert b"x-check: yes" in health.lower()
            assert health.endswith(b"ok\n")
            assert (await fetch(server.port, "/missing")).startswith(b"HTTP/1.1 404 ")
            # Not handled by http_handler: 404 (picows used to answer 400).
            assert (await fetch(server.port, "/other")).startswith(b"HTTP/1.1 404 ")
            # Upgrades still work on every path.
            async with ws_connect(url_of(server, "/health")) as ws:
                await ws.send("hi")
                assert await ws.recv() == "hi"
            assert handler.events[0][0] == "connect"

    run(main())


def test_handshake_split_over_many_writes(run: Run) -> None:
    async def main() -> None:
        async with running_server(Recorder(echo=True)) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            client = RawClient(reader, writer)
            try:
                request = handshake_request(server.port)
                for i in range(0, len(request), 7):
                    writer.write(request[i:i + 7])
                    await writer.drain()
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                assert head.startswith(b"HTTP/1.1 101 ")
                client.send(client_frame(TEXT, b"hi"))
                assert await client.read_frame() == (TEXT, True, b"hi")
            finally:
                await client.close()

    run(main())


# -- peers that vanish ---------------------------------------------------------------------


def test_peer_that_vanishes_gets_on_disconnect_once(run: Run) -> None:
    async def main() -> None:
        handler = Recorder(echo=True)
        async with running_server(handler) as server:
            client = await RawClient.open(server.port)
            client.send(client_frame(TEXT, b"hello"))
            assert await client.read_frame() == (TEXT, True, b"hello")
            client.writer.transport.abort()  # no close frame: TCP reset
            await client.close()
            conn = await asyncio.wait_for(handler.disconnected.get(), 5)
            assert conn.close_code == 1006
            assert conn.is_closed
            assert event_kinds(handler, conn.id) == ["connect", "message", "disconnect"]
            assert server.connections == frozenset()
            with pytest.raises(rw.ConnectionClosed) as info:
                await conn.send("into the void")
            assert info.value.code == 1006
        assert event_kinds(handler, conn.id).count("disconnect") == 1

    run(main())


def test_peer_that_vanishes_mid_message(run: Run) -> None:
    async def main() -> None:
        handler = Recorder(echo=True)
        async with running_server(handler) as server:
            client = await RawClient.open(server.port)
            client.send(client_frame(TEXT, b"part", fin=False) + client_frame(TEXT, b"x" * 50)[:20])
            await asyncio.sleep(0)
            client.writer.close()  # FIN in the middle of a frame, no close frame
            await client.close()
            conn = await asyncio.wait_for(handler.disconnected.get(), 5)
            assert conn.close_code == 1006
            assert event_kinds(handler, conn.id) == ["connect", "disconnect"]

    run(main())


def test_websockets_client_dropping_tcp(run: Run) -> None:
    async def main() -> None:
        handler = Recorder(echo=True)
        async with running_server(handler) as server:
            async with ws_connect(url_of(server)) as ws:
                await ws.send("x")
                assert await ws.recv() == "x"
                ws.transport.abort()
            conn = await asyncio.wait_for(handler.disconnected.get(), 5)
            assert conn.close_code == 1006
            await echo_still_works(server)

    run(main())


# -- handlers that raise --------------------------------------------------------------------


class Fragile(Recorder):
    """Echoes; raises on "boom" in on_message, and in on_connect for path /fragile."""

    async def on_connect(self, conn: rw.WebSocketConnection) -> None:
        await super().on_connect(conn)
        if conn.path == "/fragile":
            raise RuntimeError("on_connect failed on purpose")

    async def on_message(self, conn: rw.WebSocketConnection, message: rw.Message) -> None:
        if message.data == "boom":
            self.events.append(("message", conn.id, message))
            raise RuntimeError("on_message failed on purpose")
        await super().on_message(conn, message)

    async def on_disconnect(self, conn: rw.WebSocketConnection) -> None:
        await super().on_disconnect(conn)
        raise RuntimeError("on_disconnect failed on purpose: only logged")


def test_handler_that_raises_closes_only_its_connection_with_1011(run: Run) -> None:
    async def main() -> None:
        handler = Fragile(echo=True)
        async with running_server(handler) as server, \
                ws_connect(url_of(server)) as bystander, ws_connect(url_of(server)) as victim:
            await victim.send("boom")
            await victim.send("queued behind the failure: dropped")
            with pytest.raises(websockets.ConnectionClosed):
                await victim.recv()
            assert victim.close_code == 1011
            gone = await asyncio.wait_for(handler.disconnected.get(), 5)
            assert gone.close_code == 1011
            assert event_kinds(handler, gone.id) == ["connect", "message", "disconnect"]
            await bystander.send("fine")
            assert await bystander.recv() == "fine"
            await echo_still_works(server)

    run(main())


def test_on_connect_that_raises_closes_with_1011(run: Run) -> None:
    async def main() -> None:
        handler = Fragile(echo=True)
        async with running_server(handler) as server:
            async with ws_connect(url_of(server, "/fragile")) as ws:
                with pytest.raises(websockets.ConnectionClosed):
                    await ws.recv()
                assert ws.close_code == 1011
            gone = await asyncio.wait_for(handler.disconnected.get(), 5)
            assert gone.close_code == 1011
            # No on_message after a failed on_connect; on_disconnect still runs, once.
            assert event_kinds(handler, gone.id) == ["connect", "disconnect"]
            await echo_still_works(server)

    run(main())
