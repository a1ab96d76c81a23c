"""Slowloris: many connections that send their opening handshake one byte per
second.  Each is dropped once ``handshake_timeout`` (5 s, the CLI's default) has
passed; a bystander's echo round trip stays under 250 ms and a new client still
completes its handshake at once.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from .harness import Bystander, ServerProcess, SyncClient, handshake_request, report

pytestmark = pytest.mark.slow

SLOW_CLIENTS = 200
HANDSHAKE_TIMEOUT = 5.0  # the CLI's default
MARGIN = 2.5


async def slow_client(port: int, ends: list[float], answers: list[bytes]) -> None:
    start = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = handshake_request(port)

    async def trickle() -> None:
        for i in range(len(request)):
            writer.write(request[i:i + 1])
            await asyncio.sleep(1.0)

    dripping = asyncio.ensure_future(trickle())
    try:
        data = b""
        while True:
            try:
                chunk = await asyncio.wait_for(reader.read(4096),
                                               HANDSHAKE_TIMEOUT + MARGIN + 3)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
        answers.append(data)
    except (asyncio.TimeoutError, TimeoutError):
        answers.append(b"<still open>")
    finally:
        ends.append(time.monotonic() - start)
        dripping.cancel()
        writer.close()


async def attack(port: int) -> tuple[list[float], list[bytes], float]:
    ends: list[float] = []
    answers: list[bytes] = []
    tasks = [asyncio.ensure_future(slow_client(port, ends, answers))
             for _ in range(SLOW_CLIENTS)]
    await asyncio.sleep(2.0)
    loop = asyncio.get_running_loop()
    start = time.monotonic()
    fresh = await loop.run_in_executor(None, SyncClient.connect, port)
    fresh_s = time.monotonic() - start
    fresh.close()
    await asyncio.gather(*tasks)
    return ends, answers, fresh_s


def test_slowloris_handshakes_time_out(implementation: str, tmp_path: Path) -> None:
    with ServerProcess.cli("echo", implementation, tmp_path, "--log-level", "WARNING") as server, \
            Bystander(server.port) as bystander:
        time.sleep(0.3)
        ends, answers, fresh_s = asyncio.run(asyncio.wait_for(attack(server.port), 30))
    upgraded = sum(1 for a in answers if a.startswith(b"HTTP/1.1 101"))
    still_open = sum(1 for a in answers if a == b"<still open>")
    report("slowloris", implementation=implementation, clients=SLOW_CLIENTS,
           dropped_after_min_s=min(ends), dropped_after_max_s=max(ends),
           still_open=still_open, upgraded=upgraded, fresh_handshake_s=fresh_s,
           bystander=bystander.summary())
    assert upgraded == 0
    assert still_open == 0
    assert max(ends) <= HANDSHAKE_TIMEOUT + MARGIN, (
        f"a slow handshake lived {max(ends):.1f} s (handshake_timeout {HANDSHAKE_TIMEOUT} s)")
    assert fresh_s < 1.0
    assert not bystander.check(), bystander.check()
