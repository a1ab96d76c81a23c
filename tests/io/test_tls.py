"""TLS: wss:// with a throwaway certificate authority (trustme), every client against it."""

from __future__ import annotations

import asyncio
import ssl
from typing import NamedTuple

import aiohttp
import pytest
import trustme
import websockets
from websockets.asyncio.client import connect as ws_connect

import reinhardt_ws as rw

from ..core_helpers import Run, websockets_server, ws_echo
from ..fixtures import Recorder, running_server


class TLS(NamedTuple):
    server: ssl.SSLContext
    client: ssl.SSLContext


@pytest.fixture(scope="module")
def tls() -> TLS:
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server)
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(client)
    return TLS(server, client)


def wss_url(server: rw.Server, path: str = "/") -> str:
    return f"wss://localhost:{server.port}{path}"


BIG = bytes(range(256)) * 2000  # 512 KB: many TLS records, a buffered write


def test_websockets_client_over_tls(run: Run, tls: TLS) -> None:
    async def main() -> None:
        handler = Recorder(echo=True)
        async with running_server(handler, ssl=tls.server) as server:
            async with ws_connect(wss_url(server), ssl=tls.client) as ws:
                await ws.send("secret ✓")
                assert await ws.recv() == "secret ✓"
                await ws.send(BIG)
                assert await ws.recv() == BIG
                await ws.send('{"json": true}')
                assert await ws.recv() == '{"json": true}'
                await asyncio.wait_for(await ws.ping(b"tls"), 5)
                await ws.close(4010, "tls bye")
            conn = await asyncio.wait_for(handler.disconnected.get(), 5)
            assert (conn.close_code, conn.close_reason) == (4010, "tls bye")

    run(main())


def test_aiohttp_client_over_tls(run: Run, tls: TLS) -> None:
    async def main() -> None:
        async with running_server(Recorder(echo=True), ssl=tls.server) as server, \
                aiohttp.ClientSession() as session, \
                session.ws_connect(wss_url(server), ssl=tls.client) as ws:
            await ws.send_str("aio over tls")
            assert (await ws.receive(timeout=5)).data == "aio over tls"
            await ws.send_bytes(BIG)
            assert (await ws.receive(timeout=5)).data == BIG
            await ws.send_json({"a": 1})
            assert await ws.receive_json(timeout=5) == {"a": 1}

    run(main())


def test_our_client_against_our_server_over_tls(run: Run, tls: TLS) -> None:
    async def main() -> None:
        handler = Recorder(echo=True)
        async with running_server(handler, ssl=tls.server) as server:
            async with rw.connect(wss_url(server), ssl=tls.client) as conn:
                await conn.send_text("both ours")
                assert (await conn.recv()).data == "both ours"
                await conn.send_binary(BIG)
                assert (await conn.recv()).data == BIG
                assert await asyncio.wait_for(conn.ping(b"rtt"), 5) >= 0
            server_side = await asyncio.wait_for(handler.disconnected.get(), 5)
            assert server_side.close_code == 1000

    run(main())


def test_our_client_against_a_websockets_server_over_tls(run: Run, tls: TLS) -> None:
    async def main() -> None:
        async with websockets_server(ws_echo, ssl=tls.server, max_size=None) as url, \
                rw.connect(url, ssl=tls.client) as conn:
            await conn.send("wss ✓")
            assert (await conn.recv()).data == "wss ✓"
            await conn.send(BIG)
            assert (await conn.recv()).data == BIG

    run(main())


def test_untrusted_certificate_is_refused(run: Run, tls: TLS) -> None:
    async def main() -> None:
        async with running_server(Recorder(echo=True), ssl=tls.server) as server:
            # The default context does not trust our throwaway authority.
            with pytest.raises(ssl.SSLCertVerificationError):
                await rw.connect(wss_url(server))
            # The server is unharmed.
            async with rw.connect(wss_url(server), ssl=tls.client) as conn:
                await conn.send("ok")
                assert (await conn.recv()).data == "ok"

    run(main())


def test_plain_client_on_a_tls_port_fails_and_the_server_carries_on(run: Run, tls: TLS) -> None:
    async def main() -> None:
        handler = Recorder(echo=True)
        async with running_server(handler, ssl=tls.server, handshake_timeout=2) as server:
            with pytest.raises((rw.HandshakeError, OSError)):
                await rw.connect(f"ws://localhost:{server.port}/", open_timeout=2)
            async with rw.connect(wss_url(server), ssl=tls.client) as conn:
                await conn.send("fine")
                assert (await conn.recv()).data == "fine"
            await asyncio.wait_for(handler.disconnected.get(), 5)
            assert [kind for kind, _, _ in handler.events] == ["connect", "message", "disconnect"]

    run(main())


def test_shutdown_and_vanishing_peers_over_tls(run: Run, tls: TLS) -> None:
    async def main() -> None:
        handler = Recorder(echo=True)
        server = await rw.serve(handler, "127.0.0.1", 0, ssl=tls.server, ping_interval=None)
        try:
            vanishing = await ws_connect(wss_url(server), ssl=tls.client)
            staying = await ws_connect(wss_url(server), ssl=tls.client)
            vanishing.transport.abort()
            gone = await asyncio.wait_for(handler.disconnected.get(), 5)
            assert gone.close_code == 1006
            await server.close(timeout=2)
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(staying.recv(), 5)
            assert staying.close_code == 1001
            assert [code for kind, _, code in handler.events if kind == "disconnect"] == [
                1006, 1001]
            await staying.close()
            await vanishing.close()
        finally:
            await server.close()

    run(main())
