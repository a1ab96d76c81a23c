"""The client's reconnection: ``async for conn in connect(url)`` against real
servers that drop it, go away and come back, or refuse it; and the backoff."""

from __future__ import annotations

import asyncio
import itertools
from http import HTTPStatus

import pytest
from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

import reinhardt_ws as rw

from ..core_helpers import Run, websockets_server, ws_echo
from ..fixtures import Recorder, free_port

FAST = rw.Backoff(initial=0.02, max_delay=0.1)


@pytest.mark.pure
def test_backoff_delays_and_checks() -> None:
    plain = rw.Backoff(jitter=0)
    assert list(itertools.islice(plain.delays(), 7)) == [1, 2, 4, 8, 16, 30, 30]
    for n, delay in enumerate(itertools.islice(rw.Backoff().delays(), 200)):
        base = min(30.0, 2.0 ** n) if n < 6 else 30.0
        assert base * 0.9 <= delay <= base * 1.1
    for bad in ({"initial": -1}, {"initial": 2, "max_delay": 1}, {"factor": 0.5},
                {"jitter": 1}, {"jitter": -0.1}, {"max_attempts": 0}):
        with pytest.raises(ValueError):
            rw.Backoff(**bad)  # type: ignore[arg-type]


def test_reconnects_after_a_drop_and_an_outage(run: Run) -> None:
    async def main() -> None:
        handler = Recorder(echo=True)
        port = free_port()
        server = await rw.serve(handler, "127.0.0.1", port, ping_interval=None)
        url = f"ws://127.0.0.1:{port}/"
        seen: list[str] = []
        restarted: rw.Server | None = None
        async for conn in rw.connect(url, backoff=FAST):
            seen.append(conn.id)
            await conn.send(f"hello {len(seen)}")
            assert (await conn.recv()).payload == f"hello {len(seen)}".encode()
            if len(seen) == 1:
                server_side = await handler.connected.get()
                await server_side.close(1011)  # the server drops it
                with pytest.raises(rw.ConnectionClosed):
                    await conn.recv()
                continue
            if len(seen) == 2:
                await server.close(timeout=1)  # the server goes away for a while

                async def come_back() -> None:
                    nonlocal restarted
                    await asyncio.sleep(0.3)
                    restarted = await rw.serve(handler, "127.0.0.1", port, ping_interval=None)

                later = asyncio.create_task(come_back())
                with pytest.raises(rw.ConnectionClosed):
                    await conn.recv()
                continue
            await later
            await conn.close()
            break
        assert len(seen) == 3 and len(set(seen)) == 3
        assert restarted is not None
        await restarted.close(timeout=1)

    run(main())


def test_gives_up_after_max_attempts_and_on_a_refusal(run: Run) -> None:
    def refuse(connection: ServerConnection, request: Request) -> Response | None:
        return connection.respond(HTTPStatus.FORBIDDEN, "no\n")

    async def main() -> None:
        url = f"ws://127.0.0.1:{free_port()}/"  # nobody listens
        attempts = rw.Backoff(initial=0.01, max_delay=0.02, max_attempts=3)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(OSError):
            async for _conn in rw.connect(url, backoff=attempts):
                raise AssertionError("not reached")
        assert loop.time() - started < 5
        async with websockets_server(ws_echo, process_request=refuse) as refusing:
            with pytest.raises(rw.HandshakeError) as info:
                async for _conn in rw.connect(refusing, backoff=FAST):
                    raise AssertionError("not reached")
            assert info.value.status == 403
        # a plain connect() is unchanged: one attempt
        with pytest.raises(OSError):
            await rw.connect(url)

    run(main())
