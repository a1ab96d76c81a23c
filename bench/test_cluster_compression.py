"""Compressed once per cluster (Redis): what a receiving process pays per message.

For a 4 KiB JSON message (the issue's workload), with the server's default
parameters (12-bit window, level 6, memLevel 5):

- ``compress``: compressing it for one parameter group; what every receiving
  process did per message before envelopes carried compressed payloads, and
  what the publishing process now does once for the whole cluster;
- ``inflate_check``: ``inflate_carried``, what a receiving process does now
  (inflate once: the soundness check of the bytes it will send as they are, and
  the plain frame for its plain members).

``extra_info`` records the bytes Redis carries per receiving process for the
two envelope designs that were weighed: the deflate payload alone (chosen) and
plain frame plus deflate payload.  See docs/redis.md.
"""

from __future__ import annotations

import json
import random

import pytest

try:
    from reinhardt_ws import DeflateSettings, _fanout
    from reinhardt_ws.protocol.extensions.permessage_deflate import shared_compressor
    from reinhardt_ws.rooms._compression import compress_for_cluster, inflate_carried
    from reinhardt_ws.rooms.envelope import pack_envelope
except Exception as exc:  # the library is not importable here
    pytestmark = pytest.mark.skip(reason=f"reinhardt_ws is not importable: {exc!r}")


def json_message(size: int = 4096) -> str:
    """A chat-history-like JSON text of *size* bytes (deterministic)."""
    rng = random.Random(1)
    words = ["hello", "world", "price", "update", "ok", "chat", "room", "ticker"]
    items: list[dict[str, object]] = []
    while len(json.dumps(items)) < size + 200:
        items.append({"id": rng.randrange(10**6), "user": f"user{rng.randrange(1000)}",
                      "text": " ".join(rng.choice(words) for _ in range(6)),
                      "ts": 1700000000 + rng.randrange(10**5)})
    text = json.dumps(items)
    return text[:size]


@pytest.mark.parametrize("step", ["compress", "inflate_check"])
def test_receiving_process_cost(benchmark, step: str) -> None:
    frame = _fanout.build_frame(0x1, json_message().encode())
    compressor = shared_compressor(12, DeflateSettings())
    carried = compress_for_cluster(frame, compressor)
    assert carried is not None
    payload = bytes(carried.payload)
    origin = bytes(8)
    benchmark.extra_info.update(
        plain_frame_bytes=len(frame), deflate_payload_bytes=len(payload),
        envelope_bytes_deflate_only=len(pack_envelope(0, origin, (), payload, carried.deflate)),
        envelope_bytes_plain_and_deflate=len(pack_envelope(0, origin, (), frame)) + len(payload))
    if step == "compress":
        out = benchmark(compress_for_cluster, frame, compressor)
        assert out is not None and out.frame == carried.frame
    else:
        plain, again = benchmark(inflate_carried, carried.deflate, payload)
        assert plain == frame and again.frame == carried.frame
