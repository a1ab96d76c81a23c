"""permessage-deflate across processes: a broadcast is compressed once for the
whole Redis cluster.  The publishing process compresses it, the envelope carries
the deflate payload, and a receiving process inflates it once (to check it and to
rebuild the plain frame) and sends the bytes it received to its compressing
members, without compressing again; only members of an incompatible parameter
set (a narrower window) get a frame compressed locally.  What proves "did not
compress" is the receiving process's own compressor counter
(``_compression.stats()``, read through the app's ``stats`` command), next to
the frames the clients read off the wire.  A forged or corrupt envelope is
rejected, logged and never sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("redis")

import redis.asyncio as aioredis

import reinhardt_ws as rw
from reinhardt_ws.protocol.extensions.permessage_deflate import shared_compressor
from reinhardt_ws.rooms import HistoryPolicy, RoomManager, _compression
from reinhardt_ws.rooms.envelope import (
    KIND_ALL,
    KIND_DIRECT,
    KIND_HISTORY,
    KIND_ROOM,
    Deflated,
    pack_envelope,
)
from reinhardt_ws.rooms.manager import encode_frame
from reinhardt_ws.rooms.redis import RedisBackend

from ..core_helpers import Run
from ..fixtures import Recorder, running_server
from ..io.test_compression import COMPRESSIBLE, DeflateRawClient, deflate_raw, inflate_raw
from ..redis_fixtures import AppClient, AppProcess, RedisServer, redis_server_binary

TEXT = 0x1
OFFER = "permessage-deflate; client_max_window_bits"
NARROW = "permessage-deflate; server_max_window_bits=10"
#: What the app broadcasts for ``data=COMPRESSIBLE``: the payload every client reads.
PAYLOAD = json.dumps({"msg": COMPRESSIBLE}).encode()


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer(redis_server_binary()).start()
    yield server
    server.stop()


@pytest.fixture
def prefix() -> str:
    return f"t{os.urandom(6).hex()}"


@contextlib.contextmanager
def processes(redis_url: str, prefix: str, implementation: str, tmp_path: Path,
              *extra: tuple[str, ...], history: int = 0) -> Iterator[list[AppProcess]]:
    procs: list[AppProcess] = []
    try:
        for i, args in enumerate(extra):
            procs.append(AppProcess(redis_url, prefix, implementation, tmp_path / f"p{i}.log",
                                    history=history, extra_args=args).start())
        yield procs
    finally:
        for proc in procs:
            proc.stop()


async def compression_stats(control: AppClient) -> dict[str, int]:
    """The process's own compressor counters (bytes_in grows only when it compresses)."""
    return (await control.call("stats"))["compression"]  # type: ignore[no-any-return]


async def wait_size(control: AppClient, room: str, size: int) -> None:
    for _ in range(200):
        if (await control.call("size", room=room))["size"] == size:
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"room {room!r} never reached {size} members")


async def read_compressed(client: DeflateRawClient, bits: int) -> bytes:
    """The next frame: a compressed text frame (RSV1), inflated with *bits*."""
    opcode, rsv1, payload = await client.read_frame()
    assert (opcode, rsv1) == (TEXT, True)
    assert len(payload) < len(PAYLOAD) // 4
    return inflate_raw(payload, bits)


@pytest.mark.redis
def test_compressed_once_per_cluster(redis_server: RedisServer, prefix: str,
                                     implementation: str, tmp_path: Path) -> None:
    """p0 publishes; p1 (default parameters) and p2 (window 15, level 1: another
    parameter set, compatible with p0's 12-bit output) receive without
    compressing; p1's narrow-window member is the one group compressed again.
    Then p2, whose backend publishes plain (``compression=None``, the rolling
    upgrade setting), makes every receiving group compress for itself."""
    from websockets.asyncio.client import connect as ws_connect

    with processes(redis_server.url, prefix, implementation, tmp_path, (),
                   (), ("--deflate-window", "15", "--deflate-level", "1",
                        "--no-cluster-compression")) as (p0, p1, p2):
        async def main() -> None:
            publisher = await AppClient.open(p0.url)
            control1 = await AppClient.open(p1.url)
            control2 = await AppClient.open(p2.url)
            ws = await ws_connect(p1.url + "?join=r")  # default compression
            deflating = await DeflateRawClient.open(p1.port, OFFER, "/?join=r")
            plain = await DeflateRawClient.open(p1.port, None, "/?join=r")
            wide = await DeflateRawClient.open(p2.port, OFFER, "/?join=r")
            narrow: DeflateRawClient | None = None
            try:
                assert deflating.extensions_header() == (
                    "permessage-deflate; server_no_context_takeover; client_max_window_bits=12")
                assert plain.extensions_header() is None
                await wait_size(publisher, "r", 4)
                before = [await compression_stats(c) for c in (publisher, control1, control2)]

                await publisher.call("broadcast", room="r", data=COMPRESSIBLE)
                assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"msg": COMPRESSIBLE}
                assert await read_compressed(deflating, 12) == PAYLOAD
                assert await plain.read_frame() == (TEXT, False, PAYLOAD)
                assert await read_compressed(wide, 15) == PAYLOAD
                after = [await compression_stats(c) for c in (publisher, control1, control2)]
                delta = [{k: a[k] - b[k] for k in a} for a, b in zip(after, before, strict=True)]
                # Compressed once, in the publisher, for the whole cluster (it has
                # no members in the room itself)...
                assert delta[0]["bytes_in"] == len(PAYLOAD)
                assert delta[0]["bytes_out"] < len(PAYLOAD) // 4
                # ... and the receivers sent those bytes as they came: one group
                # each (p1: the websockets client and the raw one share it).
                assert delta[1] == {"bytes_in": 0, "bytes_out": 0, "reused": 1}
                assert delta[2] == {"bytes_in": 0, "bytes_out": 0, "reused": 1}

                # A narrower window in p1: the one group compressed there.
                narrow = await DeflateRawClient.open(p1.port, NARROW, "/?join=r")
                assert "server_max_window_bits=10" in (narrow.extensions_header() or "")
                await wait_size(publisher, "r", 5)
                before = after
                await publisher.call("broadcast", room="r", data=COMPRESSIBLE)
                assert await read_compressed(narrow, 10) == PAYLOAD
                assert await read_compressed(deflating, 12) == PAYLOAD
                assert await plain.read_frame() == (TEXT, False, PAYLOAD)
                assert await read_compressed(wide, 15) == PAYLOAD
                assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"msg": COMPRESSIBLE}
                after = [await compression_stats(c) for c in (publisher, control1, control2)]
                delta = [{k: a[k] - b[k] for k in a} for a, b in zip(after, before, strict=True)]
                assert delta[0]["bytes_in"] == len(PAYLOAD)
                assert delta[1]["bytes_in"] == len(PAYLOAD) and delta[1]["reused"] == 1
                assert delta[2] == {"bytes_in": 0, "bytes_out": 0, "reused": 1}

                # p2 publishes plain envelopes: every compressing group compresses
                # where it is (p1: two groups; p2's own member: one).
                before = after
                await control2.call("broadcast", room="r", data=COMPRESSIBLE)
                assert await read_compressed(narrow, 10) == PAYLOAD
                assert await read_compressed(deflating, 12) == PAYLOAD
                assert await plain.read_frame() == (TEXT, False, PAYLOAD)
                assert await read_compressed(wide, 15) == PAYLOAD
                assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"msg": COMPRESSIBLE}
                after = [await compression_stats(c) for c in (publisher, control1, control2)]
                delta = [{k: a[k] - b[k] for k in a} for a, b in zip(after, before, strict=True)]
                assert delta[1]["bytes_in"] == 2 * len(PAYLOAD) and delta[1]["reused"] == 0
                assert delta[2]["bytes_in"] == len(PAYLOAD) and delta[2]["reused"] == 0
                for control in (publisher, control1, control2):
                    assert (await control.call("stats"))["stats"]["bad_messages"] == 0
            finally:
                await ws.close()
                for raw in (deflating, plain, wide, narrow):
                    if raw is not None:
                        await raw.close()
                for app in (publisher, control1, control2):
                    await app.close()

        asyncio.run(asyncio.wait_for(main(), 60))


@pytest.mark.redis
def test_history_rooms_carry_compressed_and_store_plain(
        redis_server: RedisServer, prefix: str, implementation: str, tmp_path: Path) -> None:
    """A room with history: the stream keeps the plain frame (replays are plain),
    the processes receive it compressed once; a recovering join still gets
    every message, in order."""
    with processes(redis_server.url, prefix, implementation, tmp_path, (), (),
                   history=50) as (p0, p1):
        async def main() -> None:
            publisher = await AppClient.open(p0.url)
            control = await AppClient.open(p1.url)
            deflating = await DeflateRawClient.open(p1.port, OFFER, "/?join=h")
            plain = await DeflateRawClient.open(p1.port, None, "/?join=h")
            try:
                await wait_size(publisher, "h", 2)
                start = (await publisher.call("position", room="h"))["position"]
                before = await compression_stats(control)
                reply = await publisher.call("broadcast", room="h", data=COMPRESSIBLE)
                assert reply["position"][1] == start[1] + 1
                assert await read_compressed(deflating, 12) == PAYLOAD
                assert await plain.read_frame() == (TEXT, False, PAYLOAD)
                after = await compression_stats(control)
                assert after["bytes_in"] == before["bytes_in"]
                assert after["reused"] == before["reused"] + 1

                stored = await aioredis.Redis.from_url(redis_server.url)
                try:
                    keys = [k async for k in stored.scan_iter(match=f"*{prefix}*:s:*")]
                    assert len(keys) == 1
                    entries = await stored.xrange(keys[0])
                    assert [e[1][b"f"] for e in entries] == [encode_frame(PAYLOAD.decode())]
                finally:
                    await stored.aclose()

                late = await AppClient.open(p1.url)
                joined = await late.call("join", room="h", since=start)
                assert joined["recovered"] is True and joined["replayed"] == 1
                assert await late.next() == COMPRESSIBLE
                await late.close()
            finally:
                for raw in (deflating, plain):
                    await raw.close()
                for app in (publisher, control):
                    await app.close()

        asyncio.run(asyncio.wait_for(main(), 60))


# -- one process against forged envelopes -------------------------------------------------
@contextlib.asynccontextmanager
async def one_room(url: str, prefix: str, **manager: Any
                   ) -> AsyncIterator[tuple[RoomManager, DeflateRawClient, DeflateRawClient]]:
    """A manager on Redis with a compressing and a plain raw member in room r."""
    rooms = RoomManager(backend=RedisBackend(url, prefix=prefix), **manager)
    handler = Recorder()
    async with running_server(handler) as server:
        deflating = await DeflateRawClient.open(server.port, OFFER)
        plain = await DeflateRawClient.open(server.port, None)
        try:
            for _ in range(2):
                await rooms.join("r", await asyncio.wait_for(handler.connected.get(), 5))
            yield rooms, deflating, plain
        finally:
            await deflating.close()
            await plain.close()
            await rooms.close()


def forged_envelopes(origin: bytes) -> list[tuple[str, bytes]]:
    """Envelopes that must never reach a client, each with the reason it is bad."""
    good = shared_compressor(12, rw.DeflateSettings()).compress(PAYLOAD)
    assert good is not None
    deflate = Deflated(TEXT, 12, len(PAYLOAD))
    # (A window claim narrower than the distances used is not in this list: zlib
    # lets an inflater reach back into the output of the same call, so no cheap
    # check catches it; see docs/redis.md on what a receiver trusts.)
    noise = os.urandom(300)
    finished = zlib.compressobj(6, zlib.DEFLATED, -12)
    ended = finished.compress(PAYLOAD) + finished.flush(zlib.Z_FINISH)

    def room(body: bytes | memoryview, d: Deflated, kind: int = KIND_ROOM) -> bytes:
        return pack_envelope(kind, origin, (), body, d)

    head = pack_envelope(KIND_ROOM, origin, (), b"", deflate)
    return [
        ("garbage deflate", room(os.urandom(len(good)), deflate)),
        ("truncated", room(good[: len(good) // 2], deflate)),
        ("size larger than the message", room(good, deflate._replace(size=len(PAYLOAD) + 1))),
        ("size smaller than the message", room(good, deflate._replace(size=len(PAYLOAD) - 1))),
        ("data after the message", room(good + deflate_raw(noise), deflate)),
        ("8-bit window, long message", room(good, deflate._replace(window_bits=8))),
        ("finished stream", room(ended, deflate)),
        ("did not shrink", room(PAYLOAD[:200], deflate._replace(size=100))),
        ("opcode flag", head[:12] + bytes([0x41]) + head[13:] + good),
        ("close opcode", head[:12] + bytes([0x8]) + head[13:] + good),
        ("window flag", head[:13] + bytes([16]) + head[14:] + good),
        ("huge size", head[:14] + (2**32 - 1).to_bytes(4, "big") + good),
        ("compressed direct", room(good, deflate, KIND_DIRECT)),
        ("cut header", head[:15]),
    ]


@pytest.mark.redis
def test_forged_compressed_envelopes_are_rejected(run: Run, redis_server: RedisServer,
                                                  prefix: str,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with one_room(redis_server.url, prefix) as (rooms, deflating, plain):
            backend = rooms.backend
            assert isinstance(backend, RedisBackend)
            origin = os.urandom(8)
            publisher = aioredis.Redis.from_url(redis_server.url)
            channel = f"{prefix}:room:r"
            forged = forged_envelopes(origin)
            try:
                with caplog.at_level(logging.DEBUG, logger="reinhardt_ws.redis"):
                    for _why, data in forged:
                        assert await publisher.publish(channel, data) == 1
                    # Then a sound one, made as another process would: it is the
                    # first thing either member receives.
                    good = shared_compressor(12, rw.DeflateSettings()).compress(PAYLOAD)
                    assert good is not None
                    await publisher.publish(f"{prefix}:all", pack_envelope(
                        KIND_ALL, origin, (), good, Deflated(TEXT, 12, len(PAYLOAD))))
                    assert await read_compressed(deflating, 12) == PAYLOAD
                    assert await plain.read_frame() == (TEXT, False, PAYLOAD)
                assert backend.stats()["bad_messages"] == len(forged)
                lines = [r.getMessage() for r in caplog.records
                         if "not a sound reinhardt-ws envelope" in r.getMessage()]
                assert len(lines) == len(forged), lines
                first = next(r for r in caplog.records if "not a sound" in r.getMessage())
                assert first.levelno == logging.WARNING
                # The subscriber lives on: a broadcast from this process's twin
                # on Redis still arrives, and nothing else was queued meanwhile.
                await publisher.publish(channel, pack_envelope(
                    KIND_ROOM, origin, (), encode_frame("after")))
                assert await plain.read_frame() == (TEXT, False, b"after")
                assert await deflating.read_frame() == (TEXT, False, b"after")
            finally:
                await publisher.aclose()

    run(main())


@pytest.mark.redis
def test_forged_compressed_history_is_rejected(run: Run, redis_server: RedisServer,
                                               prefix: str) -> None:
    async def main() -> None:
        async with one_room(redis_server.url, prefix,
                            history=HistoryPolicy(size=10, ttl=60)) as (rooms, deflating, plain):
            backend = rooms.backend
            assert isinstance(backend, RedisBackend)
            origin = os.urandom(8)
            publisher = aioredis.Redis.from_url(redis_server.url)
            channel = f"{prefix}:room:r"
            deflate = Deflated(TEXT, 12, len(PAYLOAD))
            try:
                head = pack_envelope(KIND_HISTORY, origin, (), b"", deflate)
                await publisher.publish(channel, head + b"1 abcdef12 7 " + os.urandom(300))
                await publisher.publish(channel, head + b"1 abcdef12 x " + b"\x00" * 300)
                # A real broadcast still arrives, compressed for the one, plain
                # for the other, and is the first either reads.
                result = await rooms.broadcast("r", PAYLOAD.decode())
                assert result.delivered == 2 and result.position is not None
                assert await read_compressed(deflating, 12) == PAYLOAD
                assert await plain.read_frame() == (TEXT, False, PAYLOAD)
                assert backend.stats()["bad_messages"] == 2
                stored = await rooms.history("r")
                assert [p.frame for p in stored.publications] == [encode_frame(PAYLOAD.decode())]
            finally:
                await publisher.aclose()

    run(main())


@pytest.mark.redis
def test_publisher_reuses_its_cluster_frame_locally(run: Run, redis_server: RedisServer,
                                                    prefix: str) -> None:
    """In the publishing process the frame compressed for the cluster is the one
    its own compressing members get: one compression in all."""
    async def main() -> None:
        async with one_room(redis_server.url, prefix) as (rooms, deflating, plain):
            before = _compression.stats()
            assert (await rooms.broadcast("r", PAYLOAD.decode())).delivered == 2
            after = _compression.stats()
            assert after["bytes_in"] - before["bytes_in"] == len(PAYLOAD)
            assert after["reused"] - before["reused"] == 1
            assert await read_compressed(deflating, 12) == PAYLOAD
            assert await plain.read_frame() == (TEXT, False, PAYLOAD)

    run(main())
