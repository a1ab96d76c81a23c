"""Issue 10 item 6: a closed connection's memory comes back at once, without the
cyclic garbage collector.

The ``gc`` app of server_app.py runs an echo server with ``gc.disable()`` and keeps
a weak registry of its connections.  After 2,000 connections opened, used and
closed (cleanly, abruptly, and closed while a message is in flight), the
connections still alive must be about none: nothing but reference counting freed
them.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from pathlib import Path

import pytest

from .harness import (
    CLOSE,
    TEXT,
    ServerProcess,
    close_payload,
    frame,
    handshake_request,
    mib,
    report,
    until,
)

pytestmark = pytest.mark.slow

CONNECTIONS = 2_000
CONCURRENCY = 50
#: Connections that may still be alive once every socket is gone ("about zero").
ALLOWED_ALIVE = 5


async def one_connection(port: int, n: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(handshake_request(port))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 101"), head
        writer.write(frame(TEXT, f"hello {n}".encode()))
        style = n % 3
        if style == 2:
            # Send and reset at once: the echo meets a connection already gone.
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return
        await asyncio.wait_for(reader.readexactly(2 + len(f"hello {n}")), 10)
        if style == 0:  # the closing handshake, then TCP ends
            writer.write(frame(CLOSE, close_payload(1000)))
            await asyncio.wait_for(reader.read(), 10)
        else:  # TCP reset without a close frame
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        writer.close()


async def churn(port: int) -> None:
    limit = asyncio.Semaphore(CONCURRENCY)

    async def bounded(n: int) -> None:
        async with limit:
            await one_connection(port, n)

    await asyncio.gather(*(bounded(n) for n in range(CONNECTIONS)))


def test_closed_connections_need_no_cyclic_gc(implementation: str, tmp_path: Path) -> None:
    with ServerProcess.app("gc", implementation, tmp_path) as server:
        before = server.http_json("/debug/stats")
        assert before["gc_enabled"] is False
        rss_before = server.rss()
        start = time.monotonic()
        asyncio.run(asyncio.wait_for(churn(server.port), 60))
        churn_s = time.monotonic() - start
        assert until(lambda: server.http_json("/debug/stats")["open"] == 0, 10)
        time.sleep(0.2)
        after = server.http_json("/debug/stats")
        rss_after = server.rss()
        collected = server.http_json("/debug/collect")
        rss_collected = server.rss()
    report("gc cycles", implementation=implementation, connections=CONNECTIONS,
           churn_s=churn_s, connects=after["connects"], alive_after_close=after["alive"],
           tracked_after_close=after["tracked"], gc_collect_found=collected["collected"],
           alive_after_collect=collected["alive"], rss_before=mib(rss_before),
           rss_after=mib(rss_after), rss_after_collect=mib(rss_collected))
    assert after["connects"] == CONNECTIONS
    assert collected["alive"] <= ALLOWED_ALIVE  # the registry itself does not leak
    assert after["alive"] <= ALLOWED_ALIVE, (
        f"{after['alive']} of {CONNECTIONS} closed connections stay alive until the cyclic "
        f"GC runs")
