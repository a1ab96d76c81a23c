"""What the metrics cost on the hot paths (issue 15: under 2 % at N = 1000).

The fan-out path gained no work: ``/metrics`` reads the hub's counters, which the
fan-out kept before it existed, at scrape time.  The receive path gained two
integer additions per message (``Server._messages_received`` and
``_bytes_received``, in ``WebSocketConnection._deliver``).  This measures
``_deliver`` of one 64-byte message with those counters (a connection owned by a
server) and without them (a connection with no owner: the additions are
skipped), so the difference is the counters' cost per message received.
"""

from __future__ import annotations

from typing import Any

import pytest

try:
    from reinhardt_ws import Message, ServerOptions, WebSocketHandler
    from reinhardt_ws.connection import WebSocketConnection
    from reinhardt_ws.server import Server
except Exception as exc:  # the library is not installed (or not built) yet
    pytestmark = pytest.mark.skip(reason=f"reinhardt_ws is not importable: {exc!r}")

BATCH = 1000  # messages per timed call


@pytest.mark.parametrize("counters", ["with", "without"])
def test_deliver_counters(benchmark: Any, counters: str) -> None:
    opts = ServerOptions(ping_interval=None)
    owner = Server(WebSocketHandler(), "127.0.0.1", 0, opts) if counters == "with" else None
    conn = WebSocketConnection(path="/", headers={}, subprotocol=None, opts=opts,
                               is_client=False, handler=None, server=owner)
    message = Message.text("x" * 64)
    inbox = conn._inbox
    deliver = conn._deliver

    def batch() -> None:
        for _ in range(BATCH):
            deliver(message)
            inbox.clear()
        conn._inbox_bytes = 0

    benchmark.group = "receive path: _deliver, 1000 messages"
    benchmark.extra_info.update(scenario="micro", counters=counters, ops_per_call=BATCH)
    benchmark(batch)
    if owner is not None:
        assert owner.stats()["messages_received"] >= BATCH
        assert owner.stats()["bytes_received"] == 64 * owner.stats()["messages_received"]


MESSAGES = 20_000  # per timed run of the whole receive path


def _client_frame(payload: bytes) -> bytes:
    """A masked binary frame (zero mask: the payload is sent as is)."""
    assert len(payload) < 126
    return bytes([0x82, 0x80 | len(payload)]) + b"\0\0\0\0" + payload


def test_receive_path(benchmark: Any) -> None:
    """The whole receive path for scale: MESSAGES 64-byte frames written at once by
    a raw client, until the server has counted them all (frame parsing, assembly,
    ``_deliver`` and the handler's task, which discards them)."""
    import asyncio

    from harness import wire

    from reinhardt_ws import serve

    class Discard(WebSocketHandler):
        async def on_message(self, conn: Any, message: Any) -> None:
            pass

    data = _client_frame(b"x" * 64) * MESSAGES
    loop = asyncio.new_event_loop()

    async def start() -> tuple[Any, Any, Any]:
        server = await serve(Discard(), "127.0.0.1", 0, ping_interval=None,
                             max_message_size=1024)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(wire.upgrade_request("127.0.0.1", server.port))
        await reader.readuntil(b"\r\n\r\n")
        return server, reader, writer

    server, _reader, writer = loop.run_until_complete(start())

    async def one_run() -> None:
        target = server.stats()["messages_received"] + MESSAGES
        writer.write(data)
        while server.stats()["messages_received"] < target:
            await asyncio.sleep(0.0005)

    benchmark.group = "receive path: 20000 messages of 64 B, end to end"
    benchmark.extra_info.update(scenario="micro", ops_per_call=MESSAGES)
    try:
        benchmark.pedantic(lambda: loop.run_until_complete(one_run()), rounds=5)
    finally:
        writer.close()
        loop.run_until_complete(server.close(timeout=2.0))
        loop.close()
