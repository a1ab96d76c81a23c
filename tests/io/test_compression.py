"""permessage-deflate over real sockets: negotiation in the 101, RSV1 on the wire,
the decompression-bomb limit, and interop with python-websockets and aiohttp
(both ways where they have a side to talk to)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import zlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from websockets.asyncio.client import connect as ws_connect

import reinhardt_ws as rw
from reinhardt_ws.protocol.extensions.permessage_deflate import DeflateParameters

from ..core_helpers import Run, websockets_server, ws_echo
from ..fixtures import Recorder, client_frame, running_server, url_of

TEXT, BINARY, CONT, CLOSE = 0x1, 0x2, 0x0, 0x8
RSV1 = 4  # client_frame()'s rsv argument: RSV1 << 2 | RSV2 << 1 | RSV3

COMPRESSIBLE = '{"type":"chat","room":"lobby","text":"hello, everyone"}' * 30
INCOMPRESSIBLE = os.urandom(2000)


def deflate_raw(data: bytes, wbits: int = 15) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -wbits)
    return (c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]


def inflate_raw(data: bytes, wbits: int = 15) -> bytes:
    return zlib.decompressobj(-wbits).decompress(data + b"\x00\x00\xff\xff")


class DeflateRawClient:
    """A hand-driven client that offers permessage-deflate and reads RSV1."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 head: bytes) -> None:
        self.reader, self.writer, self.head = reader, writer, head

    @classmethod
    async def open(cls, port: int, offer: str | None, path: str = "/") -> DeflateRawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        extra = f"Sec-WebSocket-Extensions: {offer}\r\n" if offer is not None else ""
        writer.write((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n{extra}"
                      "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer, head)

    def extensions_header(self) -> str | None:
        for line in self.head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "sec-websocket-extensions":
                return value.strip()
        return None

    async def read_frame(self, timeout: float = 5.0) -> tuple[int, bool, bytes]:
        """(opcode, rsv1, payload) of the next server frame."""
        async def read() -> tuple[int, bool, bytes]:
            b0, b1 = await self.reader.readexactly(2)
            n = b1 & 0x7F
            if n == 126:
                n = int.from_bytes(await self.reader.readexactly(2), "big")
            elif n == 127:
                n = int.from_bytes(await self.reader.readexactly(8), "big")
            return b0 & 0x0F, bool(b0 & 0x40), await self.reader.readexactly(n)
        return await asyncio.wait_for(read(), timeout)

    async def read_close(self) -> int | None:
        while True:
            opcode, _rsv1, payload = await self.read_frame()
            if opcode == CLOSE:
                return int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


@contextlib.asynccontextmanager
async def raw(server: rw.Server, offer: str | None = "permessage-deflate; client_max_window_bits"
              ) -> AsyncIterator[DeflateRawClient]:
    client = await DeflateRawClient.open(server.port, offer)
    try:
        yield client
    finally:
        await client.close()


# -- the server, seen from the wire ------------------------------------------------

def test_server_negotiates_and_compresses_what_pays(run: Run) -> None:
    async def main() -> None:
        handler = Recorder(echo=True)
        async with running_server(handler) as server, raw(server) as client:
            assert client.extensions_header() == (
                "permessage-deflate; server_no_context_takeover; client_max_window_bits=12")
            conn = await asyncio.wait_for(handler.connected.get(), 5)
            assert conn.extension is not None
            # A compressed text message in, echoed compressed: RSV1 and a 12-bit window.
            client.writer.write(client_frame(TEXT, deflate_raw(COMPRESSIBLE.encode(), 12),
                                             rsv=RSV1))
            opcode, rsv1, payload = await client.read_frame()
            assert (opcode, rsv1) == (TEXT, True)
            assert len(payload) < len(COMPRESSIBLE) // 5
            assert inflate_raw(payload, 12).decode() == COMPRESSIBLE
            # Incompressible and tiny messages go plain.
            client.writer.write(client_frame(BINARY, INCOMPRESSIBLE))
            assert await client.read_frame() == (BINARY, False, INCOMPRESSIBLE)
            client.writer.write(client_frame(TEXT, deflate_raw(b"hi"), rsv=RSV1))
            assert await client.read_frame() == (TEXT, False, b"hi")
            # A fragmented compressed message: RSV1 on the first frame only.
            wire = deflate_raw(COMPRESSIBLE.encode(), 12)
            half = len(wire) // 2
            client.writer.write(client_frame(TEXT, wire[:half], fin=False, rsv=RSV1)
                                + client_frame(CONT, wire[half:]))
            opcode, rsv1, payload = await client.read_frame()
            assert rsv1 and inflate_raw(payload, 12).decode() == COMPRESSIBLE
        messages = [m for kind, _, m in handler.events if kind == "message"]
        assert [m.data for m in messages] == [COMPRESSIBLE, INCOMPRESSIBLE, "hi", COMPRESSIBLE]

    run(main())


def test_no_offer_or_compression_off_means_plain_and_rsv1_is_1002(run: Run) -> None:
    async def main() -> None:
        async with running_server(Recorder(echo=True), compression=None) as server, \
                raw(server) as client:
            assert client.extensions_header() is None
            client.writer.write(client_frame(TEXT, COMPRESSIBLE.encode()))
            assert await client.read_frame() == (TEXT, False, COMPRESSIBLE.encode())
            client.writer.write(client_frame(TEXT, deflate_raw(b"x" * 300), rsv=RSV1))
            assert await client.read_close() == 1002
        async with running_server(Recorder(echo=True)) as server, raw(server, None) as client:
            assert client.extensions_header() is None
            client.writer.write(client_frame(TEXT, deflate_raw(b"x" * 300), rsv=RSV1))
            assert await client.read_close() == 1002

    run(main())


def test_refused_offers_and_the_first_acceptable_one(run: Run) -> None:
    async def main() -> None:
        async with running_server(Recorder(echo=True)) as server:
            async with raw(server, "permessage-deflate; bogus=1") as client:
                assert client.extensions_header() is None
            async with raw(server, "x-webkit-deflate-frame, permessage-deflate; "
                                   "server_max_window_bits=99, permessage-deflate; "
                                   "server_max_window_bits=10") as client:
                assert client.extensions_header() == (
                    "permessage-deflate; server_no_context_takeover; server_max_window_bits=10")
                client.writer.write(client_frame(TEXT, COMPRESSIBLE.encode()))
                _op, rsv1, payload = await client.read_frame()
                assert rsv1 and inflate_raw(payload, 10).decode() == COMPRESSIBLE

    run(main())


@pytest.mark.parametrize("fragmented", [False, True], ids=["one-frame", "fragments"])
def test_decompression_bomb_is_1009_with_bounded_output(run: Run, fragmented: bool) -> None:
    """64 MiB of zeros in about 64 KiB on the wire, against a 256 KiB limit."""
    async def main() -> None:
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        bomb = b"".join(c.compress(bytes(1 << 20)) for _ in range(64))
        bomb = (bomb + c.flush(zlib.Z_SYNC_FLUSH))[:-4]
        handler = Recorder()
        async with running_server(handler, max_message_size=256 * 1024) as server, \
                raw(server, "permessage-deflate") as client:
            if fragmented:
                frames = [client_frame(BINARY, bomb[:1024], fin=False, rsv=RSV1)]
                frames += [client_frame(CONT, bomb[i:i + 1024], fin=False)
                           for i in range(1024, len(bomb), 1024)]
                client.writer.write(b"".join(frames))
            else:
                client.writer.write(client_frame(BINARY, bomb, rsv=RSV1))
            assert await client.read_close() == 1009
        assert not [e for e in handler.events if e[0] == "message"]

    run(main())


def test_corrupt_compressed_data_is_1007(run: Run) -> None:
    async def main() -> None:
        async with running_server(Recorder(echo=True)) as server, raw(server) as client:
            client.writer.write(client_frame(BINARY, b"\xff" * 64, rsv=RSV1))
            assert await client.read_close() == 1007

    run(main())


def test_rsv1_on_a_continuation_frame_is_1002(run: Run) -> None:
    async def main() -> None:
        async with running_server(Recorder(echo=True)) as server, raw(server) as client:
            wire = deflate_raw(b"abc" * 100)
            client.writer.write(client_frame(TEXT, wire[:5], fin=False, rsv=RSV1)
                                + client_frame(CONT, wire[5:], rsv=RSV1))
            assert await client.read_close() == 1002

    run(main())


# -- interop -----------------------------------------------------------------------------

def test_websockets_client_with_default_settings(run: Run) -> None:
    async def main() -> None:
        # ws_connect offers permessage-deflate by default.
        async with running_server(Recorder(echo=True)) as server, \
                ws_connect(url_of(server)) as ws:
            assert ws.response is not None
            assert ws.response.headers["Sec-WebSocket-Extensions"] == (
                "permessage-deflate; server_no_context_takeover; client_max_window_bits=12")
            for message in (COMPRESSIBLE, INCOMPRESSIBLE, "small", COMPRESSIBLE):
                await ws.send(message)
                assert await asyncio.wait_for(ws.recv(), 5) == message

    run(main())


def test_aiohttp_client_compress_15(run: Run) -> None:
    async def main() -> None:
        async with running_server(Recorder(echo=True)) as server, \
                aiohttp.ClientSession() as session, \
                session.ws_connect(url_of(server), compress=15) as ws:
            assert ws._response.headers["Sec-WebSocket-Extensions"] == (
                "permessage-deflate; server_no_context_takeover; client_max_window_bits=12")
            assert ws.compress == 12  # it offered 15 bits; our server allows 12
            for message in (COMPRESSIBLE, COMPRESSIBLE, "tiny"):
                await ws.send_str(message)
                assert (await ws.receive(5)).data == message
            await ws.send_bytes(INCOMPRESSIBLE)
            assert (await ws.receive(5)).data == INCOMPRESSIBLE

    run(main())


async def _exchange(conn: rw.WebSocketConnection) -> None:
    for message in (COMPRESSIBLE, INCOMPRESSIBLE, "tiny", COMPRESSIBLE * 3):
        await conn.send(message)
        assert (await asyncio.wait_for(conn.recv(), 5)).data == message


def test_our_client_against_websockets_server(run: Run) -> None:
    async def main() -> None:
        async with websockets_server(ws_echo) as url, rw.connect(url) as conn:
            assert conn.extension is not None
            # websockets' server defaults: windows of 12 bits, context kept.
            assert conn.extension.params == DeflateParameters(False, False, 12, 12)
            await _exchange(conn)

    run(main())


def test_our_client_against_aiohttp_server(run: Run) -> None:
    async def main() -> None:
        async def echo(request: web.Request) -> web.WebSocketResponse:
            ws = web.WebSocketResponse(compress=True)
            await ws.prepare(request)
            async for msg in ws:
                if msg.type is aiohttp.WSMsgType.TEXT:
                    await ws.send_str(msg.data)
                elif msg.type is aiohttp.WSMsgType.BINARY:
                    await ws.send_bytes(msg.data)
            return ws

        app = web.Application()
        app.router.add_get("/", echo)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            async with rw.connect(f"ws://127.0.0.1:{port}/") as conn:
                assert conn.extension is not None
                assert "permessage-deflate" in conn.headers["sec-websocket-extensions"]
                await _exchange(conn)
        finally:
            await runner.cleanup()

    run(main())


def test_our_client_and_server(run: Run) -> None:
    async def main() -> None:
        handler = Recorder(echo=True)
        async with running_server(handler) as server, rw.connect(url_of(server)) as conn:
            assert conn.extension is not None
            assert conn.extension.params == DeflateParameters(True, False, None, 12)
            assert conn.headers["sec-websocket-extensions"] == (
                "permessage-deflate; server_no_context_takeover; client_max_window_bits=12")
            await _exchange(conn)
        async with running_server(handler) as server, \
                rw.connect(url_of(server), compression=None) as conn:
            assert conn.extension is None
            await _exchange(conn)

    run(main())


def test_client_refuses_an_answer_it_did_not_ask_for(run: Run) -> None:
    async def main() -> None:
        async def process_response(connection: Any, request: Any, response: Any) -> None:
            response.headers["Sec-WebSocket-Extensions"] = "permessage-deflate; nonsense"

        async with websockets_server(ws_echo, compression=None,
                                     process_response=process_response) as url:
            with pytest.raises(rw.HandshakeError, match="permessage-deflate"):
                await rw.connect(url)
            with pytest.raises(rw.HandshakeError, match="did not offer"):
                await rw.connect(url, compression=None)

    run(main())


def test_options_validate_compression() -> None:
    with pytest.raises(ValueError, match="compression"):
        rw.ServerOptions(compression="gzip")
    with pytest.raises(ValueError, match="compression"):
        rw.ClientOptions(compression="brotli")
    assert rw.ServerOptions(compression=rw.DeflateSettings(level=1)).compression == \
        rw.DeflateSettings(level=1)
