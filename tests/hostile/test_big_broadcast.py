"""Issue 10 item 2: one legal message must not kill a room.

The chat server (``python -m reinhardt_ws serve``, default 1 MiB limits) with ten
members and a sender.  A 1,048,474-byte chat request re-encodes to a broadcast of
1,048,571 bytes, within the 1 MiB message limit: every member, whose buffer is
empty, takes it.  A 300 KB request of floats re-encodes (orjson writes ``9e15`` as
``9000000000000000.0``) past the limit: the sender gets an error event and nothing
is broadcast.  In both cases no member is closed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .harness import (
    CLOSE,
    TEXT,
    Closed,
    ServerProcess,
    SyncClient,
    chat,
    frame,
    report,
)

pytestmark = pytest.mark.slow

MEMBERS = 10
ROOM = "r"  # one character: the sizes below are computed for it
# The whole JSON request, in bytes: its event, once encoded, fits 1 MiB (the
# position fields, '"offset":<20 characters>,"epoch":"<8>",', take 49 of them).
REQUEST_SIZE = 1_048_474 - 49


def big_request(kind: str) -> bytes:
    if kind == "text":
        overhead = len(chat("message", ROOM, ""))
        raw = chat("message", ROOM, "x" * (REQUEST_SIZE - overhead)).encode()
        assert len(raw) == REQUEST_SIZE
        return raw
    raw = chat("message", ROOM, None).encode()
    floats = "[" + ",".join(["9e15"] * 60_000) + "]"
    return raw.replace(b"null", floats.encode())


def read_until_after(client: SyncClient, timeout: float = 15.0) -> dict[str, Any]:
    """Read a member's frames until the small "after" message: what it saw."""
    seen: dict[str, Any] = {"big": 0, "errors": [], "after": False, "closed": None}
    while True:
        try:
            opcode, payload = client.recv_frame(timeout)
        except (Closed, TimeoutError) as exc:
            seen["closed"] = repr(exc)
            return seen
        if opcode == CLOSE:
            seen["closed"] = int.from_bytes(payload[:2], "big") if payload else None
            return seen
        if opcode != TEXT:
            continue
        event = json.loads(payload)["data"]
        if event["event"] == "error":
            seen["errors"].append(event["error"][:80])
        elif event["event"] == "message" and event["data"] == "after":
            seen["after"] = True
            return seen
        elif event["event"] == "message":
            seen["big"] += 1
            seen["size"] = len(payload)


@pytest.mark.parametrize("kind", ["text", "floats"])
def test_one_legal_big_message_closes_no_member(implementation: str, tmp_path: Path,
                                                kind: str) -> None:
    with ServerProcess.cli("serve", implementation, tmp_path, "--log-level", "WARNING") as server:
        clients = [SyncClient.connect(server.port) for _ in range(MEMBERS + 1)]
        try:
            for client in clients:
                client.send_text(chat("join", ROOM))
                assert client.recv_json()["data"]["event"] == "joined"
            sender = clients[0]
            request = big_request(kind)
            sender.send(frame(TEXT, request, mask=b"\x00\x00\x00\x00"))
            sender.send_text(chat("message", ROOM, "after"))
            seen = [read_until_after(c) for c in clients]
        finally:
            for client in clients:
                client.close()
    closed = [s["closed"] for s in seen if s["closed"] is not None]
    report(f"big broadcast ({kind})", implementation=implementation,
           request_bytes=len(request), closed=f"{len(closed)} of {len(clients)}",
           close_codes=closed, members_with_big=sum(1 for s in seen[1:] if s["big"]),
           broadcast_bytes=seen[1].get("size"), sender_errors=seen[0]["errors"])
    assert not closed, f"{len(closed)} of {len(clients)} healthy members were closed: {closed}"
    assert all(s["after"] for s in seen)
    if kind == "text":
        # Within the message size limit after re-encoding: every member takes it.
        assert all(s["big"] == 1 for s in seen), [s["big"] for s in seen]
        assert not seen[0]["errors"]
    else:
        # Over the limit after re-encoding: an error event, and no broadcast.
        assert seen[0]["errors"], "the sender was not told its message cannot be delivered"
        assert all(s["big"] == 0 for s in seen)
