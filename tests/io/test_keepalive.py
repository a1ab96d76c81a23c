"""Keep-alive from one timer per server (``reinhardt_ws._keepalive``): no task per
connection, pings only for silent connections, 1001 for the dead ones, with raw
clients on real sockets, both loops and both fan-outs.

(The basic promises, a silent peer dropped with 1001 and an answering one spared,
also with a websockets client, are in test_server_lifecycle.py and, for the client
side, test_client.py.)"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

import reinhardt_ws as rw

from ..core_helpers import PING, PONG, TEXT, Run
from ..fixtures import RawClient, Recorder, client_frame, eventually, running_server


def test_idle_connections_cost_no_task_each(run: Run) -> None:
    """With the default keep-alive (20 s), 50 open connections add no task (picows'
    own keep-alive ran one per connection) and share one sweep."""

    async def main() -> None:
        handler = Recorder()
        async with running_server(handler, ping_interval=20.0, ping_timeout=20.0) as server:
            assert server._keepalive is not None and server._keepalive.running
            clients = [await RawClient.open(server.port)]
            await eventually(lambda: len(server.connections) == 1)
            await asyncio.sleep(0.05)
            before = len(asyncio.all_tasks())
            try:
                for _ in range(49):
                    clients.append(await RawClient.open(server.port))
                await eventually(lambda: len(server.connections) == 50)
                await asyncio.sleep(0.05)  # let any per-connection task start
                assert len(asyncio.all_tasks()) - before < 5
            finally:
                for client in clients:
                    await client.close()
        assert not server._keepalive.running  # closing the server stops the sweep

    run(main())


def test_traffic_defers_the_ping_and_silence_brings_it(run: Run) -> None:
    """A connection that keeps sending gets no ping; once silent, it gets one no
    sooner than ping_interval after its last frame."""
    interval = 0.3

    async def main() -> None:
        handler = Recorder(echo=True)
        async with running_server(handler, ping_interval=interval,
                                  ping_timeout=interval) as server:
            client = await RawClient.open(server.port)
            loop = asyncio.get_running_loop()
            try:
                last = loop.time()
                for i in range(12):  # 1.2 s of traffic, a frame every 0.1 s
                    await asyncio.sleep(0.1)
                    last = loop.time()
                    client.send(client_frame(TEXT, f"m{i}".encode()))
                    assert await client.read_frame() == (TEXT, True, f"m{i}".encode())
                opcode, _fin, payload = await client.read_frame()
                assert opcode == PING and payload
                assert loop.time() - last >= interval * 0.95
                client.send(client_frame(PONG, payload))
                client.send(client_frame(TEXT, b"alive"))
                assert await client.read_frame() == (TEXT, True, b"alive")
                assert handler.disconnected.empty()
            finally:
                await client.close()

    run(main())


def test_any_pong_answers_the_keepalive_ping(run: Run) -> None:
    """A pong acknowledges every earlier ping: one that does not echo the payload
    (as a unidirectional heartbeat would) keeps the connection open too."""

    async def main() -> None:
        handler = Recorder()
        async with running_server(handler, ping_interval=0.1, ping_timeout=0.1) as server:
            client = await RawClient.open(server.port)
            try:
                for _ in range(3):
                    opcode, _fin, _payload = await client.read_frame()
                    assert opcode == PING
                    client.send(client_frame(PONG, b"heartbeat"))
                assert handler.disconnected.empty()
                assert server.stats()["limits"].get("ping_timeout") is None
            finally:
                await client.close()

    run(main())


@pytest.mark.parametrize("peers", [20])
def test_silent_peers_are_closed_1001_and_dropped_at_once(run: Run, peers: int) -> None:
    """Every silent connection of the sweep gets its ping, then close 1001 with the
    reason, and TCP drops without waiting close_timeout (30 s here); each counts as
    a ``ping_timeout`` limit hit.  A connection that answers is spared."""

    async def main() -> None:
        handler = Recorder()
        async with running_server(handler, ping_interval=0.2, ping_timeout=0.2,
                                  close_timeout=30) as server:
            silent = [await RawClient.open(server.port) for _ in range(peers)]
            alive = await RawClient.open(server.port)

            async def answer() -> None:
                with contextlib.suppress(Exception):
                    while True:
                        opcode, _fin, payload = await alive.read_frame(timeout=30)
                        if opcode == PING:
                            alive.send(client_frame(PONG, payload))

            answering = asyncio.ensure_future(answer())
            try:
                for client in silent:
                    opcode, _fin, _payload = await client.read_frame()
                    assert opcode == PING  # never answered
                for client in silent:
                    opcode, _fin, payload = await client.read_frame()
                    assert opcode == 0x8
                    assert int.from_bytes(payload[:2], "big") == 1001
                    assert payload[2:] == b"no pong within 0.2 s"
                    assert await asyncio.wait_for(client.reader.read(), 2) == b""
                await eventually(lambda: len(server.connections) == 1)
                stats = server.stats()
                assert stats["limits"]["ping_timeout"] == peers
                assert stats["closed"] == {1001: peers}
                assert not answering.done()  # the answering one is still open
            finally:
                answering.cancel()
                for client in (*silent, alive):
                    await client.close()

    run(main())


@pytest.mark.parametrize("settings", [
    {"ping_interval": 0}, {"ping_interval": -1.0}, {"ping_timeout": 0},
    {"ping_interval": 1.0, "ping_timeout": 2.0},
])
def test_keepalive_settings_are_checked(settings: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="ping_"):
        rw.ServerOptions(**settings)
    with pytest.raises(ValueError, match="ping_"):
        rw.ClientOptions(**settings)
