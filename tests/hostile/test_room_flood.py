"""Issue 10 item 8: one connection may not make the chat server's work grow without
bound by joining rooms.

An attacker asks ``python -m reinhardt_ws serve`` to join 100,000 rooms: past the
per-connection room limit (default 100) it gets error events.  It then sends 500
chat messages to one of its rooms while a bystander's chat round trip (in a room
of its own) stays under 250 ms: per-message work does not grow with the number of
rooms a connection is in.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from .harness import (
    CLOSE,
    TEXT,
    ZERO_MASK,
    Bystander,
    Closed,
    RssSampler,
    ServerProcess,
    SyncClient,
    chat,
    frame,
    mib,
    report,
)

pytestmark = pytest.mark.slow

JOINS = 100_000
ROOM_LIMIT = 100  # the chat server's default
MESSAGES = 500
CHUNK = 1_000
#: Refused joins after which the attack has made its point.
REFUSALS = 1_000


def pipeline(client: SyncClient, requests: list[str]) -> threading.Thread:
    """Send *requests* from a thread (the caller reads the answers meanwhile)."""
    blob = b"".join(frame(TEXT, r.encode(), mask=ZERO_MASK) for r in requests)

    def send() -> None:
        try:
            client.sock.sendall(blob)
        except OSError:
            pass  # closed by the server: the reader sees it

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def read_answers(client: SyncClient, expected: int, timeout: float) -> dict[str, object]:
    """Count the events answering *expected* requests: joined, message, error."""
    counts: dict[str, object] = {"joined": 0, "message": 0, "error": 0, "closed": None,
                                 "first_error": None}
    deadline = time.monotonic() + timeout
    answered = 0
    while answered < expected:
        try:
            opcode, payload = client.recv_frame(max(0.001, deadline - time.monotonic()))
        except (Closed, TimeoutError) as exc:
            counts["closed"] = repr(exc)
            break
        if opcode == CLOSE:
            counts["closed"] = int.from_bytes(payload[:2], "big") if payload else None
            break
        if opcode != TEXT:
            continue
        event = json.loads(payload)["data"]
        kind = event["event"]
        if kind == "error" and counts["first_error"] is None:
            counts["first_error"] = event["error"][:100]
        if kind in ("joined", "message", "error"):
            counts[kind] = int(counts[kind]) + 1  # type: ignore[call-overload]
            answered += 1
    return counts


def join_flood(client: SyncClient) -> dict[str, object]:
    """Ask to join JOINS rooms, CHUNK at a time, until the server has refused
    REFUSALS of them (or closed the connection): the answers, counted."""
    total: dict[str, object] = {"joined": 0, "error": 0, "closed": None, "first_error": None,
                                "asked": 0}
    for first in range(0, JOINS, CHUNK):
        sender = pipeline(client, [chat("join", f"room-{i}") for i in range(first, first + CHUNK)])
        counts = read_answers(client, CHUNK, timeout=30)
        sender.join(5)
        total["asked"] = first + CHUNK
        for key in ("joined", "error"):
            total[key] = int(total[key]) + int(counts[key])  # type: ignore[call-overload]
        total["first_error"] = total["first_error"] or counts["first_error"]
        if counts["closed"] is not None:
            total["closed"] = counts["closed"]
            break
        if int(total["error"]) >= REFUSALS:  # type: ignore[call-overload]
            break
    return total


def test_room_join_flood_is_refused_and_cheap(implementation: str, tmp_path: Path) -> None:
    with ServerProcess.cli("serve", implementation, tmp_path, "--log-level", "WARNING") as server:
        attacker = SyncClient.connect(server.port)
        with RssSampler(server) as rss:
            start = time.monotonic()
            joins = join_flood(attacker)
            join_s = time.monotonic() - start
        join_growth = rss.growth
        if joins["closed"] is not None:
            # Refused by closing (a rate limit, say): come back with one room.
            attacker.close()
            attacker = SyncClient.connect(server.port)
            attacker.send_text(chat("join", "room-0"))
            assert attacker.recv_json()["data"]["event"] == "joined"
        with Bystander(server.port, mode="chat") as bystander:
            time.sleep(0.3)
            start = time.monotonic()
            sender = pipeline(attacker, [chat("message", "room-0", i) for i in range(MESSAGES)])
            messages = read_answers(attacker, MESSAGES, timeout=10)
            sender.join(5)
            messages_s = time.monotonic() - start
            time.sleep(0.2)
        attacker.close()
    report("room-join flood", implementation=implementation, joins_asked=joins["asked"],
           joined=joins["joined"], join_errors=joins["error"], first_error=joins["first_error"],
           join_closed=joins["closed"], join_s=join_s, rss_growth_joins=mib(join_growth),
           messages_sent=MESSAGES, messages_answered=messages["message"],
           message_errors=messages["error"], messages_s=messages_s,
           per_message_ms=messages_s / MESSAGES * 1000, bystander=bystander.summary())
    assert int(joins["joined"]) <= ROOM_LIMIT, (  # type: ignore[call-overload]
        f"one connection joined {joins['joined']} rooms (limit {ROOM_LIMIT})")
    assert joins["closed"] is not None or int(joins["error"]) > 0  # type: ignore[call-overload]
    assert not bystander.check(), bystander.check()
