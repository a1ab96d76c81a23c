"""The fan-out twins at the unit level: frames, and Peer and Hub on real sockets.

Every test runs on both implementations (``fanout_module``); the oracle tests also
compare the twins with each other directly.  Peers sit on real loopback TCP
connections wrapped in real transports: the loop's own (asyncio's selector
transport, or uvloop's) and aiofastnet's, which picows uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import random
import select
import socket
import struct
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from types import ModuleType
from typing import Any

import aiofastnet
import pytest

from reinhardt_ws import _fanout

from ..fixtures import eventually

Run = Callable[[Coroutine[Any, Any, Any]], Any]

TRANSPORTS = ("loop", "aiofastnet")
PAYLOAD_SIZES = (0, 1, 125, 126, 127, 65535, 65536, 70000)
DATA_OPCODES = (0x0, 0x1, 0x2, 0x3, 0x7)
CONTROL_OPCODES = (0x8, 0x9, 0xA, 0xB, 0xF)

#: Tests that fill a socket's kernel buffer behind the transport's back write to
#: its descriptor with os.write, which only POSIX allows for sockets.
writes_to_the_socket_fd = pytest.mark.skipif(
    sys.platform == "win32", reason="os.write on a socket descriptor (POSIX only)")


# -- an independent encoder, the reference both twins must match ---------------
def reference_frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n <= 125:
        header = struct.pack("!BB", 0x80 | opcode, n)
    elif n <= 0xFFFF:
        header = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return header + payload


def payload_of(size: int, seed: int = 0) -> bytes:
    return bytes((i * 31 + seed) & 0xFF for i in range(size))


def outcome(fn: Callable[[], object]) -> tuple[str, str]:
    """What a call did: its result, or its exception type and message."""
    try:
        return ("ok", repr(fn()))
    except Exception as exc:
        return (type(exc).__name__, str(exc))


# -- build_frame: the twins against the reference and against each other -------
@pytest.mark.parametrize("size", PAYLOAD_SIZES)
@pytest.mark.parametrize("opcode", DATA_OPCODES)
def test_build_frame_data_frames(fanout_module: ModuleType, opcode: int, size: int) -> None:
    payload = payload_of(size, opcode)
    frame = fanout_module.build_frame(opcode, payload)
    assert type(frame) is bytes
    assert frame == reference_frame(opcode, payload)
    for twin in _fanout.available().values():
        assert twin.build_frame(opcode, payload) == frame


@pytest.mark.parametrize("size", (0, 1, 124, 125))
@pytest.mark.parametrize("opcode", CONTROL_OPCODES)
def test_build_frame_control_frames(fanout_module: ModuleType, opcode: int, size: int) -> None:
    payload = payload_of(size)
    assert fanout_module.build_frame(opcode, payload) == reference_frame(opcode, payload)


@pytest.mark.parametrize("size", (126, 127, 65536))
@pytest.mark.parametrize("opcode", CONTROL_OPCODES)
def test_build_frame_rejects_long_control_frames(fanout_module: ModuleType, opcode: int,
                                                 size: int) -> None:
    with pytest.raises(ValueError, match="control frame payload too long"):
        fanout_module.build_frame(opcode, bytes(size))


@pytest.mark.parametrize("opcode", (-1, 16, 255, 1 << 31, 1 << 40, -(1 << 40)))
def test_build_frame_rejects_bad_opcodes(fanout_module: ModuleType, opcode: int) -> None:
    with pytest.raises(ValueError, match="opcode out of range"):
        fanout_module.build_frame(opcode, b"")


class BytesSubclass(bytes):
    pass


@pytest.mark.parametrize("args", [
    (1, bytearray(b"ab")), (1, memoryview(b"ab")), (1, "ab"), (1, None),
    (1.0, b""), ("1", b""), (None, b""), (True, b"ab"), (1, BytesSubclass(b"ab")),
    (16, b""), (-1, b""), (9, bytes(126)), (2, bytes(70000)),
], ids=repr)
def test_build_frame_twins_fail_alike(args: tuple[Any, Any]) -> None:
    """Same input, same result or same exception (type and message), in both twins."""
    twins = _fanout.available()
    results = {name: outcome(lambda m=m: m.build_frame(*args)) for name, m in twins.items()}
    assert len(set(results.values())) == 1, results
    if isinstance(args[1], (bytearray, memoryview, str)) or args[1] is None:
        assert results["python"][0] == "TypeError"
    if isinstance(args[0], (float, str)) or args[0] is None:
        assert results["python"][0] == "TypeError"


# -- real transports over loopback TCP --------------------------------------------
def tcp_pair(sndbuf: int | None = None, rcvbuf: int | None = None
             ) -> tuple[socket.socket, socket.socket]:
    """(writer, reader): a connected loopback TCP pair, both non-blocking.

    *sndbuf* caps the writer's kernel send buffer, *rcvbuf* the reader's receive
    buffer (set before connecting, so the window stays small).
    """
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        if sndbuf is not None:  # inherited by the accepted socket
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        listener.listen(1)
        reader = socket.socket()
        if rcvbuf is not None:
            reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        reader.connect(listener.getsockname())
        writer, _ = listener.accept()
    writer.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    writer.setblocking(False)
    reader.setblocking(False)
    return writer, reader


def unix_pair(sndbuf: int | None = None) -> tuple[socket.socket, socket.socket]:
    """(writer, reader): a connected AF_UNIX stream pair, both non-blocking, the
    writer's send buffer capped at *sndbuf*.  Once full (``Link.choke``) it stays
    exactly full until the reader reads: no TCP window updates or receive-queue
    collapsing let the kernel take a few more bytes later, as loopback TCP may."""
    writer, reader = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    if sndbuf is not None:
        writer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    writer.setblocking(False)
    reader.setblocking(False)
    return writer, reader


class FlowProtocol(asyncio.Protocol):
    """Transport flow control forwarded to the peer, as the picows listener does."""

    def __init__(self) -> None:
        self.peer: Any = None
        self.lost = False

    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.pause_writing()

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer.resume_writing()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = True


class Link:
    """One Peer on a real transport, the reading end of its socket, and what the
    peer's callbacks reported."""

    def __init__(self, peer: Any, transport: asyncio.Transport, reader: socket.socket) -> None:
        self.peer = peer
        self.transport = transport
        self.reader = reader
        self.overflows = 0
        self.failures: list[BaseException | None] = []

    @property
    def fd(self) -> int:
        return int(self.transport.get_extra_info("socket").fileno())

    def data_segments_out(self) -> int:
        """Data segments the writing socket has sent (Linux ``tcpi_data_segs_out``)."""
        info = socket.socket(fileno=os.dup(self.fd))
        try:
            raw = info.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 160)
        finally:
            info.close()
        return int(struct.unpack_from("I", raw, 156)[0])

    async def read_exactly(self, n: int, timeout: float = 10.0) -> bytes:
        loop = asyncio.get_running_loop()
        chunks: list[bytes] = []
        got = 0

        async def read() -> None:
            nonlocal got
            while got < n:
                chunk = await loop.sock_recv(self.reader, min(1 << 20, n - got))
                assert chunk, "the writer closed early"
                chunks.append(chunk)
                got += len(chunk)

        await asyncio.wait_for(read(), timeout)
        return b"".join(chunks)

    def fill_kernel(self) -> bytes:
        """Fill the socket's kernel buffers behind the transport's back (POSIX:
        ``os.write`` on the descriptor, see ``writes_to_the_socket_fd``); what was
        written."""
        filler = bytearray()
        while True:
            try:
                sent = os.write(self.fd, b"f" * 4096)
            except BlockingIOError:
                return bytes(filler)
            filler += b"f" * sent

    def choke(self) -> bytes:
        """Make this link's client a genuinely slow consumer: fill its socket's
        kernel buffers (``fill_kernel``) so that whatever the peer writes next is
        refused by the socket and held by the transport; what was written.  The
        transport holds nothing yet."""
        filler = self.fill_kernel()
        assert filler and self.transport.get_write_buffer_size() == 0
        return filler

    def recv_now(self, n: int, timeout: float = 5.0) -> bytes:
        """Exactly *n* bytes from the reader without running the event loop (so no
        scheduled flush can run meanwhile): proves what a peer wrote synchronously."""
        data = bytearray()
        while len(data) < n:
            ready, _, _ = select.select([self.reader], [], [], timeout)
            assert ready, f"only {len(data)} of {n} bytes arrived"
            chunk = self.reader.recv(n - len(data))
            assert chunk, "the writer closed early"
            data += chunk
        return bytes(data)

    def read_available(self) -> bytes:
        """Everything readable now, without waiting."""
        chunks = []
        while True:
            try:
                chunk = self.reader.recv(1 << 20)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def reset_reader(self) -> None:
        """Close the reading end with a TCP reset (SO_LINGER 0)."""
        self.reader.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.reader.close()


async def open_transport(kind: str, sock: socket.socket, protocol: asyncio.Protocol
                         ) -> asyncio.Transport:
    loop = asyncio.get_running_loop()
    if kind == "aiofastnet":
        transport, _ = await aiofastnet.connect_accepted_socket(loop, lambda: protocol, sock)
    else:
        transport, _ = await loop.create_connection(lambda: protocol, sock=sock)
    return transport  # type: ignore[return-value]


@contextlib.asynccontextmanager
async def open_links(mod: ModuleType, count: int, kind: str = "loop", *,
                     max_write_buffer: int = 1 << 30, drop_slow: bool = True,
                     sndbuf: int | None = None, rcvbuf: int | None = None,
                     high_water: int | None = None, hub: Any = None, first_id: int = 0,
                     unix: bool = False) -> AsyncIterator[tuple[Any, list[Link]]]:
    """*count* peers of *mod* on one hub, each on its own real connection (loopback
    TCP, or an AF_UNIX stream pair if *unix*), named ``peer<first_id>``,
    ``peer<first_id + 1>``, ..."""
    loop = asyncio.get_running_loop()
    hub = hub if hub is not None else mod.Hub(loop)
    links: list[Link] = []
    protocols: list[FlowProtocol] = []
    try:
        for i in range(count):
            writer, reader = unix_pair(sndbuf) if unix else tcp_pair(sndbuf, rcvbuf)
            protocol = FlowProtocol()
            try:
                transport = await open_transport(kind, writer, protocol)
            except BaseException:
                writer.close()
                reader.close()
                raise
            if high_water is not None:
                transport.set_write_buffer_limits(high=high_water, low=high_water // 4)
            link = Link(None, transport, reader)

            def on_overflow(link: Link = link) -> None:
                link.overflows += 1

            link.peer = mod.Peer(hub, transport, None, _fanout.direct_fd(transport),
                                 f"peer{first_id + i}", max_write_buffer, drop_slow, on_overflow,
                                 link.failures.append)
            protocol.peer = link.peer
            links.append(link)
            protocols.append(protocol)
        yield hub, links
    finally:
        for link in links:
            link.transport.abort()
            if link.reader.fileno() >= 0:
                link.reader.close()
        await eventually(lambda: all(p.lost for p in protocols))


def frames_of(mod: ModuleType, count: int, size: int, tag: int = 0) -> list[bytes]:
    """*count* binary frames with distinct payloads of *size* bytes."""
    return [mod.build_frame(0x2, (tag * 1_000_003 + i).to_bytes(8, "big") * (size // 8))
            for i in range(count)]


def parse_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of every whole server frame in *data* (no leftovers)."""
    out = []
    pos = 0
    while pos < len(data):
        b0, b1 = data[pos], data[pos + 1]
        assert not b1 & 0x80
        n = b1 & 0x7F
        pos += 2
        if n == 126:
            n = int.from_bytes(data[pos:pos + 2], "big")
            pos += 2
        elif n == 127:
            n = int.from_bytes(data[pos:pos + 8], "big")
            pos += 8
        assert pos + n <= len(data), "a frame was cut short"
        out.append((b0 & 0x0F, data[pos:pos + n]))
        pos += n
    return out


# -- Peer and Hub semantics: the same operations give the same answers -------------
async def _script(mod: ModuleType) -> list[Any]:
    """A fixed sequence of Peer/Hub operations; returns what each one answered.

    Links 0 and 1 are genuinely slow clients: their sockets (AF_UNIX, which stay
    exactly full) are full (``choke``) and their transports hold a 300-byte frame
    the socket refused, so they have a backlog.  Links 2 and 3 (loopback TCP)
    accept everything: what they queue in an iteration is not backlog (written out
    early when it would pass the limit).
    """
    log: list[Any] = []
    loop = asyncio.get_running_loop()
    hub = mod.Hub(loop)
    log.append(hub.loop is loop)
    log.append(outcome(lambda: hub.fanout([], b"", {"x"})))
    small = mod.build_frame(0x1, b"s" * 98)  # 100 bytes
    held = mod.build_frame(0x2, b"h" * 296)  # 300 bytes
    events: list[str] = []
    async with open_links(mod, 2, max_write_buffer=1000, sndbuf=8192, unix=True,
                          hub=hub) as (_, slow), \
            open_links(mod, 2, max_write_buffer=1000, hub=hub, first_id=2) as (_, healthy):
        links = slow + healthy
        a, _b, c, d = (link.peer for link in links)
        # b2 closes on overflow instead of dropping
        b2 = mod.Peer(hub, links[1].transport, None, links[1].fd, "b", 1000, False,
                      lambda: events.append("overflow"), lambda e: events.append("failure"))
        fillers = [link.choke() for link in links[:2]]
        a.write_now(held)  # the socket refuses it: the transport holds it
        b2.write_now(held)
        log.append([(p.pending_size, p.buffered_size()) for p in (a, b2)])
        log.append([a.send(small) for _ in range(8)])  # the 8th would pass 1000
        log.append((a.pending_size, a.over_limit, a.buffered_size()))
        log.append([b2.send(small) for _ in range(9)])
        log.append((b2.closed, b2.failed, b2.pending_size, b2.buffered_size()))
        # d holds nothing: the 11th send writes the 10 queued out at once
        log.append([d.send(small) for _ in range(11)])
        log.append((d.pending_size, d.over_limit, d.buffered_size(),
                    links[3].recv_now(1000) == small * 10))
        # push: never dropped; past max_write_buffer the queue is written at once
        log.append([c.push(small) for _ in range(15)])
        log.append(c.pending_size)
        log.append(outcome(lambda: a.send(bytearray(small)))[0])
        log.append(outcome(lambda: a.push(memoryview(small)))[0])
        log.append(outcome(lambda: hub.fanout([a], bytearray(small)))[0])
        log.append(hub.fanout({"a": a, "c": c, "d": d}, small))
        log.append(hub.fanout([c, d], small, exclude=frozenset({"peer2"})))
        log.append(hub.fanout((p for p in (c, d)), small, exclude=frozenset({"peer3"})))
        log.append(hub.fanout({"c": c, "d": d}, small, exclude=frozenset(("peer2", "peer3"))))
        log.append(hub.fanout({}, small))
        await asyncio.sleep(0)  # the one flush of this iteration
        log.append([(p.pending_size, p.buffered_size(), p.closed, p.failed)
                    for p in (a, b2, c, d)])
        # a's queue is empty now, but its transport holds 1000 bytes: backlog
        log.append((a.send(small), a.pending_size, a.over_limit))
        wants = [fillers[0] + held + small * 7, fillers[1] + held, small * 17, small * 3]
        log.append([await link.read_exactly(len(want)) == want
                    for link, want in zip(links, wants, strict=True)])
        log.append([link.read_available() for link in links])
        d.close()
        log.append((d.send(small), d.push(small), d.closed, d.failed))
        c.discard()
        log.append((c.send(small), c.push(small), c.closed, c.failed, c.pending_size))
        log.append((hub.fanout([a, c, d], small), a.over_limit))  # a has drained
        # Paused while the transport holds nothing: the queue is written early.
        a.pause_writing()
        log.append((a.paused, a.send(small), a.over_limit, a.pending_size,
                    links[0].recv_now(100) == small))
        a.resume_writing()
        log.append(a.paused)
        await asyncio.sleep(0)
        log.append((a.pending_size, await links[0].read_exactly(100) == small))
    log.append(events)
    log.append(hub.stats())
    return log


def test_peer_and_hub_semantics_match_between_twins(run: Run) -> None:
    logs = {name: run(_script(mod)) for name, mod in _fanout.available().items()}
    python = logs["python"]
    # Not vacuous: the answers are the documented ones.
    assert python[0] is True
    assert python[1] == ("TypeError", "exclude must be a frozenset or None, not set")
    assert python[2] == [(0, 300), (0, 300)]
    assert python[3] == [0] * 7 + [1]  # 300 held + 700 queued: no room for 100
    assert python[4] == (700, True, 1000)  # not written early: the transport holds bytes
    assert python[5] == [0] * 7 + [1, 2]
    assert python[6] == (True, False, 0, 300)  # closed: its queue dropped
    assert python[7] == [0] * 11
    assert python[8] == (100, False, 100, True)
    assert python[9] == [0] * 15
    assert python[10] == 400  # 1100 bytes were written by the 11th push
    assert python[11] == python[12] == python[13] == "TypeError"
    assert python[14] == (2, 1, [])  # a is over its limit: dropped
    assert python[15] == (1, 0, [])
    assert python[16] == (1, 0, [])
    assert python[17] == (0, 0, [])
    assert python[18] == (0, 0, [])
    assert python[19] == [(0, 1000, False, False), (0, 300, True, False),
                          (0, 0, False, False), (0, 0, False, False)]
    assert python[20] == (1, 0, True)
    assert python[21] == [True] * 4
    assert python[22] == [b""] * 4
    assert python[23] == (2, 2, True, False)
    assert python[24] == (2, 2, True, True, 0)
    assert python[25] == ((1, 0, ["peer2", "peer3"]), False)
    assert python[26] == (True, 0, False, 100, True)
    assert python[27] is False
    assert python[28] == (0, True)
    assert python[29] == ["overflow"]  # once, from the loop
    assert python[30] == {  # the raising fan-outs are not counted
        "fanouts": 6, "delivered": 31, "dropped": 4, "overflows": 1, "failed": 7,
        "pushed": 17, "bytes_queued": 5200, "flushes": 9, "syscalls": 8,
        "transport_writes": 9, "write_failures": 0}
    for name, log in logs.items():
        assert log == python, name


async def _random_script(mod: ModuleType, seed: int) -> list[Any]:
    """A seeded random sequence of Peer/Hub operations on four peers, so that the
    outcome depends on the twin alone: the clients of peer0 and peer1 never read and
    their sockets (AF_UNIX, which stay exactly full) are full from the start
    (``choke``), so all they are written stays in their transports; peer2 and peer3
    sit on loopback TCP sockets that take every write whole.
    One frame in eight is larger than ``max_write_buffer``: taken by a peer without
    backlog, refused by one with."""
    rng = random.Random(seed)
    log: list[Any] = []
    async with open_links(mod, 2, max_write_buffer=1000, sndbuf=8192,
                          unix=True) as (hub, slow), \
            open_links(mod, 2, max_write_buffer=1000, hub=hub, first_id=2) as (_, healthy):
        links = slow + healthy
        fillers = [link.choke() for link in slow]
        peers = [link.peer for link in links]
        for step in range(150):
            op = rng.choice(("send", "send", "push", "fanout", "fanout", "flush",
                             "pause", "resume", "close", "held", "hubflush"))
            peer = rng.choice(peers)
            size = rng.randrange(1001, 3000) if rng.random() < 0.125 else rng.randrange(0, 300)
            frame = mod.build_frame(rng.choice((0x1, 0x2)), bytes(size))
            if op == "send":
                log.append((step, op, peer.conn_id, peer.send(frame), len(frame)))
            elif op == "push":
                log.append((step, op, peer.conn_id, peer.push(frame), len(frame)))
            elif op == "fanout":
                exclude = frozenset(p.conn_id for p in peers if rng.random() < 0.3) or None
                log.append((step, op, None, hub.fanout(peers, frame, exclude), len(frame)))
            elif op == "held":  # held by a flush interval the script never waits out
                exclude = frozenset(p.conn_id for p in peers if rng.random() < 0.3) or None
                log.append((step, "fanout", None, hub.fanout(peers, frame, exclude, 30.0),
                            len(frame)))
            elif op == "flush":
                await asyncio.sleep(0)
            elif op == "hubflush":
                hub.flush()
            elif op == "pause":
                peer.pause_writing()
            elif op == "resume":
                peer.resume_writing()
            elif op == "close" and rng.random() < 0.1:
                peer.close()
            log.append([(p.pending_size, p.buffered_size(), p.paused, p.over_limit, p.closed,
                         p.failed) for p in peers])
            log.append(hub.stats())
        await asyncio.sleep(0)
        hub.flush()  # what is still held
        log.append([len(link.read_available()) for link in healthy])
        # Whatever a slow peer took is still in its transport, behind the filler.
        for link, filler in zip(slow, fillers, strict=True):
            held = link.transport.get_write_buffer_size()
            data = await link.read_exactly(len(filler) + held)
            log.append((held, data[:len(filler)] == filler,
                        len(parse_frames(data[len(filler):]))))
    return log


@pytest.mark.parametrize("seed", range(4))
def test_random_operations_give_the_same_answers_in_both_twins(run: Run, seed: int) -> None:
    logs = {name: run(_random_script(mod, seed)) for name, mod in _fanout.available().items()}
    python = logs["python"]
    answers = [entry[1:] for entry in python if isinstance(entry, tuple) and len(entry) == 5]
    # Not vacuous: there were drops, frames over the limit were both taken (no
    # backlog) and refused, and only the slow peers were ever dropped.
    sends = [(who, a, size) for op, who, a, size in answers if op == "send"]
    fanouts = [(a, size) for op, _, a, size in answers if op == "fanout"]
    assert any(a == 1 for _, a, _ in sends) or any(a[1] for a, _ in fanouts)
    assert all(who in ("peer0", "peer1") for who, a, _ in sends if a == 1)
    assert all(a[1] <= 2 for a, _ in fanouts)
    big = [a for _, a, size in sends if size > 1000] + [a for a, size in fanouts if size > 1000]
    assert any(a == 0 or (isinstance(a, tuple) and a[0]) for a in big)
    assert any(a == 1 or (isinstance(a, tuple) and a[1]) for a in big)
    assert all(filler_intact for _, filler_intact, _ in python[-2:])
    assert any(held > 0 and frames > 0 for held, _, frames in python[-2:])
    for name, log in logs.items():
        assert log == python, name


def test_get_hub_is_per_loop(run: Run, implementation: str) -> None:
    async def main() -> tuple[Any, Any]:
        loop = asyncio.get_running_loop()
        hub = _fanout.get_hub(loop)
        assert _fanout.get_hub(loop) is hub
        assert hub.loop is loop
        assert type(hub) is _fanout.available()[implementation].Hub
        return hub, loop

    first = run(main())
    second = run(main())
    assert first[0] is not second[0]


# -- serialize once -----------------------------------------------------------------
@pytest.mark.parametrize("kind", TRANSPORTS)
def test_one_frame_object_is_shared_by_every_peer(run: Run, fanout_module: ModuleType,
                                                  kind: str) -> None:
    """Fan-out hands the very same bytes object to every peer: queued, and, when
    the transport must buffer (aiofastnet, picows' transport), held there."""
    count = 6

    async def main() -> None:
        async with open_links(fanout_module, count, kind, sndbuf=8192,
                              rcvbuf=8192) as (hub, links):
            # Back every transport up, so what is flushed next must be buffered.
            for link in links:
                link.transport.write(b"\0" * 300_000)
                assert link.transport.get_write_buffer_size() > 0
            before = [link.transport.get_write_buffer_size() for link in links]
            frame = fanout_module.build_frame(0x2, payload_of(5000))
            base = sys.getrefcount(frame)
            assert hub.fanout([link.peer for link in links], frame) == (count, 0, [])
            assert sys.getrefcount(frame) == base + count  # one reference per peer, no copies
            hub.flush()
            after = [link.transport.get_write_buffer_size() for link in links]
            assert [a - b for a, b in zip(after, before, strict=True)] == [len(frame)] * count
            if kind == "aiofastnet":
                # aiofastnet keeps a reference to the bytes it buffers, not a copy.
                assert sys.getrefcount(frame) == base + count
            for link in links:
                data = await link.read_exactly(300_000 + len(frame))
                assert data[300_000:] == frame
            await eventually(lambda: sys.getrefcount(frame) == base)

    run(main())


# -- coalescing: one write per connection per loop iteration -----------------------------
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts segments with TCP_INFO")
@pytest.mark.parametrize("kind", TRANSPORTS)
def test_one_write_per_connection_per_iteration(run: Run, fanout_module: ModuleType,
                                                kind: str) -> None:
    """Broadcasts and direct sends queued within one iteration leave in one write
    per connection (one TCP segment with TCP_NODELAY), in call order."""

    async def main() -> None:
        async with open_links(fanout_module, 3, kind) as (hub, links):
            peers = [link.peer for link in links]
            for round_ in range(3):
                expected: list[list[bytes]] = [[] for _ in links]
                segments = [link.data_segments_out() for link in links]
                for i in range(20):
                    frame = fanout_module.build_frame(0x1, f"b{round_}.{i}".encode())
                    exclude = frozenset({peers[i % 3].conn_id}) if i % 4 == 0 else None
                    hub.fanout(peers, frame, exclude)
                    for n, peer in enumerate(peers):
                        if not exclude or peer.conn_id not in exclude:
                            expected[n].append(frame)
                    direct = fanout_module.build_frame(0x2, f"d{round_}.{i}".encode())
                    peers[i % 3].push(direct)
                    expected[i % 3].append(direct)
                assert all(link.read_available() == b"" for link in links)
                await asyncio.sleep(0)  # one iteration: the hub's single flush ran
                for n, link in enumerate(links):
                    want = b"".join(expected[n])
                    # All of it is readable at once: no further write is pending.
                    assert link.peer.buffered_size() == 0
                    assert await link.read_exactly(len(want)) == want
                    assert link.data_segments_out() - segments[n] == 1

    run(main())


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_held_frames_of_several_iterations_leave_in_one_write(run: Run,
                                                               fanout_module: ModuleType,
                                                               kind: str) -> None:
    """``fanout(..., flush_interval=t)``: frames queued over several iterations
    are held (nothing is written at the iteration's flush) and leave together, in
    order, in one write per connection, once the hub's timer fires."""

    async def main() -> None:
        async with open_links(fanout_module, 3, kind) as (hub, links):
            peers = [link.peer for link in links]
            segments = [link.data_segments_out() for link in links]
            frames = [fanout_module.build_frame(0x1, f"held{i}".encode()) for i in range(10)]
            for frame in frames:
                assert hub.fanout(peers, frame, None, 0.2) == (3, 0, [])
                await asyncio.sleep(0)  # an iteration: its flush writes nothing held
            assert hub.stats()["flushes"] == 0
            assert all(link.read_available() == b"" for link in links)
            assert all(peer.pending_size == sum(map(len, frames)) for peer in peers)
            want = b"".join(frames)
            for link in links:
                assert await link.read_exactly(len(want)) == want
            stats = hub.stats()
            assert (stats["flushes"], stats["syscalls"], stats["delivered"]) == (3, 3, 30)
            for n, link in enumerate(links):
                assert link.data_segments_out() - segments[n] == 1

    run(main())


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_a_frame_without_hold_writes_the_held_ones_first(run: Run, fanout_module: ModuleType,
                                                         kind: str) -> None:
    """A push (or a fan-out without interval) on a peer that holds frames writes
    them at the iteration's flush, in order; Hub.flush writes everything held."""

    async def main() -> None:
        async with open_links(fanout_module, 2, kind) as (hub, links):
            a, b = links
            held = fanout_module.build_frame(0x1, b"held")
            hub.fanout([a.peer, b.peer], held, None, 30.0)
            own = fanout_module.build_frame(0x2, b"own")
            a.peer.push(own)
            await asyncio.sleep(0)
            assert await a.read_exactly(len(held) + len(own)) == held + own
            assert b.read_available() == b""  # still held: its timer is 30 s away
            assert b.peer.pending_size == len(held)
            hub.flush()
            assert await b.read_exactly(len(held)) == held
            assert hub.stats()["flushes"] == 2

    run(main())


class CountingClock:
    """The running loop, its clock readings noted (``time()``); everything else is
    the loop's own."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.readings: list[float] = []

    def time(self) -> float:
        now = self.loop.time()
        self.readings.append(now)
        return now

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loop, name)


def test_a_held_fanout_reads_the_clock_once_and_holds_from_its_start(
        run: Run, fanout_module: ModuleType) -> None:
    """The held flush's deadline is read once per fan-out, before its first member
    (at most one reading of the loop's clock, not one per member: what the latency
    budget spends before its timer; the C fan-out on Linux reads CLOCK_MONOTONIC
    for its timerfd instead), and frames leave one interval after the fan-out
    that first held them; a later fan-out with a longer deadline leaves the timer
    where it is."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        clock = CountingClock(loop)
        hub = fanout_module.Hub(clock)
        async with open_links(fanout_module, 20, hub=hub) as (_, links):
            peers = [link.peer for link in links]
            frames = [fanout_module.build_frame(0x1, f"tick{i}".encode()) for i in range(2)]
            before = len(clock.readings)
            start = loop.time()
            assert hub.fanout(peers, frames[0], None, 0.5) == (20, 0, [])
            assert len(clock.readings) <= before + 1
            await asyncio.sleep(0.3)
            assert all(link.read_available() == b"" for link in links)
            assert hub.fanout(peers, frames[1], None, 0.5) == (20, 0, [])
            assert len(clock.readings) <= before + 2
            want = b"".join(frames)
            for link in links:
                assert await link.read_exactly(len(want)) == want
            waited = loop.time() - start
            # uvloop's clock counts milliseconds; the timer fires at 0.5 s, not 0.8 s.
            assert 0.5 - 0.002 <= waited < 0.75, waited
            assert hub.stats()["flushes"] == 20

    run(main())


def test_a_held_fanout_holds_the_whole_interval_in_a_busy_loop(
        run: Run, fanout_module: ModuleType) -> None:
    """Held in a loop that never sleeps (a stream of broadcasts keeps it running),
    frames leave once the interval has passed, not before: the C fan-out on Linux
    waits on a timerfd to the nanosecond, and asyncio's timers keep time to the
    microsecond.  Only the Python twin on uvloop uses uvloop's millisecond timers,
    which may fire up to a millisecond early (never later than the interval); the
    test holds it to that.  Each trial arms at a random moment of a millisecond."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        on_uvloop = type(loop).__module__.startswith("uvloop")
        tick_timers = on_uvloop and fanout_module.IMPLEMENTATION == "python"
        interval = 0.003
        rng = random.Random(7)
        clock = time.perf_counter
        async with open_links(fanout_module, 2) as (hub, links):
            peers = [link.peer for link in links]
            frame = fanout_module.build_frame(0x1, b"held")
            holds = []
            for _ in range(15):
                spin_until = clock() + rng.random() * 0.001
                while clock() < spin_until:
                    pass
                start = clock()
                assert hub.fanout(peers, frame, None, interval) == (2, 0, [])
                while any(peer.pending_size for peer in peers):
                    busy_until = clock() + 20e-6
                    while clock() < busy_until:
                        pass
                    await asyncio.sleep(0)
                holds.append(clock() - start)
                for link in links:
                    assert await link.read_exactly(len(frame)) == frame
        shortest = min(holds)
        if tick_timers:
            assert shortest >= interval - 0.001 - 1e-4, holds
        else:
            assert shortest >= interval - 1e-4, holds

    run(main())


class NoReaderLoop(CountingClock):
    """The running loop without ``add_reader`` (as Windows' proactor loop): the
    C hub's timerfd cannot be watched, so it must fall back to ``call_at``."""

    def add_reader(self, fd: int, callback: Any, *args: Any) -> None:
        raise NotImplementedError


def test_a_held_fanout_falls_back_to_loop_timers(run: Run, fanout_module: ModuleType) -> None:
    """Where the loop cannot watch a descriptor, held frames still leave within
    the interval (loop timers), every time, and the hub keeps no descriptor open
    for a timer it cannot use."""

    import gc

    def timerfds() -> int:
        count = 0
        for name in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                count += os.readlink(f"/proc/self/fd/{name}") == "anon_inode:[timerfd]"
        return count

    async def main() -> None:
        loop = asyncio.get_running_loop()
        no_reader = NoReaderLoop(loop)  # the hub holds it weakly
        hub = fanout_module.Hub(no_reader)
        async with open_links(fanout_module, 3, hub=hub) as (_, links):
            peers = [link.peer for link in links]
            fds = timerfds()
            for i in range(3):
                frame = fanout_module.build_frame(0x1, f"held{i}".encode())
                start = loop.time()
                assert hub.fanout(peers, frame, None, 0.05) == (3, 0, [])
                await asyncio.sleep(0)
                assert all(link.read_available() == b"" for link in links)
                for link in links:
                    assert await link.read_exactly(len(frame)) == frame
                assert 0.05 - 0.002 <= loop.time() - start < 2.0
            assert timerfds() == fds  # none opened, or none kept

    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("no /proc/self/fd to count descriptors")
    gc.collect()  # no other hub's timerfd closes while this counts
    gc.disable()
    try:
        run(main())
    finally:
        gc.enable()


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_a_hub_does_not_keep_its_loop_alive(fanout_module: ModuleType, loop_name: str) -> None:
    """The hub registry is keyed weakly by the loop, so a hub must not hold its
    loop strongly: a loop that served a room broadcast (and a held one) is
    collected once its user drops it, and its hub with it (with the hub, the C
    fan-out's timerfd is closed)."""
    import gc
    import weakref

    import reinhardt_ws as rw

    def new_loop() -> asyncio.AbstractEventLoop:
        if loop_name == "uvloop":
            uvloop = pytest.importorskip("uvloop")
            return uvloop.new_event_loop()  # type: ignore[no-any-return]
        return asyncio.new_event_loop()

    async def serve_one_broadcast() -> None:
        rooms = rw.RoomManager(flush_interval=0.01)
        joined = asyncio.Event()

        class Member(rw.WebSocketHandler):
            async def on_connect(self, conn: Any) -> None:
                await rooms.join("r", conn)
                joined.set()

        server = await rw.serve(Member(), "127.0.0.1", 0, ping_interval=None)
        try:
            async with rw.connect(f"ws://127.0.0.1:{server.port}/") as client:
                await asyncio.wait_for(joined.wait(), 10)
                assert (await rooms.broadcast("r", "held")).delivered == 1
                assert (await asyncio.wait_for(client.recv(), 10)).data == "held"
            await rooms.close()
        finally:
            await server.close(timeout=5.0)

    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []
    hubs = []
    fds: int | None = None

    def open_fds() -> int | None:
        return len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None

    for i in range(3):
        loop = new_loop()
        loop.run_until_complete(serve_one_broadcast())
        hub = _fanout.get_hub(loop)
        assert type(hub) is fanout_module.Hub and hub.loop is loop
        hubs.append(hub)
        loops.append(weakref.ref(loop))
        loop.close()
        del loop, hub
        if i == 0:
            gc.collect()
            fds = open_fds()
    gc.collect()
    assert [ref() for ref in loops] == [None, None, None]
    assert all(hub.loop is None for hub in hubs)
    del hubs
    gc.collect()
    # Descriptors do not pile up with loops: theirs, and the C hubs' timerfds,
    # are closed (counted after the first loop, which may open some for good).
    if fds is not None:
        assert (open_fds() or 0) <= fds


@pytest.mark.parametrize("interval", [-1.0, float("nan"), float("inf")])
def test_fanout_rejects_a_bad_flush_interval(run: Run, fanout_module: ModuleType,
                                             interval: float) -> None:
    async def main() -> None:
        async with open_links(fanout_module, 1) as (hub, links):
            frame = fanout_module.build_frame(0x1, b"x")
            with pytest.raises(ValueError, match="flush_interval"):
                hub.fanout([links[0].peer], frame, None, interval)
            with pytest.raises(TypeError):
                hub.fanout([links[0].peer], frame, None, "0.1")
            assert hub.stats()["fanouts"] == 0 and links[0].peer.pending_size == 0

    run(main())


# -- partial writes and EAGAIN -----------------------------------------------------------
@pytest.mark.parametrize("kind", TRANSPORTS)
def test_partial_write_hands_the_rest_to_the_transport_in_order(
        run: Run, fanout_module: ModuleType, kind: str) -> None:
    sizes = [1000, 5000, 30_000, 70_000, 200_000, 17, 3000, 65_536, 400_000, 9]

    async def main() -> None:
        async with open_links(fanout_module, 1, kind, sndbuf=16384,
                              rcvbuf=16384) as (hub, links):
            link = links[0]
            peer = link.peer
            frames = [fanout_module.build_frame(0x2, payload_of(size, i))
                      for i, size in enumerate(sizes)]
            for frame in frames[:5]:
                assert peer.send(frame) == fanout_module.DELIVERED
            for frame in frames[5:8]:
                assert peer.push(frame) == fanout_module.DELIVERED
            assert peer.pending_size == sum(len(f) for f in frames[:8])
            hub.flush()
            assert peer.pending_size == 0
            # The kernel took part; the transport holds the rest.
            held = link.transport.get_write_buffer_size()
            assert 0 < held < sum(len(f) for f in frames[:8])
            assert peer.buffered_size() == held
            # Later frames queue behind what the transport holds.
            for frame in frames[8:]:
                hub.fanout([peer], frame)
            await asyncio.sleep(0)
            want = b"".join(frames)
            got = await link.read_exactly(len(want))
            assert got == want
            assert [p for _, p in parse_frames(got)] == [
                payload_of(size, i) for i, size in enumerate(sizes)]
            await eventually(lambda: peer.buffered_size() == 0)

    run(main())


@writes_to_the_socket_fd
@pytest.mark.parametrize("kind", TRANSPORTS)
def test_socket_full_everything_goes_to_the_transport(run: Run, fanout_module: ModuleType,
                                                      kind: str) -> None:
    """EAGAIN on the direct write: every frame is handed to the transport, in order."""

    async def main() -> None:
        async with open_links(fanout_module, 1, kind, sndbuf=8192,
                              rcvbuf=8192) as (hub, links):
            link = links[0]
            filler = link.fill_kernel()
            assert link.transport.get_write_buffer_size() == 0
            frames = frames_of(fanout_module, 10, 1000)
            for frame in frames:
                link.peer.send(frame)
            hub.flush()
            assert link.transport.get_write_buffer_size() == sum(len(f) for f in frames)
            want = filler + b"".join(frames)
            assert await link.read_exactly(len(want)) == want

    run(main())


# -- failures ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", TRANSPORTS)
def test_failed_write_marks_the_peer_failed(run: Run, fanout_module: ModuleType,
                                            kind: str) -> None:
    async def main() -> None:
        async with open_links(fanout_module, 2, kind) as (hub, links):
            gone, alive = links
            peers = [gone.peer, alive.peer]
            frame = fanout_module.build_frame(0x1, b"hello")
            assert hub.fanout(peers, frame) == (2, 0, [])
            hub.flush()
            assert await alive.read_exactly(len(frame)) == frame
            gone.reset_reader()
            # The loop has not run: the transport has not noticed; the write does.
            assert hub.fanout(peers, frame) == (2, 0, [])
            hub.flush()
            assert gone.peer.failed
            assert not alive.peer.failed
            assert gone.failures == []  # reported from the loop, not from inside flush
            assert hub.fanout(peers, frame) == (1, 0, ["peer0"])
            assert gone.peer.send(frame) == fanout_module.FAILED
            assert gone.peer.push(frame) == fanout_module.FAILED
            await eventually(lambda: len(gone.failures) == 1)
            exc = gone.failures[0]
            assert isinstance(exc, OSError)
            assert exc.errno in (errno.ECONNRESET, errno.EPIPE)
            assert await alive.read_exactly(2 * len(frame)) == frame * 2
            hub.fanout(peers, frame)
            await asyncio.sleep(0)
            assert len(gone.failures) == 1  # once

    run(main())


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_closing_transport_fails_the_peer(run: Run, fanout_module: ModuleType,
                                          kind: str) -> None:
    async def main() -> None:
        async with open_links(fanout_module, 1, kind) as (hub, links):
            link = links[0]
            frame = fanout_module.build_frame(0x1, b"x")
            link.peer.send(frame)
            link.transport.close()
            hub.flush()
            assert link.peer.failed
            await eventually(lambda: link.failures == [None])

    run(main())


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_a_raising_transport_does_not_starve_the_other_peers(
        run: Run, fanout_module: ModuleType, kind: str) -> None:
    """A transport that raises on write (here: write after write_eof) fails its
    own peer; the peers after it in the same flush are written all the same."""

    async def main() -> None:
        async with open_links(fanout_module, 3, kind, sndbuf=8192,
                              rcvbuf=8192) as (hub, links):
            broken = links[0]
            broken.transport.write(b"\0" * 500_000)  # buffered, so write_eof is deferred
            broken.transport.write_eof()
            peers = [link.peer for link in links]
            for i in range(2):
                frame = fanout_module.build_frame(0x1, f"m{i}".encode())
                assert hub.fanout(peers, frame) == (3 - i, 0, ["peer0"] if i else [])
                await asyncio.sleep(0)
                assert broken.peer.failed
                for link in links[1:]:
                    assert await link.read_exactly(len(frame)) == frame
            await eventually(lambda: len(broken.failures) == 1)
            assert isinstance(broken.failures[0], RuntimeError)

    run(main())


# -- slow consumers and the memory bound ----------------------------------------------------
@pytest.mark.parametrize("drop_slow", [True, False], ids=["drop", "close"])
@pytest.mark.parametrize("kind", TRANSPORTS)
def test_buffered_bytes_stay_within_max_write_buffer(run: Run, fanout_module: ModuleType,
                                                     kind: str, drop_slow: bool) -> None:
    """Whatever the burst pattern, a peer never holds more than max_write_buffer
    plus one frame (queue plus transport buffer), under both policies."""
    limit = 256 * 1024
    size = 8192
    bursts = [1, 2, 3, 5, 32, 1, 7, 40, 2, 31, 64, 1]

    async def main() -> None:
        async with open_links(fanout_module, 1, kind, max_write_buffer=limit,
                              drop_slow=drop_slow, sndbuf=16384, rcvbuf=16384,
                              high_water=limit // 4) as (hub, links):
            link = links[0]
            peer = link.peer
            frames = iter(frames_of(fanout_module, sum(bursts), size))
            outcomes: list[int] = []
            frame = b""
            for burst in bursts:
                for _ in range(burst):
                    frame = next(frames)
                    outcomes.append(hub.fanout([peer], frame)[1])
                    assert peer.buffered_size() <= limit + len(frame)
                await asyncio.sleep(0)
                assert peer.buffered_size() <= limit + len(frame)
                assert link.transport.get_write_buffer_size() <= limit + len(frame)
            assert 1 in outcomes  # it did reach the limit
            if drop_slow:
                assert peer.over_limit and not peer.closed
                assert link.overflows == 0
            else:
                assert peer.closed
                await eventually(lambda: link.overflows == 1)
                assert hub.fanout([peer], frame) == (0, 0, [peer.conn_id])

    run(main())


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_drop_policy_skips_while_over_and_resumes_once_drained(
        run: Run, fanout_module: ModuleType, kind: str) -> None:
    limit = 64 * 1024

    async def main() -> None:
        async with open_links(fanout_module, 1, kind, max_write_buffer=limit,
                              drop_slow=True, sndbuf=8192, rcvbuf=8192,
                              high_water=limit // 4) as (hub, links):
            link = links[0]
            peer = link.peer
            frames = frames_of(fanout_module, 400, 2048)
            results = []
            for frame in frames[:300]:
                results.append(hub.fanout([peer], frame))
                await asyncio.sleep(0)
            dropped = [i for i, r in enumerate(results) if r[1]]
            assert dropped, "the reader never reads: the peer must go over its limit"
            assert all(results[i] == (0, 1, []) for i in dropped)
            assert peer.over_limit
            assert link.overflows == 0 and not peer.closed
            # The reader catches up; the peer drains and takes frames again.
            received = bytearray()

            async def drain() -> bool:
                received.extend(link.read_available())
                return peer.buffered_size() == 0

            while not await drain():
                await asyncio.sleep(0.005)
            for frame in frames[300:]:
                assert hub.fanout([peer], frame) == (1, 0, [])
                await asyncio.sleep(0)
                received.extend(link.read_available())
            assert not peer.over_limit
            tail = b"".join(frames[300:])

            def caught_up() -> bool:
                received.extend(link.read_available())
                return bytes(received).endswith(tail)

            await eventually(caught_up)
            # Whole frames only, in order, with gaps exactly where frames were dropped.
            index = {frame: i for i, frame in enumerate(frames)}
            order = [index[fanout_module.build_frame(0x2, p)]
                     for _, p in parse_frames(bytes(received))]
            assert order == sorted(order)
            assert set(range(400)) - set(order) == set(dropped)

    run(main())


# -- the slow-consumer rule is about backlog ------------------------------------------------
@writes_to_the_socket_fd
@pytest.mark.parametrize("drop_slow", [True, False], ids=["drop", "close"])
@pytest.mark.parametrize("kind", TRANSPORTS)
def test_a_peer_without_backlog_takes_one_frame_however_large(
        run: Run, fanout_module: ModuleType, kind: str, drop_slow: bool) -> None:
    """A frame larger than max_write_buffer goes to every peer that holds nothing
    (neither policy drops or closes them); once the socket has refused it, so that
    the transport holds it, that peer has a backlog, and even one byte more is
    refused (dropped, or the peer closed)."""
    limit = 64 * 1024

    async def main() -> None:
        async with open_links(fanout_module, 3, kind, max_write_buffer=limit,
                              drop_slow=drop_slow, sndbuf=8192,
                              rcvbuf=8192) as (hub, links):
            peers = [link.peer for link in links]
            big = frames_of(fanout_module, 3, 4 * limit)
            for frame in big[:2]:
                assert all(peer.buffered_size() == 0 for peer in peers)
                assert hub.fanout(peers, frame) == (3, 0, [])
                assert [peer.pending_size for peer in peers] == [len(frame)] * 3
                await asyncio.sleep(0)
                for link in links:
                    assert await link.read_exactly(len(frame)) == frame
                await eventually(lambda: all(peer.buffered_size() == 0 for peer in peers))
            assert [link.overflows for link in links] == [0, 0, 0]
            assert not any(peer.closed or peer.over_limit for peer in peers)
            first, second, third = peers
            filler = links[0].choke()  # first's client is slow now
            assert first.send(big[2]) == fanout_module.DELIVERED  # it holds nothing
            # The queue would pass the limit: it is written out at once, the socket
            # refuses it, the transport holds it: a backlog, no room for 2 bytes.
            tiny = fanout_module.build_frame(0x1, b"")
            assert hub.fanout([first], tiny) == (0, 1, [])
            assert first.pending_size == 0
            assert links[0].transport.get_write_buffer_size() == len(big[2])
            assert first.closed is not drop_slow
            assert first.over_limit is drop_slow
            if drop_slow:
                assert hub.fanout([first], tiny) == (0, 1, [])
            # The others hold nothing: taken.
            assert hub.fanout([second, third], big[2]) == (2, 0, [])
            await asyncio.sleep(0)
            want = filler + big[2]  # what the transport held still goes out
            assert await links[0].read_exactly(len(want)) == want
            for link in links[1:]:
                assert await link.read_exactly(len(big[2])) == big[2]
            if drop_slow:
                assert links[0].overflows == 0
            else:
                await eventually(lambda: links[0].overflows == 1)
            assert [link.overflows for link in links[1:]] == [0, 0]
            assert links[0].read_available() == b""  # the tiny frame never went

    run(main())


def hundred_byte_frames(mod: ModuleType, count: int) -> list[bytes]:
    """*count* distinct 100-byte text frames (a 98-byte payload each)."""
    return [mod.build_frame(0x1, bytes((65 + i % 26,)) * 98) for i in range(count)]


@pytest.mark.parametrize("drop_slow", [True, False], ids=["drop", "close"])
@pytest.mark.parametrize("kind", TRANSPORTS)
def test_frames_queued_this_iteration_are_not_backlog(
        run: Run, fanout_module: ModuleType, kind: str, drop_slow: bool) -> None:
    """A peer whose transport holds nothing and whose queue would pass
    max_write_buffer writes that queue out at once, and only what the socket then
    refuses counts as backlog.  On a socket that takes everything, with
    max_write_buffer 1000, eleven 100-byte sends in one iteration are all
    delivered: the ten queued leave before the loop runs, the eleventh with the
    iteration's flush, in order; neither policy drops or closes."""

    async def main() -> None:
        async with open_links(fanout_module, 1, kind, max_write_buffer=1000,
                              drop_slow=drop_slow) as (hub, links):
            link = links[0]
            peer = link.peer
            frames = hundred_byte_frames(fanout_module, 11)
            assert [peer.send(frame) for frame in frames[:10]] == [fanout_module.DELIVERED] * 10
            assert peer.pending_size == 1000
            assert link.read_available() == b""  # only queued so far
            assert peer.send(frames[10]) == fanout_module.DELIVERED
            assert peer.pending_size == 100  # the eleventh only
            assert not peer.over_limit and not peer.closed
            # The ten are on the wire already: read without running the loop.
            assert link.recv_now(1000) == b"".join(frames[:10])
            assert link.read_available() == b""
            stats = hub.stats()
            assert (stats["delivered"], stats["dropped"], stats["flushes"],
                    stats["syscalls"]) == (11, 0, 1, 1)
            await asyncio.sleep(0)  # the iteration's flush: the eleventh
            assert peer.pending_size == 0
            assert await link.read_exactly(100) == frames[10]
            # The same through fan-outs, over several rounds.
            more = hundred_byte_frames(fanout_module, 35)
            assert [hub.fanout([peer], frame) for frame in more] == [(1, 0, [])] * 35
            assert peer.pending_size == 500  # 3 x 1000 written early, 500 queued
            await asyncio.sleep(0)
            assert await link.read_exactly(3500) == b"".join(more)
            stats = hub.stats()
            assert (stats["delivered"], stats["dropped"], stats["overflows"],
                    stats["flushes"], stats["syscalls"]) == (46, 0, 0, 6, 6)
            await asyncio.sleep(0)
            assert link.overflows == 0 and not peer.closed and not peer.over_limit

    run(main())


@pytest.mark.parametrize("drop_slow", [True, False], ids=["drop", "close"])
@pytest.mark.parametrize("kind", TRANSPORTS)
def test_an_early_write_that_fails_answers_failed(
        run: Run, fanout_module: ModuleType, kind: str, drop_slow: bool) -> None:
    """When the early write finds the connection gone, the frame that caused it is
    answered FAILED (not queued on a failed peer), under both policies; the peer
    reports the failure once and no overflow."""

    async def main() -> None:
        async with open_links(fanout_module, 2, kind, max_write_buffer=1000,
                              drop_slow=drop_slow) as (hub, links):
            gone, alive = links
            frames = hundred_byte_frames(fanout_module, 11)
            for frame in frames[:10]:
                assert hub.fanout([gone.peer, alive.peer], frame) == (2, 0, [])
            gone.reset_reader()  # the loop has not run: only a write can notice
            assert hub.fanout([gone.peer, alive.peer], frames[10]) == (1, 0, ["peer0"])
            assert gone.peer.failed and gone.peer.pending_size == 0
            assert alive.peer.pending_size == 100  # alive wrote its ten early
            stats = hub.stats()
            assert (stats["delivered"], stats["dropped"], stats["failed"],
                    stats["overflows"], stats["write_failures"]) == (21, 0, 1, 0, 1)
            await asyncio.sleep(0)
            assert await alive.read_exactly(1100) == b"".join(frames)
            await eventually(lambda: len(gone.failures) == 1)
            assert isinstance(gone.failures[0], OSError)
            assert gone.overflows == 0 and not gone.peer.over_limit

    run(main())


@writes_to_the_socket_fd
@pytest.mark.parametrize("drop_slow", [True, False], ids=["drop", "close"])
@pytest.mark.parametrize("kind", TRANSPORTS)
def test_a_queue_the_socket_refuses_is_backlog(
        run: Run, fanout_module: ModuleType, kind: str, drop_slow: bool) -> None:
    """The same eleven sends to a client whose socket is full: the queue is written
    out early all the same, the socket refuses it, the transport holds it, and that
    is a genuine backlog: the eleventh is dropped, or closes the peer."""

    async def main() -> None:
        async with open_links(fanout_module, 1, kind, max_write_buffer=1000,
                              drop_slow=drop_slow, sndbuf=8192,
                              rcvbuf=8192) as (hub, links):
            link = links[0]
            peer = link.peer
            filler = link.choke()
            frames = hundred_byte_frames(fanout_module, 11)
            assert [peer.send(frame) for frame in frames] == (
                [fanout_module.DELIVERED] * 10 + [fanout_module.DROPPED])
            assert peer.pending_size == 0
            assert link.transport.get_write_buffer_size() == peer.buffered_size() == 1000
            assert peer.closed is not drop_slow
            assert peer.over_limit is drop_slow
            if drop_slow:  # still over: the transport holds the ten
                assert peer.send(frames[10]) == fanout_module.DROPPED
            else:
                assert peer.send(frames[10]) == fanout_module.FAILED
            stats = hub.stats()
            assert (stats["delivered"], stats["dropped"], stats["overflows"],
                    stats["failed"], stats["flushes"], stats["syscalls"],
                    stats["transport_writes"]) == (
                10, 2 if drop_slow else 1, 0 if drop_slow else 1, 0 if drop_slow else 1,
                1, 1, 10)
            await asyncio.sleep(0)
            want = filler + b"".join(frames[:10])
            assert await link.read_exactly(len(want)) == want
            if drop_slow:
                # Drained: no backlog, taken again.
                await eventually(lambda: peer.buffered_size() == 0)
                assert peer.send(frames[10]) == fanout_module.DELIVERED
                assert not peer.over_limit
                await asyncio.sleep(0)
                assert await link.read_exactly(100) == frames[10]
                assert link.overflows == 0
            else:
                assert link.overflows == 1
                assert link.read_available() == b""

    run(main())


@writes_to_the_socket_fd
@pytest.mark.parametrize("kind", TRANSPORTS)
def test_a_backlog_in_the_transport_counts_as_backlog(run: Run, fanout_module: ModuleType,
                                                      kind: str) -> None:
    """Bytes the transport holds are backlog although the queue is empty: then a
    frame is taken only while backlog plus frame fit in max_write_buffer."""
    limit = 10_000

    async def main() -> None:
        async with open_links(fanout_module, 1, kind, max_write_buffer=limit,
                              sndbuf=8192, rcvbuf=8192) as (hub, links):
            link = links[0]
            peer = link.peer
            filler = link.fill_kernel()
            link.transport.write(b"t" * 4000)
            assert link.transport.get_write_buffer_size() == 4000
            assert peer.pending_size == 0 and peer.buffered_size() == 4000
            fits = fanout_module.build_frame(0x2, bytes(5996))  # 4000 + 6000 == limit
            too_big = fanout_module.build_frame(0x2, bytes(limit))
            assert hub.fanout([peer], too_big) == (0, 1, [])
            assert hub.fanout([peer], fits) == (1, 0, [])
            assert hub.fanout([peer], fanout_module.build_frame(0x1, b"")) == (0, 1, [])
            await asyncio.sleep(0)
            want = filler + b"t" * 4000 + fits
            assert await link.read_exactly(len(want)) == want
            await eventually(lambda: peer.buffered_size() == 0)
            assert hub.fanout([peer], too_big) == (1, 0, [])  # no backlog: taken
            await asyncio.sleep(0)
            assert await link.read_exactly(len(too_big)) == too_big

    run(main())


# -- own sends: push() and buffered_size() -----------------------------------------------
@pytest.mark.parametrize("kind", TRANSPORTS)
def test_push_never_queues_past_the_limit_plus_one_frame(run: Run, fanout_module: ModuleType,
                                                         kind: str) -> None:
    """push() never refuses a live peer, and a queue that one push takes past
    max_write_buffer is written out by that push (the transport then holds what
    the kernel did not take); buffered_size() is the queue plus the transport's
    buffer, exactly, all along."""
    limit = 10_000
    sizes = [100, 3000, 5000, 1900, 1, 20_000, 50, 9_999, 10_000, 7, 4000, 4000, 4000]

    async def main() -> None:
        async with open_links(fanout_module, 1, kind, max_write_buffer=limit,
                              sndbuf=8192, rcvbuf=8192) as (_hub, links):
            link = links[0]
            peer = link.peer
            sent: list[bytes] = []
            written_out = 0
            for round_ in range(4):  # never yields: only push itself writes
                for i, size in enumerate(sizes):
                    frame = fanout_module.build_frame(0x2, payload_of(size, round_ + i))
                    before = peer.pending_size
                    assert peer.push(frame) == fanout_module.DELIVERED
                    sent.append(frame)
                    if before + len(frame) > limit:
                        assert peer.pending_size == 0
                        written_out += 1
                    else:
                        assert peer.pending_size == before + len(frame)
                    assert peer.pending_size <= limit
                    assert peer.buffered_size() == (peer.pending_size
                                                    + link.transport.get_write_buffer_size())
            assert written_out >= 4
            assert link.transport.get_write_buffer_size() > 0  # the kernel did not take all
            want = b"".join(sent)
            assert await link.read_exactly(len(want)) == want
            assert peer.buffered_size() == 0

    run(main())


# -- the hub's counters --------------------------------------------------------------------
@writes_to_the_socket_fd
@pytest.mark.parametrize("kind", TRANSPORTS)
def test_stats_count_exactly(run: Run, fanout_module: ModuleType, kind: str) -> None:
    async def main() -> None:
        async with open_links(fanout_module, 3, kind, max_write_buffer=1000,
                              sndbuf=8192, rcvbuf=8192) as (hub, links):
            a, b, c = (link.peer for link in links)
            zero = dict.fromkeys(("fanouts", "delivered", "dropped", "overflows", "failed",
                                  "pushed", "bytes_queued", "flushes", "syscalls",
                                  "transport_writes", "write_failures"), 0)
            assert hub.stats() == zero
            f100 = fanout_module.build_frame(0x1, b"s" * 98)
            big = fanout_module.build_frame(0x2, bytes(1996))  # 2000 bytes
            assert hub.fanout([a, b, c], f100, frozenset({"peer2"})) == (2, 0, [])
            assert a.send(f100) == fanout_module.DELIVERED
            assert c.push(f100) == fanout_module.DELIVERED
            await asyncio.sleep(0)  # a: one writev of 2 frames; b, c: one write each
            assert hub.stats() == {**zero, "fanouts": 1, "delivered": 3, "pushed": 1,
                                   "bytes_queued": 400, "flushes": 3, "syscalls": 3}
            for link, n in zip(links, (200, 100, 100), strict=True):
                assert len(await link.read_exactly(n)) == n
            assert a.send(big) == fanout_module.DELIVERED  # no backlog
            # The queue would pass 1000 while the transport holds nothing: written
            # out early (the socket takes it all), so no backlog: taken.
            assert a.send(f100) == fanout_module.DELIVERED
            assert a.pending_size == 100
            b.close()
            assert hub.fanout({"a": a, "b": b}, f100) == (1, 0, ["peer1"])
            c.discard()
            assert c.push(f100) == c.send(f100) == fanout_module.FAILED
            a.write_now(f100)  # the two queued and this one in one writev, now
            assert hub.stats() == {**zero, "fanouts": 2, "delivered": 6, "failed": 3,
                                   "pushed": 2, "bytes_queued": 2700, "flushes": 5,
                                   "syscalls": 5}
            assert await links[0].read_exactly(2300) == big + f100 * 3
            # A slow client (its socket full): big is written early too, the socket
            # refuses it, the transport holds it: a backlog, so d is closed.
            filler = links[2].choke()
            overflowed: list[str] = []
            d = fanout_module.Peer(hub, links[2].transport, None, links[2].fd, "d", 1000,
                                   False, lambda: overflowed.append("d"), print)
            assert d.send(big) == fanout_module.DELIVERED
            assert d.send(f100) == fanout_module.DROPPED
            assert (d.closed, d.pending_size, links[2].transport.get_write_buffer_size()) == (
                True, 0, 2000)
            await asyncio.sleep(0)  # nothing left to write for d
            assert overflowed == ["d"]
            assert hub.stats() == {**zero, "fanouts": 2, "delivered": 7, "dropped": 1,
                                   "overflows": 1, "failed": 3, "pushed": 2,
                                   "bytes_queued": 4700, "flushes": 6, "syscalls": 6,
                                   "transport_writes": 1}
            assert await links[2].read_exactly(len(filler) + 2000) == filler + big
            # A full socket: the direct write takes nothing, the transport takes all;
            # then the transport holds bytes, so the next flush does not try the socket.
            links[0].choke()
            assert a.send(f100) == a.send(f100) == fanout_module.DELIVERED
            a.flush()
            assert a.send(f100) == fanout_module.DELIVERED
            a.flush()
            assert a.send(big) == fanout_module.DROPPED  # 300 held: a backlog
            links[0].transport.close()
            assert a.send(f100) == fanout_module.DELIVERED
            a.flush()  # a closing transport: the peer fails
            assert a.failed
            assert hub.stats() == {**zero, "fanouts": 2, "delivered": 11, "dropped": 2,
                                   "overflows": 1, "failed": 3, "pushed": 2,
                                   "bytes_queued": 5100, "flushes": 8, "syscalls": 7,
                                   "transport_writes": 4, "write_failures": 1}

    run(main())


# -- what the selector decides for the twins -------------------------------------------------
def test_new_peer_validates_max_write_buffer(run: Run) -> None:
    async def main() -> None:
        async with open_links(_fanout.available()["python"], 1) as (_, links):
            hub = _fanout.get_hub(asyncio.get_running_loop())
            for bad in (0, -1):
                with pytest.raises(ValueError, match="max_write_buffer must be positive"):
                    _fanout.new_peer(hub, links[0].transport, None, "x", bad, True,
                                     print, print)
            peer = _fanout.new_peer(hub, links[0].transport, None, "x", 1, True, print, print)
            assert type(peer) is _fanout.Peer
            assert peer.max_write_buffer == 1

    run(main())


def test_direct_fd_is_the_socket_or_minus_one(run: Run, monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Any) -> None:
    import ssl

    import trustme

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with open_links(_fanout.available()["python"], 1) as (_, links):
            direct = links[0].fd if _fanout.DIRECT_WRITES else -1  # none on Windows
            assert _fanout.direct_fd(links[0].transport) == direct
            monkeypatch.setattr(_fanout, "DIRECT_WRITES", False)  # as on Windows
            assert _fanout.direct_fd(links[0].transport) == -1
            monkeypatch.undo()
        # A transport without a socket: a pipe's (asyncio's has no "socket", uvloop's
        # a pseudo-socket on the pipe's descriptor; asyncio has no transport for
        # anonymous pipes on Windows).
        if sys.platform != "win32":
            rfd, wfd = os.pipe()
            with open(rfd, "rb", buffering=0), open(wfd, "wb", buffering=0) as pipe:
                transport, _ = await loop.connect_write_pipe(asyncio.BaseProtocol, pipe)
                try:
                    assert _fanout.direct_fd(transport) == -1
                finally:
                    transport.close()
        # TLS: the bytes must go through the TLS layer.
        ca = trustme.CA()
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
        client_ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        ca.configure_trust(client_ctx)

        async def serve_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()

        server = await asyncio.start_server(serve_one, "127.0.0.1", 0, ssl=server_ctx)
        try:
            port = server.sockets[0].getsockname()[1]
            _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx,
                                                      server_hostname="127.0.0.1")
            assert writer.transport.get_extra_info("socket") is not None
            assert _fanout.direct_fd(writer.transport) == -1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        finally:
            server.close()
            await server.wait_closed()

    run(main())


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_a_peer_without_fd_writes_through_the_transport_only(
        run: Run, fanout_module: ModuleType, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a peer does where there is no direct path (Windows, TLS): every frame
    through the transport, in order, no syscall of its own."""
    monkeypatch.setattr(_fanout, "DIRECT_WRITES", False)

    async def main() -> None:
        async with open_links(fanout_module, 1, kind) as (hub, links):
            link = links[0]
            peer = fanout_module.Peer(hub, link.transport, None,
                                      _fanout.direct_fd(link.transport), "p", 1 << 20, True,
                                      print, print)
            frames = frames_of(fanout_module, 5, 1000)
            for frame in frames[:3]:
                assert hub.fanout([peer], frame) == (1, 0, [])
            assert peer.push(frames[3]) == fanout_module.DELIVERED
            await asyncio.sleep(0)
            peer.write_now(frames[4])
            want = b"".join(frames)
            assert await link.read_exactly(len(want)) == want
            stats = hub.stats()
            assert (stats["syscalls"], stats["transport_writes"], stats["flushes"]) == (0, 5, 2)

    run(main())


def test_the_python_twin_ignores_an_fd_without_writev(run: Run,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The twin's counterpart of RWS_HAVE_DIRECT (0 on Windows in C): without
    os.writev the fd it is given is ignored.  (The C side cannot be switched here.)"""
    from reinhardt_ws import _fastbroadcast_py

    monkeypatch.setattr(_fastbroadcast_py, "_HAVE_DIRECT", False)

    async def main() -> None:
        async with open_links(_fastbroadcast_py, 1) as (hub, links):
            link = links[0]
            frame = _fastbroadcast_py.build_frame(0x2, b"x" * 100)
            link.peer.send(frame)
            hub.flush()
            assert await link.read_exactly(len(frame)) == frame
            assert (hub.stats()["syscalls"], hub.stats()["transport_writes"]) == (0, 1)

    run(main())
