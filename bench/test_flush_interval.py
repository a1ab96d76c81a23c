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

The closed-loop phases measure throughput honestly but not the hold: the
broadcasts come as fast as the loop makes them, the clients fall behind, and
both percentiles are mostly backlog (their keys keep their names, for older
runs).  The latency target is measured open loop instead (``paced_*`` keys):
after the closed-loop rounds, the server broadcasts at a fixed rate (``PACE``,
harness/pacer.py: message j due at ``t0 + j / rate`` on a kernel timer, each
broadcast alone in its loop iteration, whatever the clients do), its latency
counted from the *due* time, so a server that falls behind shows it.  The rate
is a fraction (``BENCH_FLUSH_RATE_FRACTION``, default 0.25) of the broadcasts per
second that the closed-loop phases *without* an interval sustained in this run
(or ``BENCH_FLUSH_RATE`` broadcasts/s); each phase lasts about
``BENCH_FLUSH_PACED_SECONDS`` (4 s), at least 100 messages.  Per round, paced
phases without and with the interval, each side split in two halves run in the
order A B B A (B A A B in the next round), so that a drift cancels;
``paced_added_delay_p99_s`` is the median over rounds of p99(with) -
p99(without); ``paced_first_arrival_shift_s`` the same for the median (over
messages) of the first recorded member's latency, the hold itself.  A round in
which either phase did not keep the pace (the p99 of the server's lateness,
broadcast start - due time, above ``BENCH_FLUSH_MAX_LATE_PERIODS`` periods,
default 0.5: a backlog builds) is flagged and left out of those medians; if
every round is, the test fails.

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
#: The paced phases' rate: an absolute broadcasts/s, else this fraction of the
#: closed-loop broadcasts/s without an interval measured in the same run.
PACED_RATE = float(os.environ.get("BENCH_FLUSH_RATE") or 0)
PACED_FRACTION = float(os.environ.get("BENCH_FLUSH_RATE_FRACTION") or 0.25)
#: Each paced phase lasts about this long, and has at least PACED_MIN_MESSAGES.
PACED_SECONDS = float(os.environ.get("BENCH_FLUSH_PACED_SECONDS") or 4.0)
PACED_MIN_MESSAGES = 100
#: A paced phase kept the pace if the p99 of its lateness is within this many periods.
MAX_LATE_PERIODS = float(os.environ.get("BENCH_FLUSH_MAX_LATE_PERIODS") or 0.5)


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


def _first_arrivals(sent: list[float], arrivals: list[list[float]]) -> list[float]:
    """Per message, the earliest arrival over the recorded sockets minus its
    broadcast (due) time: how long before the first member had it."""
    return [min(per_socket[j] for per_socket in arrivals) - t for j, t in enumerate(sent)]


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

    # The open-loop latency measurement, at a rate the no-interval server sustains
    # (known once the closed-loop rounds ran).
    closed_rate = rate = math.nan
    paced_plain: list[PhaseResult] = []
    paced_held: list[PhaseResult] = []
    paced_plain_lat: list[float] = []
    paced_held_lat: list[float] = []
    paced_added: list[float] = []
    paced_added_p50: list[float] = []
    paced_first_shift: list[float] = []
    flagged: list[str] = []

    def kept(r: PhaseResult) -> bool:
        return r.complete and r.late_p99_s <= MAX_LATE_PERIODS / rate

    def paced_rounds() -> None:
        nonlocal closed_rate, rate
        closed_rate = median(r.messages / r.wall_s for r in plain
                             if r.complete and r.wall_s > 0)
        rate = PACED_RATE or PACED_FRACTION * closed_rate
        if not rate > 0:
            return
        # Each side of a round is two half phases, in the order A B B A (B A A B in
        # odd rounds), so that a drift of the machine's speed cancels in the pair.
        half = max(PACED_MIN_MESSAGES // 2, round(rate * PACED_SECONDS / 2))
        paced_timeout = timeout + half / rate + 30
        for i in range(bench_config.rounds):
            if arena.broken:
                return
            a, b = (0, interval) if i % 2 == 0 else (interval, 0)
            got: dict[float, list[tuple[PhaseResult, list[float], list[float]]]] = {
                0: [], interval: []}
            for hold in (a, b, b, a):
                arena.set("flush_interval", hold)
                arena.collect()  # a collection the earlier phases made due is not the hold's
                r = arena.phase(half, SIZE, 1, timeout=paced_timeout, record=RECORD,
                                rate=rate)
                sent, arrivals = (arena.send_times(), arena.arrivals()) if r.complete \
                    else ([], [])
                got[hold].append((r, _latencies(sent, arrivals),
                                  _first_arrivals(sent, arrivals)))
            p_res = [r for r, _, _ in got[0]]
            h_res = [r for r, _, _ in got[interval]]
            paced_plain.extend(p_res)
            paced_held.extend(h_res)
            if not all(kept(r) for r in (*p_res, *h_res)):
                late = ", ".join(
                    f"{label} {r.late_p99_s * 1e3:.2f}/{r.late_max_s * 1e3:.2f}"
                    + ("" if r.complete else " incomplete")
                    for label, side in (("without", p_res), ("with", h_res)) for r in side)
                flagged.append(f"round {i}: lateness p99/max ms {late}; "
                               f"period {1e3 / rate:.2f} ms")
                continue
            p_lat = [x for _, lat, _ in got[0] for x in lat]
            h_lat = [x for _, lat, _ in got[interval] for x in lat]
            p_first = [x for _, _, first in got[0] for x in first]
            h_first = [x for _, _, first in got[interval] for x in first]
            paced_plain_lat.extend(p_lat)
            paced_held_lat.extend(h_lat)
            paced_added.append(_percentile(h_lat, 0.99) - _percentile(p_lat, 0.99))
            paced_added_p50.append(_percentile(h_lat, 0.50) - _percentile(p_lat, 0.50))
            paced_first_shift.append(median(h_first) - median(p_first))

    try:
        benchmark.pedantic(one_round, setup=floor_round, rounds=bench_config.rounds,
                           iterations=1)
        paced_rounds()
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
    summary.update(
        closed_loop_broadcasts_per_s=closed_rate,
        paced_rate=rate,
        paced_rate_source=("BENCH_FLUSH_RATE" if PACED_RATE else
                           f"{PACED_FRACTION:g} x closed-loop broadcasts/s without interval"),
        paced_messages=2 * paced_plain[0].messages if paced_plain else 0,
        paced_rounds=len(paced_plain) // 2,  # two half phases per side and round
        paced_rounds_flagged=flagged,
        paced_latency_samples=len(paced_held_lat),
        paced_latency_p50_s=_percentile(paced_held_lat, 0.50),
        paced_latency_p99_s=_percentile(paced_held_lat, 0.99),
        paced_no_interval_latency_p50_s=_percentile(paced_plain_lat, 0.50),
        paced_no_interval_latency_p99_s=_percentile(paced_plain_lat, 0.99),
        paced_added_delay_p99_s=median(paced_added),
        paced_added_delay_p99_rounds_s=[round(a, 6) for a in paced_added],
        paced_added_delay_p50_s=median(paced_added_p50),
        # The hold as the first recorded member sees it: median over messages of the
        # earliest arrival, with minus without (median over rounds).
        paced_first_arrival_shift_s=median(paced_first_shift),
        paced_late_p99_s=max((r.late_p99_s for r in paced_held), default=math.nan),
        paced_late_max_s=max((r.late_max_s for r in paced_held), default=math.nan),
        paced_no_interval_late_p99_s=max((r.late_p99_s for r in paced_plain),
                                         default=math.nan),
        paced_no_interval_late_max_s=max((r.late_max_s for r in paced_plain),
                                         default=math.nan),
        paced_complete=bool(paced_plain) and all(
            r.complete for r in (*paced_plain, *paced_held)),
    )
    benchmark.extra_info.update(summary)
    for label, results in (("floor", floors), ("no interval", plain), ("interval", held),
                           ("paced, no interval", paced_plain),
                           ("paced, interval", paced_held)):
        bad = [r.reason for r in results if not r.complete]
        if bad:
            pytest.fail(f"{contestant} ({label}): a client did not get every byte: {bad}")
        if label != "floor" and any(r.dropped or r.failed for r in results):
            pytest.fail(f"{contestant} ({label}): the server reports dropped or failed "
                        "deliveries (no client is slow here)")
    assert held_lat and not math.isnan(summary["throughput_ratio_to_floor_paired"])
    if not paced_added:
        pytest.fail(f"{contestant}: no paced round kept the pace at {rate:.0f} broadcasts/s "
                    f"(closed loop without interval: {closed_rate:.0f}/s): {flagged}")
