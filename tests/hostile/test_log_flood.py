"""Issue 10 item 9: client misbehaviour must not flood the server's log.

For five seconds, clients connect to ``python -m reinhardt_ws echo`` (default log
level INFO, as users run it) and misbehave in every way a frame can: reserved
opcodes and bits, unmasked and fragmented control frames, bad UTF-8, oversized
frames, bad close codes, garbage instead of a handshake, or a message and an
immediate reset.  The server's stderr stays under 64 KiB, and a bystander's echo
round trip under 250 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from pathlib import Path

import pytest

from .harness import (
    BINARY,
    CLOSE,
    CONT,
    PING,
    TEXT,
    ZERO_MASK,
    Bystander,
    MiB,
    ServerProcess,
    close_payload,
    frame,
    handshake_request,
    report,
)

pytestmark = pytest.mark.slow

FLOOD_SECONDS = 5.0
WORKERS = 4
MAX_LOG = 64 * 1024
MAX_CONNECTIONS = 5_000  # a bound on the attack, whatever the server's speed

MALFORMED: dict[str, bytes] = {
    "reserved opcode": frame(0x3, b"x"),
    "reserved control opcode": frame(0xB, b"x"),
    "unmasked": frame(TEXT, b"hello", masked=False),
    "rsv1 on text": frame(TEXT, b"x", rsv=4),
    "rsv on ping": frame(PING, b"x", rsv=2),
    "fragmented ping": frame(PING, b"x", fin=False),
    "ping over 125": frame(PING, b"x" * 126),
    "bad utf-8": frame(TEXT, b"\xff\xfe"),
    "continuation first": frame(CONT, b"x"),
    "text in a text": frame(TEXT, b"a", fin=False) + frame(TEXT, b"b"),
    # A header announcing 2 MiB (over the 1 MiB limit), then the start of it.
    "over max size": bytes((0x80 | BINARY, 0x80 | 127)) + (2 * MiB).to_bytes(8, "big")
    + ZERO_MASK + b"x" * 1024,
    "bad close code": frame(CLOSE, close_payload(999)),
    "close 1 byte": frame(CLOSE, b"\x03"),
    "close bad utf-8": frame(CLOSE, close_payload(1000, b"\xff")),
}


async def misbehave(port: int, kind: str) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if kind == "garbage handshake":
            writer.write(b"\x16\x03\x01 not http at all\r\n\r\n")
        elif kind == "send and reset":
            writer.write(handshake_request(port) + frame(TEXT, b"bye"))
            await writer.drain()
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return
        else:
            writer.write(handshake_request(port) + MALFORMED[kind])
        with contextlib.suppress(Exception):
            await asyncio.wait_for(reader.read(1 << 16), 2)
    finally:
        writer.close()


async def flood(port: int) -> dict[str, int]:
    kinds = [*MALFORMED, "garbage handshake", "send and reset"]
    counts = {"connections": 0, "failed": 0}
    deadline = time.monotonic() + FLOOD_SECONDS

    async def worker(offset: int) -> None:
        n = offset
        while time.monotonic() < deadline and counts["connections"] < MAX_CONNECTIONS:
            counts["connections"] += 1
            try:
                await misbehave(port, kinds[n % len(kinds)])
            except OSError:
                counts["failed"] += 1
            n += 1

    await asyncio.gather(*(worker(i) for i in range(WORKERS)))
    return counts


def test_malformed_frames_do_not_flood_the_log(implementation: str, tmp_path: Path) -> None:
    with ServerProcess.cli("echo", implementation, tmp_path) as server:
        before = server.stderr_bytes()
        with Bystander(server.port) as bystander:
            time.sleep(0.3)
            start = time.monotonic()
            counts = asyncio.run(flood(server.port))
            flood_s = time.monotonic() - start
            time.sleep(0.5)
        logged = server.stderr_bytes() - before
        text = server.stderr_text()
        assert server.alive()
    lines = text.splitlines()
    report("log flood", implementation=implementation, flood_s=flood_s, **counts,
           log_bytes=logged, log_rate=f"{logged / 1024 / flood_s:.0f} KiB/s",
           log_lines=len(lines), tracebacks=text.count("Traceback"),
           bystander=bystander.summary())
    assert counts["connections"] >= 100  # the attack did run
    assert logged < MAX_LOG, (
        f"{logged} bytes of log in {flood_s:.1f} s of malformed frames (bound {MAX_LOG}); "
        f"first lines: {lines[:3]}")
    # A client's misbehaviour is INFO at most, never a traceback (item 9: the echo
    # server logged an ERROR traceback for a client that sends and resets).
    assert "Traceback" not in text, lines[:5]
    assert not [line for line in lines if " ERROR " in line], lines[:5]
    assert not bystander.check(), bystander.check()
