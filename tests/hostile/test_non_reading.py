"""Issue 10 item 7: what a client can pin in server memory is bounded in bytes.

Ten clients connect to the ``block`` app of server_app.py (its ``on_message``
never returns for ``/block``), each sends ``max_queue`` (16) messages of 1 MiB as
fast as the server reads them, and never reads.  The server's RSS growth per
client stays within the documented worst case, while a bystander's echo round
trip stays under 250 ms.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from .harness import (
    BINARY,
    ZERO_MASK,
    Bystander,
    MiB,
    RssSampler,
    ServerProcess,
    frame,
    handshake_request,
    mib,
    report,
)

pytestmark = pytest.mark.slow

CLIENTS = 10
MAX_QUEUE = 16  # the server's default
MESSAGE = 1 * MiB  # the default max_message_size
#: The documented worst case of one connection whose handler does not keep up
#: (docs/security.md, "Memory per connection"), with the default 1 MiB limits:
#: the message being handled (1 MiB), the inbox (max_queue_bytes, 1 MiB, plus the
#: one message that crossed it), a message being assembled (1 MiB) and picows'
#: read buffer (up to twice the largest frame): 8 MiB.  Before the inbox had a
#: byte bound, such a client pinned about 21 MiB (16 queued 1 MiB messages).
PER_CLIENT_BOUND = 8 * MiB
#: A client stops sending when the server has not read for this long.
STALL = 2.0


async def flood(port: int) -> tuple[int, asyncio.StreamWriter]:
    """Connect to /block and send MAX_QUEUE messages of 1 MiB while the server
    reads; return how many went out (in the kernel or further)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(handshake_request(port, "/block"))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 101"), head
    writer.transport.set_write_buffer_limits(high=64 * 1024)
    message = frame(BINARY, b"m" * MESSAGE, mask=ZERO_MASK)
    for n in range(MAX_QUEUE):
        writer.write(message)
        try:
            await asyncio.wait_for(writer.drain(), STALL)
        except (asyncio.TimeoutError, TimeoutError):
            return n, writer  # the server stopped reading: it holds at most this many
    return MAX_QUEUE, writer


async def attack(port: int) -> list[int]:
    results = await asyncio.gather(*(flood(port) for _ in range(CLIENTS)))
    await asyncio.sleep(1.0)  # let the server take in what the kernel holds
    sent = [n for n, _w in results]
    for _n, writer in results:
        writer.transport.abort()
    return sent


def test_non_reading_clients_pin_bounded_memory(implementation: str, tmp_path: Path) -> None:
    with ServerProcess.app("block", implementation, tmp_path) as server:
        with Bystander(server.port) as bystander, RssSampler(server) as rss:
            time.sleep(0.3)
            start = time.monotonic()
            loop = asyncio.new_event_loop()
            try:
                # Measured while the clients still hold their connections open.
                sent = loop.run_until_complete(asyncio.wait_for(attack(server.port), 60))
            finally:
                loop.close()
            attack_s = time.monotonic() - start
        blocked = server.http_json("/debug/stats")["blocked"]
    growth = rss.growth
    per_client = growth / CLIENTS
    report("non-reading clients", implementation=implementation, clients=CLIENTS,
           messages_sent_per_client=sent, handlers_blocked=blocked, attack_s=attack_s,
           rss_baseline=mib(rss.baseline), rss_growth=mib(growth),
           per_client=mib(int(per_client)), bystander=bystander.summary())
    assert blocked == CLIENTS  # each client's first message is stuck in on_message
    assert per_client <= PER_CLIENT_BOUND, (
        f"each non-reading client pins {mib(int(per_client))} (bound {mib(PER_CLIENT_BOUND)})")
    assert not bystander.check(), bystander.check()
