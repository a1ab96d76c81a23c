"""Issue 10 item 1: a client that sends pings as fast as it can and never reads.

Every pong counts against the connection's write budget: past it the server stops
reading that socket and closes it (1008 or 1013), and its memory stays within
``max_write_buffer`` plus some slack.  A bystander's echo round trip stays under
250 ms meanwhile.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from .harness import (
    PING,
    Bystander,
    MiB,
    RssSampler,
    ServerProcess,
    SyncClient,
    frame,
    mib,
    report,
)

pytestmark = pytest.mark.slow

#: The CLI's default write budget per connection.
MAX_WRITE_BUFFER = 1 * MiB
#: Memory the server may take besides the attacker's write budget.
PING_FLOOD_SLACK = 6 * MiB
ATTACK_SECONDS = 6.0
#: The server must have closed the attacker this long after the attack began
#: (covers a close_timeout of 5 s for the close frame stuck behind the pongs).
CLOSE_WITHIN = 10.0
#: Past this growth the attack has made its point; stop before it hurts the machine.
RSS_CAP = 96 * MiB


def test_ping_flood_is_bounded_and_closed(implementation: str, tmp_path: Path) -> None:
    with ServerProcess.cli("echo", implementation, tmp_path, "--log-level", "WARNING") as server:
        attacker = SyncClient.connect(server.port, rcvbuf=4096)
        burst = memoryview(b"".join(frame(PING, b"p" * 125) for _ in range(512)))
        stop = threading.Event()
        sent = 0
        stopped_reading = None
        send_error = None
        with Bystander(server.port) as bystander, \
                RssSampler(server, cap=RSS_CAP, on_over=lambda _g: stop.set()) as rss:
            time.sleep(0.3)  # a few bystander samples before the attack
            start = time.monotonic()
            attacker.sock.settimeout(1.0)
            offset = 0
            while not stop.is_set() and time.monotonic() - start < ATTACK_SECONDS:
                try:
                    n = attacker.sock.send(burst[offset:])
                except TimeoutError:
                    stopped_reading = time.monotonic() - start  # the server stopped reading
                    break
                except OSError as exc:
                    send_error = repr(exc)
                    break
                sent += n
                offset = (offset + n) % len(burst)
            attack_time = time.monotonic() - start
            # Now read: the pongs the server still holds, then its close frame.
            outcome = attacker.read_until_close(max(0.5, CLOSE_WITHIN - attack_time))
            closed_at = time.monotonic() - start
            attacker.close()
            time.sleep(0.2)
        growth = rss.growth
        report("ping flood", implementation=implementation, pings_sent=sent // 131,
               bytes_sent=sent, attack_s=attack_time, stopped_reading_s=stopped_reading,
               send_error=send_error, outcome=outcome, closed_at_s=closed_at,
               rss_baseline=mib(rss.baseline), rss_growth=mib(growth),
               rss_growth_rate=f"{growth / MiB / max(attack_time, 0.001):.0f} MiB/s",
               bystander=bystander.summary())
        bound = MAX_WRITE_BUFFER + PING_FLOOD_SLACK
        assert growth <= bound, (
            f"server RSS grew {mib(growth)} under a ping flood (bound {mib(bound)})")
        assert outcome in (1008, 1013, "EOF", "reset"), (
            f"the server did not close the ping flooder within {CLOSE_WITHIN} s: {outcome!r}")
        assert closed_at <= CLOSE_WITHIN
        assert not bystander.check(), bystander.check()
        assert server.alive()
