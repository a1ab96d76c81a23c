"""Cross-process room broadcasts through Redis, against the single-process figure.

Every scenario is one room of ``CLIENTS`` raw WebSocket clients (in a separate
client process that only counts frames and reads timestamps) and server
processes running ``tests/redis_app.py``:

- ``memory``: one process, in-memory backend: the single-process figure;
- ``redis-local``: one process with the Redis backend, every member local (what
  publishing costs a broadcaster when no other process listens);
- ``cross``: every member on process B, the broadcasts made on process A: each
  message crosses Redis and is fanned out by B from the framed bytes;
- ``span``: members split evenly over A and B, broadcasts made on A.

Two measurements per scenario and fan-out implementation:

- *flood*: ``MESSAGES`` broadcasts of ``SIZE`` bytes, ``BATCH`` per event-loop
  iteration; throughput = deliveries / (last receipt - first send).  This is the
  timed function of pytest-benchmark (one round = one flood).
- *paced*: ``RATE`` messages per second for ``PACED`` messages; latency from the
  send time in the payload to receipt (one monotonic clock, one machine).

Run (the figures go to stdout and into each benchmark's ``extra_info``; the
servers run on the loop of ``--bench-loop``, uvloop by default)::

    python -m pytest bench/test_redis_fanout.py -s

``REINHARDT_WS_BENCH_CLIENTS``, ``..._MESSAGES``, ``..._SIZE`` override the sizes.
All processes share the machine: on a small one, Redis, two servers and the
client process compete for the same cores, which is part of the cost measured.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import selectors
import socket
import statistics
import sys
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

pytest.importorskip("redis")
pytest.importorskip("pytest_benchmark")

import reinhardt_ws as rw  # noqa: E402
from tests.fixtures import client_frame, handshake_request  # noqa: E402
from tests.redis_app import BLAST_HEADER  # noqa: E402
from tests.redis_fixtures import (  # noqa: E402
    AppProcess,
    RedisServer,
    redis_server_binary,
)

CLIENTS = int(os.environ.get("REINHARDT_WS_BENCH_CLIENTS", "100"))
MESSAGES = int(os.environ.get("REINHARDT_WS_BENCH_MESSAGES", "5000"))
SIZE = int(os.environ.get("REINHARDT_WS_BENCH_SIZE", "64"))
BATCH = 8
RATE = 1000.0
PACED = 2000
ROUNDS = 3
ROOM = "bench"
SAMPLES = 4  # sockets per server whose every frame's latency is recorded

#: run in this order (the ids sort so): the single-process figure comes first
SCENARIOS = ("1-memory", "2-redis-local", "3-cross", "4-span")
IMPLEMENTATIONS = ("cython", "python")

RESULTS: dict[tuple[str, str], dict[str, float]] = {}


# -- the client process -------------------------------------------------------------------
class _Socket:
    """One client socket.  Sampled sockets parse every frame (and record its
    latency); the others only count bytes once joined, to keep client work small."""

    __slots__ = ("buf", "count", "first_ts", "last_ns", "lat", "parse", "received", "sample",
                 "sock", "texts")

    def __init__(self, sock: socket.socket, sample: bool) -> None:
        self.sock = sock
        self.sample = sample
        self.parse = True
        self.buf = bytearray()
        self.count = 0
        self.received = 0
        self.texts = 0
        self.first_ts = 0
        self.last_ns = 0
        self.lat: list[int] = []

    def feed(self, data: bytes, now: int) -> None:
        self.last_ns = now
        if not self.parse:
            self.received += len(data)
            return
        buf = self.buf
        buf += data
        n = len(buf)
        off = 0
        while n - off >= 2:
            length = buf[off + 1] & 0x7F
            head = 2
            if length == 126:
                if n - off < 4:
                    break
                length = int.from_bytes(buf[off + 2:off + 4], "big")
                head = 4
            elif length == 127:
                if n - off < 10:
                    break
                length = int.from_bytes(buf[off + 2:off + 10], "big")
                head = 10
            if n - off < head + length:
                break
            opcode = buf[off] & 0x0F
            if opcode == 0x2:
                self.count += 1
                if self.sample:
                    sent = int.from_bytes(buf[off + head:off + head + 8], "big")
                    if not self.first_ts:
                        self.first_ts = sent
                    self.lat.append(now - sent)
            elif opcode == 0x1:
                self.texts += 1
            off += head + length
        del buf[:off]


def _client_worker(pipe: Connection, targets: list[tuple[int, int]]) -> None:
    """Open the clients, join them to the room, then count frames on command."""
    socks: list[_Socket] = []
    sel = selectors.DefaultSelector()
    join = client_frame(0x1, json.dumps({"op": "join", "room": ROOM}).encode())
    for port, count in targets:
        for i in range(count):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(handshake_request(port))
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(4096)
                if not chunk:
                    raise RuntimeError("handshake refused")
                head += chunk
            assert head.startswith(b"HTTP/1.1 101"), head
            sock.sendall(join)
            sock.setblocking(False)
            state = _Socket(sock, i < SAMPLES)
            state.feed(head.split(b"\r\n\r\n", 1)[1], 0)
            socks.append(state)
            sel.register(sock, selectors.EVENT_READ, state)

    def pump(until: Any, deadline: float) -> bool:
        while not until():
            if time.monotonic() > deadline:
                return False
            for key, _ in sel.select(0.05):
                state = key.data
                try:
                    data = state.sock.recv(262144)
                except BlockingIOError:
                    continue
                if not data:
                    raise RuntimeError("a server closed a bench connection")
                state.feed(data, time.monotonic_ns())
        return True

    if not pump(lambda: all(s.texts >= 1 for s in socks), time.monotonic() + 30):
        pipe.send({"error": "join replies missing"})
        return
    for state in socks:
        state.parse = state.sample
    size = max(SIZE, BLAST_HEADER.size)
    frame_len = size + (2 if size < 126 else 4 if size < 65536 else 10)
    pipe.send({"ready": len(socks)})

    def done(expect: int) -> bool:
        return all((s.count if s.parse else s.received // frame_len) >= expect for s in socks)

    while True:
        command = pipe.recv()
        if command[0] == "quit":
            break
        _op, expect, timeout = command
        for state in socks:
            state.count = 0
            state.received = 0
            state.first_ts = 0
            state.lat = []
        ok = pump(lambda e=expect: done(e), time.monotonic() + timeout)  # type: ignore[misc]
        firsts = [s.first_ts for s in socks if s.first_ts]
        pipe.send({
            "ok": ok,
            "delivered": sum(s.count if s.parse else s.received // frame_len for s in socks),
            "first_send_ns": min(firsts) if firsts else 0,
            "last_recv_ns": max(s.last_ns for s in socks),
            "latencies_ns": [v for s in socks for v in s.lat],
        })
    for state in socks:
        state.sock.close()


# -- the scenarios ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer(redis_server_binary()).start()
    yield server
    server.stop()


class Scenario:
    """Server processes, the client process and the broadcasting control client."""

    def __init__(self, name: str, implementation: str, redis: RedisServer, tmp: Path,
                 uvloop: bool) -> None:
        redis_url = redis.url
        self.redis_pid = redis.proc.pid if redis.proc is not None else 0
        prefix = f"bench-{name}-{implementation}"
        url = "memory" if name == "memory" else redis_url
        self.servers = [AppProcess(url, prefix, implementation, tmp / f"{i}.log",
                                   uvloop=uvloop).start()
                        for i in range(2 if name in ("cross", "span") else 1)]
        publisher, *others = self.servers
        self.publisher = publisher
        if name == "cross":
            targets = [(others[0].port, CLIENTS)]
        elif name == "span":
            targets = [(publisher.port, CLIENTS // 2), (others[0].port, CLIENTS - CLIENTS // 2)]
        else:
            targets = [(publisher.port, CLIENTS)]
        self.clients = sum(count for _port, count in targets)
        ctx = multiprocessing.get_context("fork")
        self.pipe, child = ctx.Pipe()
        self.proc = ctx.Process(target=_client_worker, args=(child, targets), daemon=True)
        self.proc.start()
        reply = self._reply(60)
        assert reply.get("ready") == self.clients, reply

    def _reply(self, timeout: float) -> dict[str, Any]:
        if not self.pipe.poll(timeout):
            raise RuntimeError("the bench client process did not answer")
        return self.pipe.recv()  # type: ignore[no-any-return]

    def cpu(self) -> tuple[float, float]:
        """CPU seconds so far of the server processes, and of redis-server."""
        servers = sum(_cpu_seconds(s.proc.pid) for s in self.servers if s.proc is not None)
        return servers, _cpu_seconds(self.redis_pid) if self.redis_pid else 0.0

    def phase(self, count: int, batch: int = BATCH, rate: float = 0.0) -> dict[str, Any]:
        """One blast of *count* messages; what the clients saw, and the CPU spent."""
        cpu_before = self.cpu()
        self.pipe.send(("expect", count, 120.0))

        async def blast() -> dict[str, Any]:
            conn = await rw.connect(self.publisher.url)
            try:
                await conn.send(json.dumps({"op": "blast", "room": ROOM, "count": count,
                                            "size": max(SIZE, BLAST_HEADER.size),
                                            "batch": batch, "rate": rate}))
                return json.loads((await conn.recv()).payload)  # type: ignore[no-any-return]
            finally:
                await conn.close()

        sent = asyncio.run(blast())
        seen = self._reply(130)
        assert seen["ok"], f"lost messages: {seen['delivered']} of {count * self.clients}"
        cpu_after = self.cpu()
        seen["broadcast_s"] = sent["elapsed"]
        seen["server_cpu_s"] = cpu_after[0] - cpu_before[0]
        seen["redis_cpu_s"] = cpu_after[1] - cpu_before[1]
        return seen

    def close(self) -> None:
        self.pipe.send(("quit",))
        self.proc.join(10)
        for server in self.servers:
            server.stop()


_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of *pid* (Linux ``/proc``)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _percentile(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_redis_fanout(benchmark: Any, bench_config: Any, redis_server: RedisServer,
                      scenario: str, implementation: str, tmp_path: Path) -> None:
    if implementation == "cython":
        from reinhardt_ws import _fanout

        if "cython" not in _fanout.available():
            pytest.fail("the C extension is not built")
    name = scenario.split("-", 1)[1]
    bench = Scenario(name, implementation, redis_server, tmp_path,
                     uvloop=bench_config.loop == "uvloop")
    try:
        bench.phase(200)  # warm up: connections, subscriptions, caches
        floods: list[dict[str, Any]] = []
        benchmark.pedantic(lambda: floods.append(bench.phase(MESSAGES)),
                           rounds=ROUNDS, iterations=1)
        rates = [f["delivered"] / ((f["last_recv_ns"] - f["first_send_ns"]) / 1e9)
                 for f in floods]
        deliveries = sum(f["delivered"] for f in floods)
        paced = bench.phase(PACED, rate=RATE)
        lat = paced["latencies_ns"]
        figures = {
            "deliveries_per_s": statistics.median(rates),
            "messages_per_s": statistics.median(rates) / bench.clients,
            "broadcaster_calls_per_s": statistics.median(MESSAGES / f["broadcast_s"]
                                                         for f in floods),
            "server_cpu_us_per_delivery": sum(f["server_cpu_s"] for f in floods) / deliveries * 1e6,
            "redis_cpu_us_per_delivery": sum(f["redis_cpu_s"] for f in floods) / deliveries * 1e6,
            "latency_p50_ms": _percentile(lat, 0.50),
            "latency_p99_ms": _percentile(lat, 0.99),
            "latency_max_ms": max(lat) / 1e6,
        }
    finally:
        bench.close()
    benchmark.extra_info.update(figures)
    RESULTS[(name, implementation)] = figures
    base = RESULTS.get(("memory", implementation))
    ratio = ""
    if base:
        cpu = figures["server_cpu_us_per_delivery"] / base["server_cpu_us_per_delivery"]
        ratio = (f" [x{figures['deliveries_per_s'] / base['deliveries_per_s']:.2f} throughput, "
                 f"x{cpu:.2f} server CPU of memory]")
        figures["throughput_vs_memory"] = figures["deliveries_per_s"] / base["deliveries_per_s"]
        figures["server_cpu_vs_memory"] = cpu
    print(f"\n{name:>11} {implementation:>6}: {figures['deliveries_per_s']:>10,.0f} deliveries/s "
          f"({figures['messages_per_s']:,.0f} msg/s to {bench.clients} clients; the "
          f"broadcaster made {figures['broadcaster_calls_per_s']:,.0f} calls/s), server CPU "
          f"{figures['server_cpu_us_per_delivery']:.2f} us/delivery, redis "
          f"{figures['redis_cpu_us_per_delivery']:.2f} us/delivery{ratio}; paced {RATE:.0f}/s: "
          f"latency p50 {figures['latency_p50_ms']:.2f} ms, p99 {figures['latency_p99_ms']:.2f}"
          f" ms, max {figures['latency_max_ms']:.2f} ms")
