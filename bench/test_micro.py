"""Micro-benchmarks, on both fan-out implementations where the implementation matters.

- Encoding: ``Message.json(obj)`` against ``json.dumps(obj)`` (and ``orjson.dumps``,
  which Message.json uses underneath), for a small chat event and a larger payload.
- Framing: ``build_frame(opcode, payload)`` of each implementation, 64 B and 4 KiB.
- Rooms: ``RoomManager.join`` then ``leave`` of 200 real server-side connections
  (a reinhardt server on loopback, raw clients), per implementation.
- Compression (where it runs): the 4 KiB JSON of test_compression.py deflated with
  the server's default parameters (12-bit window, memLevel 5, level 6) by the room
  fan-out's ``SharedCompressor`` (one zlib stream per parameter set, reused, full
  flush per message), by the same stream called bare (what calling zlib without
  our Python wrapper would cost), by a fresh ``compressobj`` per message, by
  one-shot ``zlib.compress``, by ``compressed_frame`` (split, compress, frame: the
  whole per-broadcast step), and handed to a worker thread (zlib releases the GIL)
  with ``run_in_executor``, against the same calls inline on the loop.
- Small rooms: one ``rooms.broadcast(room, payload)`` per event-loop iteration to a
  room of 5 real connections (the chat pattern, where a broadcast's fixed cost
  dominates), per implementation, against picows' own loop over the same 5
  ``WSTransport.send`` as the baseline of the same run.  Every byte the 5 raw
  clients receive is checked between rounds (outside the timing).
- Held broadcasts: 8 ``rooms.broadcast`` calls to a room of 1000 and 5000 real
  connections with a long ``flush_interval``, so only the framing and the queuing
  on every member are timed (what a latency budget spends before its timer fires);
  the held frames are written out and checked between rounds.
- Loop timers: the real hold of a 1 ms ``loop.call_at`` armed at a random moment
  of a busy loop, on uvloop and on asyncio's loop (what bounds the merge of a
  ``flush_interval`` under a stream).
Per-operation times are in the report (``extra_info["ops_per_call"]``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import random
import socket
import time
import zlib
from collections.abc import Iterator, Sized
from typing import Any

import pytest
from harness import wire

try:
    import orjson

    import reinhardt_ws
    from reinhardt_ws import Message, RoomManager, WebSocketHandler, _fanout, serve
except Exception as exc:  # the library is not installed (or not built) yet
    pytestmark = pytest.mark.skip(reason=f"reinhardt_ws is not importable: {exc!r}")

IMPLEMENTATIONS = ("cython", "python")
ROOM_CONNECTIONS = 200

SMALL_EVENT = {"type": "chat", "room": "lobby", "user": "ada", "text": "hello, world",
               "ts": 1700000000}
LARGE_EVENT = {
    "type": "snapshot",
    "items": [{"id": i, "name": f"item-{i}", "price": i * 1.25, "tags": ["a", "b"], "ok": True}
              for i in range(100)],
}


@pytest.fixture(params=IMPLEMENTATIONS)
def implementation(request: pytest.FixtureRequest) -> Iterator[str]:
    name = request.param
    if name not in _fanout.available():
        if os.environ.get("REINHARDT_WS_NO_EXTENSIONS", "") not in ("", "0"):
            pytest.skip("C extension disabled by REINHARDT_WS_NO_EXTENSIONS")
        pytest.fail("reinhardt_ws._fastbroadcast is not built: a normal build must load it")
    previous = _fanout.IMPLEMENTATION
    _fanout.use(name)
    try:
        yield name
    finally:
        _fanout.use(previous)


@pytest.mark.parametrize("payload", ["small", "large"])
@pytest.mark.parametrize("encoder", ["Message.json", "json.dumps", "orjson.dumps"])
def test_encode_json(benchmark, encoder: str, payload: str) -> None:
    obj = SMALL_EVENT if payload == "small" else LARGE_EVENT
    fn: Any = {"Message.json": Message.json, "json.dumps": json.dumps,
               "orjson.dumps": orjson.dumps}[encoder]
    benchmark.group = f"encode json ({payload})"
    benchmark.extra_info.update(scenario="micro", encoder=encoder, payload=payload)
    result = benchmark(fn, obj)
    text = result.payload if isinstance(result, Message) else result
    assert json.loads(text) == obj


@pytest.mark.parametrize("size", [64, 4096], ids=["64B", "4KiB"])
def test_build_frame(benchmark, implementation: str, size: int) -> None:
    build_frame = _fanout.available()[implementation].build_frame
    payload = wire.make_payload(size)
    benchmark.group = f"build_frame {size} B"
    benchmark.extra_info.update(scenario="micro", implementation=implementation, size=size)
    frame = benchmark(build_frame, 0x2, payload)
    assert frame == wire.make_frame(size)


def test_room_join_leave(benchmark, implementation: str, bench_config) -> None:
    if bench_config.loop == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    conns: list[Any] = []

    class Collect(WebSocketHandler):
        async def on_connect(self, conn: Any) -> None:
            conns.append(conn)

    async def start() -> tuple[Any, list[asyncio.StreamWriter]]:
        server = await serve(Collect(), "127.0.0.1", 0, ping_interval=None)
        writers = []
        for _ in range(ROOM_CONNECTIONS):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(wire.upgrade_request("127.0.0.1", server.port))
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 101"), head
            writers.append(writer)
        await _until_joined(conns, ROOM_CONNECTIONS)
        return server, writers

    async def stop(server: Any, writers: list[asyncio.StreamWriter]) -> None:
        for writer in writers:
            writer.close()
        await server.close(timeout=2.0)
        for writer in writers:
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass

    rooms = RoomManager()

    async def join_leave() -> None:
        for conn in conns:
            await rooms.join("bench", conn)
        for conn in conns:
            await rooms.leave("bench", conn)

    try:
        server, writers = loop.run_until_complete(start())
        try:
            assert implementation == reinhardt_ws.IMPLEMENTATION
            benchmark.group = f"room join+leave ({ROOM_CONNECTIONS} connections)"
            benchmark.extra_info.update(scenario="micro", implementation=implementation,
                                        ops_per_call=2 * ROOM_CONNECTIONS)
            benchmark.pedantic(lambda: loop.run_until_complete(join_leave()),
                               rounds=50, iterations=1, warmup_rounds=2)
        finally:
            loop.run_until_complete(stop(server, writers))
    finally:
        loop.close()


COMPRESS_WAYS = ("shared-compressor", "bare-compressobj", "fresh-compressobj",
                 "zlib.compress", "compressed_frame")


@pytest.mark.parametrize("way", COMPRESS_WAYS)
def test_compress_4k(benchmark, way: str) -> None:
    from reinhardt_ws.protocol.extensions.permessage_deflate import SharedCompressor
    from reinhardt_ws.rooms._compression import compressed_frame

    payload = wire.make_json_payload(4096)
    shared = SharedCompressor(12, 5, 6, 128)
    bare = zlib.compressobj(6, zlib.DEFLATED, -12, 5)

    def bare_call(data: bytes) -> bytes:
        return (bare.compress(data) + bare.flush(zlib.Z_FULL_FLUSH))[:-4]

    def fresh_call(data: bytes) -> bytes:
        c = zlib.compressobj(6, zlib.DEFLATED, -12, 5)
        return (c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]

    def oneshot(data: bytes) -> bytes:
        return zlib.compress(data, 6, -12)  # ends in a final block: no 00 00 ff ff to cut

    frame = _fanout.build_frame(0x1, payload)
    fn: Any = {"shared-compressor": shared.compress, "bare-compressobj": bare_call,
               "fresh-compressobj": fresh_call, "zlib.compress": oneshot,
               "compressed_frame": lambda data: compressed_frame(frame, shared)}[way]
    benchmark.group = "compress 4 KiB JSON (once per broadcast)"
    benchmark.extra_info.update(scenario="micro", way=way, size=len(payload))
    out = benchmark(fn, payload)
    body = out[4:] if way == "compressed_frame" else out  # 4-byte frame header
    inflated = zlib.decompressobj(-15).decompress(bytes(body) + b"\x00\x00\xff\xff")
    assert inflated == payload
    assert len(body) < len(payload) // 2


OFFLOAD_CALLS = 100


@pytest.mark.parametrize("where", ["inline", "worker-thread"])
def test_compress_offload(benchmark, where: str, bench_config) -> None:
    """100 broadcasts' compression one after another on the event loop: inline, or
    each handed to a thread pool and awaited (zlib releases the GIL, so the loop
    could serve other connections meanwhile; the cost is the hand-off)."""
    from reinhardt_ws.protocol.extensions.permessage_deflate import SharedCompressor

    if bench_config.loop == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    payload = wire.make_json_payload(4096)
    shared = SharedCompressor(12, 5, 6, 128)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)

    async def inline() -> None:
        for _ in range(OFFLOAD_CALLS):
            shared.compress(payload)

    async def offloaded() -> None:
        for _ in range(OFFLOAD_CALLS):
            await loop.run_in_executor(pool, shared.compress, payload)

    body = inline if where == "inline" else offloaded
    benchmark.group = "compress 4 KiB JSON: inline vs worker thread"
    benchmark.extra_info.update(scenario="micro", where=where, ops_per_call=OFFLOAD_CALLS)
    try:
        benchmark.pedantic(lambda: loop.run_until_complete(body()), rounds=30, iterations=1,
                           warmup_rounds=2)
    finally:
        pool.shutdown()
        loop.close()


SMALL_ROOM = 5
SMALL_ROOM_BROADCASTS = 200  # per round: 200 x 5 x 66 B stay within the socket buffers
SMALL_ROOM_SIZE = 64


async def _until_joined(joined: Sized, count: int, timeout: float = 10.0) -> None:
    """Wait until the server side has seen *count* connections join (*joined*
    grows as they do), or fail after *timeout* seconds."""
    for _ in range(int(timeout / 0.01)):
        if len(joined) == count:
            return
        await asyncio.sleep(0.01)
    assert len(joined) == count, (len(joined), count)


async def _raw_client(loop: asyncio.AbstractEventLoop, port: int) -> socket.socket:
    """A raw client socket past the handshake, left unregistered with the loop (it
    is drained between rounds, so no client work is timed)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    await loop.sock_sendall(sock, wire.upgrade_request("127.0.0.1", port))
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 4096), 10)
        assert chunk, "the server closed during the handshake"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101") and head.endswith(b"\r\n\r\n"), head
    return sock


def _drain_exactly(socks: list[socket.socket], expected: bytes) -> None:
    """Read every socket until it holds *expected* (each byte checked), or fail."""
    for sock in socks:
        sock.settimeout(5.0)
        got = bytearray()
        while len(got) < len(expected):
            chunk = sock.recv(len(expected) - len(got))
            assert chunk, "a bench client was disconnected"
            got += chunk
        assert got == expected, "a bench client received wrong bytes"
        sock.setblocking(False)
        try:
            extra = sock.recv(1)
        except BlockingIOError:
            extra = b""
        assert not extra, "a bench client received more than it was sent"


@pytest.mark.parametrize("variant", ["cython", "python", "picows"])
def test_small_room_broadcast(benchmark, variant: str, bench_config) -> None:
    if variant != "picows" and variant not in _fanout.available():
        if os.environ.get("REINHARDT_WS_NO_EXTENSIONS", "") not in ("", "0"):
            pytest.skip("C extension disabled by REINHARDT_WS_NO_EXTENSIONS")
        pytest.fail("reinhardt_ws._fastbroadcast is not built: a normal build must load it")
    if bench_config.loop == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    payload = wire.make_payload(SMALL_ROOM_SIZE)
    rounds = max(5, bench_config.rounds * 5)
    previous = _fanout.IMPLEMENTATION
    members: list[Any] = []
    rooms = RoomManager()

    class Member(WebSocketHandler):
        async def on_connect(self, conn: Any) -> None:
            await rooms.join("small", conn)
            members.append(conn)

    async def start() -> tuple[Any, list[socket.socket]]:
        if variant == "picows":
            from picows import WSListener, ws_create_server

            class Listener(WSListener):  # type: ignore[misc]
                def on_ws_connected(self, transport: Any) -> None:
                    members.append(transport)

                def pause_writing(self) -> None:
                    pass

                def resume_writing(self) -> None:
                    pass

            server: Any = await ws_create_server(lambda _r: Listener(), "127.0.0.1", 0)
            port = int(server.sockets[0].getsockname()[1])
        else:
            server = await serve(Member(), "127.0.0.1", 0, ping_interval=None)
            port = server.port
        socks = [await _raw_client(loop, port) for _ in range(SMALL_ROOM)]
        await _until_joined(members, SMALL_ROOM)
        return server, socks

    if variant == "picows":
        from picows import WSMsgType

        binary = WSMsgType.BINARY

        async def run() -> None:
            for _ in range(SMALL_ROOM_BROADCASTS):
                for transport in members:
                    transport.send(binary, payload)
                await asyncio.sleep(0)
    else:
        async def run() -> None:
            broadcast = rooms.broadcast
            for _ in range(SMALL_ROOM_BROADCASTS):
                result = await broadcast("small", payload)
                assert result.delivered == SMALL_ROOM
                await asyncio.sleep(0)

    expected = wire.make_frame(SMALL_ROOM_SIZE) * SMALL_ROOM_BROADCASTS
    try:
        if variant != "picows":
            _fanout.use(variant)
        server, socks = loop.run_until_complete(start())
        try:
            if variant != "picows":
                assert variant == reinhardt_ws.IMPLEMENTATION
            benchmark.group = (f"broadcast to a {SMALL_ROOM}-member room, "
                               f"1 per loop iteration ({SMALL_ROOM_SIZE} B)")
            benchmark.extra_info.update(
                scenario="micro", variant=variant, room_size=SMALL_ROOM,
                ops_per_call=SMALL_ROOM_BROADCASTS,
                deliveries_per_call=SMALL_ROOM_BROADCASTS * SMALL_ROOM, loop=bench_config.loop)
            state = {"first": True}

            def drain() -> None:
                if not state["first"]:
                    _drain_exactly(socks, expected)
                state["first"] = False

            benchmark.pedantic(lambda: loop.run_until_complete(run()), setup=drain,
                               rounds=rounds, iterations=1, warmup_rounds=0)
            _drain_exactly(socks, expected)
        finally:
            for sock in socks:
                sock.close()
            if variant == "picows":
                for transport in members:
                    transport.disconnect()
                server.close()
                loop.run_until_complete(server.wait_closed())
                loop.run_until_complete(asyncio.sleep(0.05))
            else:
                loop.run_until_complete(server.close(timeout=2.0))
    finally:
        _fanout.use(previous)
        loop.close()


KEEPALIVE_CONNECTIONS = 10_000


@pytest.mark.parametrize("state", ["quiet", "active"])
def test_keepalive_sweep(benchmark, state: str) -> None:
    """One sweep of the keep-alive timer (``reinhardt_ws._keepalive``) over 10,000
    connections that need no ping: *quiet* ones, silent but within the interval
    (the sweep only reads), and *active* ones, each with a frame since the last
    sweep (the sweep clears the flag and moves the ping date).  The cost per
    connection is what idle connections cost the loop, every interval / 8."""
    from reinhardt_ws import ServerOptions
    from reinhardt_ws._keepalive import Keepalive
    from reinhardt_ws.connection import WebSocketConnection

    opts = ServerOptions()
    conns = [WebSocketConnection(path="/", headers={}, subprotocol=None, opts=opts,
                                 is_client=False) for _ in range(KEEPALIVE_CONNECTIONS)]
    keepalive = Keepalive(lambda: conns, 20.0, 20.0)
    loop = asyncio.new_event_loop()
    keepalive._loop = loop
    try:
        keepalive._sweep()  # every ping date is now 20 s away, every flag clear

        def setup() -> None:
            if keepalive._handle is not None:
                keepalive._handle.cancel()
            if state == "active":
                for conn in conns:
                    conn._rx_seen = True

        benchmark.group = f"keep-alive sweep, {KEEPALIVE_CONNECTIONS} connections"
        benchmark.extra_info.update(scenario="micro", state=state,
                                    ops_per_call=KEEPALIVE_CONNECTIONS)
        benchmark.pedantic(keepalive._sweep, setup=setup, rounds=30, iterations=1)
        assert all(not c._rx_seen and not c._ka_deadline for c in conns)  # nothing pinged
    finally:
        keepalive.stop()
        loop.close()


#: Members of the room whose queuing cost is measured, and broadcasts per call.
QUEUE_ROOM_SIZES = (1000, 5000)
QUEUE_BROADCASTS = 8


@pytest.mark.parametrize("members", QUEUE_ROOM_SIZES)
def test_held_broadcast_queuing(benchmark, implementation: str, members: int,
                                bench_config) -> None:
    """What one broadcast costs before any byte is written: ``rooms.broadcast`` to
    a room of *members* real connections with a long ``flush_interval``, so each
    call only frames the message and queues it on every member (the work a
    latency budget has to fit in before its timer fires: with the C fan-out about
    50-70 ns per member, a quarter of a millisecond at N = 5000).  8 broadcasts
    per call; between rounds, outside the timing, the held frames are written out
    (``Hub.flush``) and every client's bytes are checked."""
    if bench_config.loop == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    payload = wire.make_payload(SMALL_ROOM_SIZE)
    joined: list[Any] = []
    rooms = RoomManager(flush_interval=1.0)

    class Member(WebSocketHandler):
        async def on_connect(self, conn: Any) -> None:
            await rooms.join("big", conn)
            joined.append(conn)

    async def start() -> tuple[Any, list[socket.socket]]:
        server = await serve(Member(), "127.0.0.1", 0, ping_interval=None,
                             max_connections=None)
        socks = [await _raw_client(loop, server.port) for _ in range(members)]
        await _until_joined(joined, members)
        return server, socks

    async def run() -> None:
        broadcast = rooms.broadcast
        for _ in range(QUEUE_BROADCASTS):
            result = await broadcast("big", payload)
            assert result.delivered == members

    expected = wire.make_frame(SMALL_ROOM_SIZE) * QUEUE_BROADCASTS
    server, socks = loop.run_until_complete(start())
    hub = _fanout.get_hub(loop)
    state = {"first": True}

    def write_out_and_check() -> None:
        if not state["first"]:
            hub.flush()  # the held frames, now: one write per member
            _drain_exactly(socks, expected)
        state["first"] = False

    try:
        benchmark.group = (f"held broadcast: frame and queue, {QUEUE_BROADCASTS} broadcasts "
                           f"to one room ({SMALL_ROOM_SIZE} B)")
        benchmark.extra_info.update(scenario="micro", implementation=implementation,
                                    members=members, ops_per_call=QUEUE_BROADCASTS,
                                    deliveries_per_call=QUEUE_BROADCASTS * members,
                                    loop=bench_config.loop)
        benchmark.pedantic(lambda: loop.run_until_complete(run()), setup=write_out_and_check,
                           rounds=max(5, bench_config.rounds * 5), iterations=1,
                           warmup_rounds=0)
        write_out_and_check()
    finally:
        for sock in socks:
            sock.close()
        loop.run_until_complete(server.close(timeout=5.0))
        loop.close()


#: Work per loop iteration of the busy loop below (a stream of broadcasts keeps
#: the loop running like this), seconds.
BUSY_ITERATION = 20e-6


@pytest.mark.parametrize("loop_name", ["uvloop", "asyncio"])
def test_timer_hold_in_a_busy_loop(benchmark, loop_name: str) -> None:
    """How long a 1 ms timer, ``loop.call_at(loop.time() + 0.001)`` (what a held
    fan-out arms), really holds when it is armed at a random moment of a busy
    loop (every iteration does 20 µs of work and yields, as a stream of
    broadcasts keeps the loop running): the time per call is the hold.  Not our
    code: the loop's timers, which bound what a ``flush_interval`` can merge.
    uvloop's timers count whole milliseconds, so there the hold is spread between
    0 and 1 ms; asyncio's loop keeps time to the microsecond.  Each round waits a
    random 0-1 ms (outside the timing) first, so the arming falls anywhere within
    a millisecond."""
    if loop_name == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    rng = random.Random(1)
    clock = time.perf_counter

    def spin(seconds: float) -> None:
        start = clock()
        while clock() - start < seconds:
            pass

    async def hold() -> None:
        fired: list[float] = []
        loop.call_at(loop.time() + 0.001, fired.append, 0.0)
        while not fired:
            spin(BUSY_ITERATION)
            await asyncio.sleep(0)

    try:
        benchmark.group = "a 1 ms loop timer armed in a busy loop: its real hold"
        benchmark.extra_info.update(scenario="micro", loop=loop_name, interval=0.001,
                                    busy_iteration_s=BUSY_ITERATION)
        benchmark.pedantic(lambda: loop.run_until_complete(hold()),
                           setup=lambda: spin(rng.random() * 0.001),
                           rounds=300, iterations=1, warmup_rounds=5)
    finally:
        loop.close()
