"""Issue 10 item 5: once the server has decided to close a connection, nothing the
client queued or sends later is dispatched.

The ``heard`` app of server_app.py counts every message ``on_message`` sees.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from .harness import CLOSE, TEXT, ServerProcess, SyncClient, close_payload, frame, report, until

pytestmark = pytest.mark.slow


def test_refused_client_is_not_heard(implementation: str, tmp_path: Path) -> None:
    # on_connect awaits 0.3 s (an async token check), then closes with 1008.
    with ServerProcess.app("heard", implementation, tmp_path, "--refuse-after", "0.3") as server:
        client = SyncClient.connect(server.port)
        client.send(b"".join(frame(TEXT, f"sneaked in {i}".encode()) for i in range(5)))
        outcome = client.read_until_close(5)
        client.send(frame(CLOSE, close_payload(1000)))
        client.close()
        assert until(lambda: server.http_json("/debug/stats")["open"] == 0, 5)
        stats = server.http_json("/debug/stats")
    report("refused client", implementation=implementation, close=outcome, **stats)
    assert outcome == 1008
    assert stats["connects"] == 1
    assert stats["heard"] == 0, f"on_message saw {stats['heard']} of the refused client's 5"


def test_frames_after_a_close_frame_are_discarded(implementation: str, tmp_path: Path) -> None:
    with ServerProcess.app("heard", implementation, tmp_path) as server:
        client = SyncClient.connect(server.port)
        client.send(frame(TEXT, b"one") + frame(TEXT, b"two"))
        # The control: what an open connection sends is heard.
        assert until(lambda: server.http_json("/debug/stats")["heard"] == 2, 5)
        client.send(frame(CLOSE, close_payload(1000))
                    + b"".join(frame(TEXT, b"after close") for _ in range(3)))
        outcome = client.read_until_close(5)
        client.close()
        assert until(lambda: server.http_json("/debug/stats")["open"] == 0, 5)
        time.sleep(0.1)
        stats = server.http_json("/debug/stats")
    report("frames after close", implementation=implementation, close=outcome, **stats)
    assert outcome == 1000
    assert stats["heard"] == 2
