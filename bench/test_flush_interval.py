"""The latency budget: ``RoomManager(flush_interval=...)`` against the floor.

A stream of single broadcasts (one per loop iteration, as a ticker or a Redis
subscriber makes them) to N clients, 64 B each, in three phases per round on the
same arenas, one after the other:

1. the floor, one ``send()`` per delivery (the one-syscall floor);
2. reinhardt without a flush interval (each iteration's broadcast written at once);
3. reinhardt with ``flush_interval`` (1 ms by default): broadcasts of several
   iterations share one write per member.

Recorded (medians over rounds, ratios paired with the floor round before):
deliveries per server CPU-second of phase 3 against the floor's
(``throughput_ratio_to_floor_paired``, the target is at least 4x), and the
*added delay*: the server notes ``time.monotonic()`` at each broadcast, ``RECORD``
sockets of each client process (spread evenly over them) note when each frame arrived
whole (spread over the sockets; same machine, same monotonic clock), and the 99th percentile of
arrival - broadcast in phase 3 minus that of phase 2 is what the budget added
(``added_delay_p99_s``; the target: within the interval).  Both phases see the
same clients, which drain on the bench's poll timer, so that timer's
granularity is in both percentiles and cancels in the difference.

Test ids read ``test_flush_interval[<contestant>-<N>-<interval>]``.
"""

from __future__ import annotations

import math
import os

import pytest
from harness.arena import ArenaPool, PhaseResult, median
from harness.scenarios import SPECS, FloorBuild, messages_for, phase_timeout, require, summarize

CONTESTANTS = ("reinhardt-cy", "reinhardt-py")
NS = (1000, 5000)
#: Budgets measured, seconds (``BENCH_FLUSH_INTERVALS=0.001,0.005`` for more).
INTERVALS = tuple(float(s) for s in os.environ.get("BENCH_FLUSH_INTERVALS", "0.001").split(","))
SIZE = 64
#: Sockets per client process that record arrival times.
RECORD = 50


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _latencies(sent: list[float], arrivals: list[list[float]]) -> list[float]:
    """arrival - broadcast for every recorded (socket, message); ``AssertionError``
    if a recorded socket did not note exactly one arrival per message."""
    out: list[float] = []
    for per_socket in arrivals:
        assert len(per_socket) == len(sent), (len(per_socket), len(sent))
        out.extend(a - s for a, s in zip(per_socket, sent, strict=True))
    return out


@pytest.mark.parametrize("interval", INTERVALS, ids=lambda s: f"{s * 1000:g}ms")
@pytest.mark.parametrize("n", NS, ids=lambda n: f"n{n // 1000}k")
@pytest.mark.parametrize("contestant", CONTESTANTS)
def test_flush_interval(benchmark, arena_pool: ArenaPool, bench_config,
                        floor_build: FloorBuild, contestant: str, n: int,
                        interval: float) -> None:
    spec = SPECS[contestant]
    require(spec, floor_build)
    require(SPECS["floor"], floor_build)
    arena = arena_pool.get(spec, n)
    floor_arena = arena_pool.floor(n)
    messages = messages_for(n, bench_config.deliveries)
    timeout = phase_timeout(n * messages, SIZE)
    benchmark.group = f"flush_interval n={n}"
    benchmark.extra_info.update(scenario="flush_interval", contestant=contestant, n=n,
                                size=SIZE, batch=1, interval=interval,
                                server_info=arena.info, loop=bench_config.loop)

    arena.set("record", 1)
    for a, hold in ((floor_arena, None), (arena, 0), (arena, interval)):
        if hold is not None:
            arena.set("flush_interval", hold)
        warm = a.phase(max(8, messages // 10 // 8 * 8), SIZE, 1, timeout=timeout)
        if not warm.complete:
            pytest.fail(f"{a.spec.id}: warm-up phase lost data: {warm.reason}")

    floors: list[PhaseResult] = []
    plain: list[PhaseResult] = []
    held: list[PhaseResult] = []
    plain_lat: list[float] = []
    held_lat: list[float] = []
    added: list[float] = []

    def floor_round() -> None:
        if not floor_arena.broken:
            floors.append(floor_arena.phase(messages, SIZE, 1, timeout=timeout))

    def one_round() -> None:
        if arena.broken:
            return
        arena.set("flush_interval", 0)
        plain.append(arena.phase(messages, SIZE, 1, timeout=timeout, record=RECORD))
        p = _latencies(arena.send_times(), arena.arrivals())
        arena.set("flush_interval", interval)
        held.append(arena.phase(messages, SIZE, 1, timeout=timeout, record=RECORD))
        h = _latencies(arena.send_times(), arena.arrivals())
        plain_lat.extend(p)
        held_lat.extend(h)
        added.append(_percentile(h, 0.99) - _percentile(p, 0.99))

    try:
        benchmark.pedantic(one_round, setup=floor_round, rounds=bench_config.rounds,
                           iterations=1)
    finally:  # the pool may hand this arena to the next test: leave it as found
        if not arena.broken:
            arena.set("flush_interval", 0)
            arena.set("record", 0)

    summary = summarize(held)
    floor = summarize(floors)
    no_hold = summarize(plain)
    summary["throughput_ratio_to_floor_paired"] = median(
        r.deliveries_per_cpu_s / f.deliveries_per_cpu_s
        for r, f in zip(held, floors, strict=False) if r.complete and f.complete)
    summary["no_interval_cpu_ratio_to_floor_paired"] = median(
        r.cpu_us_per_delivery / f.cpu_us_per_delivery
        for r, f in zip(plain, floors, strict=False) if r.complete and f.complete)
    summary["floor_paired"] = {k: floor[k] for k in (
        "cpu_us_per_delivery", "deliveries_per_s", "deliveries_per_cpu_s", "complete")}
    summary["no_interval"] = {k: no_hold[k] for k in (
        "cpu_us_per_delivery", "deliveries_per_s", "deliveries_per_cpu_s", "complete")}
    summary.update(
        latency_samples=len(held_lat),
        latency_p50_s=_percentile(held_lat, 0.50),
        latency_p99_s=_percentile(held_lat, 0.99),
        no_interval_latency_p50_s=_percentile(plain_lat, 0.50),
        no_interval_latency_p99_s=_percentile(plain_lat, 0.99),
        added_delay_p99_s=median(added),
        added_delay_p99_rounds_s=[round(a, 6) for a in added],
    )
    benchmark.extra_info.update(summary)
    for label, results in (("floor", floors), ("no interval", plain), ("interval", held)):
        bad = [r.reason for r in results if not r.complete]
        if bad:
            pytest.fail(f"{contestant} ({label}): a client did not get every byte: {bad}")
        if label != "floor" and any(r.dropped or r.failed for r in results):
            pytest.fail(f"{contestant} ({label}): the server reports dropped or failed "
                        "deliveries (no client is slow here)")
    assert held_lat and not math.isnan(summary["throughput_ratio_to_floor_paired"])
