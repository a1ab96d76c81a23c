"""Fan-out throughput: one message to N clients, every contestant and the floor.

One test per (contestant, N, payload size, broadcasts per loop iteration).  Each
measured round is one phase of ``messages_for(N)`` messages (about
``--bench-deliveries`` deliveries); a warm-up phase of a tenth of that runs first.
Recorded in ``extra_info`` (medians over rounds): server CPU microseconds per
delivery, deliveries per second (wall clock, and per server CPU second), and the
ratios to the one-syscall floor of the same N and size.  The floor is measured
*paired*: its own arena stays up beside the contestant's and runs one round just
before each of the contestant's rounds (``cpu_ratio_to_floor_paired`` is the median
of the per-round ratios), because on a shared machine the weather changes between
minutes.  A round in which any client misses, gains or garbles a byte fails the
test, and so does a server that reports a dropped or failed delivery.

Test ids read ``test_fanout[<contestant>-<N>-<size>-b<B>]`` with N one of n100, n1k,
n5k: ``-k n100`` picks the quick subset, ``-k "floor or reinhardt"`` a comparison.
"""

from __future__ import annotations

import math

import pytest
from harness.arena import ArenaPool, PhaseResult, median
from harness.scenarios import (
    BATCHES,
    CONTESTANT_IDS,
    NS,
    SIZES,
    SPECS,
    FloorBuild,
    messages_for,
    phase_timeout,
    ratios,
    require,
    summarize,
)


def _n_id(n: int) -> str:
    # n100, n1k, n5k: no id is a prefix of another, so ``-k n100`` selects N=100 only.
    return f"n{n // 1000}k" if n >= 1000 and n % 1000 == 0 else f"n{n}"


def _size_id(size: int) -> str:
    return f"{size}B" if size < 1024 else f"{size // 1024}KiB"


@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: f"b{b}")
@pytest.mark.parametrize("size", SIZES, ids=_size_id)
@pytest.mark.parametrize("n", NS, ids=_n_id)
@pytest.mark.parametrize("contestant", CONTESTANT_IDS)
def test_fanout(benchmark, arena_pool: ArenaPool, bench_config, floor_build: FloorBuild,
                floor_results, contestant: str, n: int, size: int, batch: int) -> None:
    spec = SPECS[contestant]
    require(spec, floor_build)
    arena = arena_pool.get(spec, n)
    messages = messages_for(n, bench_config.deliveries)
    timeout = phase_timeout(n * messages, size)
    benchmark.group = f"fanout n={n} size={size} b={batch}"
    benchmark.extra_info.update(
        scenario="fanout", contestant=contestant, n=n, size=size, batch=batch,
        server_info=arena.info, loop=bench_config.loop,
        rss_per_conn_idle=(arena.rss_connected - arena.rss_empty) / n,
    )

    # The floor runs beside the contestant, in the round just before each of its
    # rounds (pedantic's untimed setup), so both see the same machine weather.
    paired = spec.server != "floor" and "floor" in bench_config.selected
    floor_arena = arena_pool.floor(n) if paired and floor_build.path is not None else None

    # Warm-up (not recorded): first writes, buffer growth, caches.
    warm_messages = max(batch, messages // 10 // batch * batch)
    for a in filter(None, (arena, floor_arena)):
        warm = a.phase(warm_messages, size, batch, timeout=timeout)
        if not warm.complete:
            pytest.fail(f"{a.spec.id}: warm-up phase lost data: {warm.reason}")

    results: list[PhaseResult] = []
    floor1_rounds: list[PhaseResult] = []
    floor_k_rounds: list[PhaseResult] = []

    def floor_round() -> None:
        if floor_arena is None or floor_arena.broken:
            return
        floor1_rounds.append(floor_arena.phase(messages, size, 1, timeout=timeout))
        if batch > 1:
            floor_k_rounds.append(floor_arena.phase(messages, size, batch, timeout=timeout))

    def one_round() -> None:
        if arena.broken:  # an earlier round failed; the test fails below
            return
        results.append(arena.phase(messages, size, batch, timeout=timeout))

    benchmark.pedantic(one_round, setup=floor_round if floor_arena else None,
                       rounds=bench_config.rounds, iterations=1)

    summary = summarize(results)
    if spec.server == "floor":
        if summary["complete"]:
            floor_results[(n, size, batch)] = summary
        floor1 = floor_results.get((n, size, 1))
        floor_k = None
    elif floor1_rounds:
        floor1 = summarize(floor1_rounds)
        floor_k = summarize(floor_k_rounds) if floor_k_rounds else None
        # Ratio of each round to the floor round just before it, then the median.
        summary["cpu_ratio_to_floor_paired"] = median(
            r.cpu_us_per_delivery / f.cpu_us_per_delivery
            for r, f in zip(results, floor1_rounds, strict=False) if r.complete and f.complete)
        summary["floor_paired"] = {k: floor1[k] for k in (
            "cpu_us_per_delivery", "deliveries_per_s", "deliveries_per_cpu_s", "complete")}
        if floor_k:
            summary["coalesced_floor_paired"] = {k: floor_k[k] for k in (
                "cpu_us_per_delivery", "deliveries_per_s", "deliveries_per_cpu_s", "complete")}
    else:
        floor1 = floor_results.get((n, size, 1))
        floor_k = floor_results.get((n, size, batch)) if batch > 1 else None
    benchmark.extra_info.update(summary)
    benchmark.extra_info.update(ratios(summary, floor1, floor_k))
    if spec.server != "floor" and (summary["dropped"] or summary["failed"]):
        pytest.fail(f"{contestant}: the server reports dropped={summary['dropped']} "
                    f"failed={summary['failed']} (no client is slow in this scenario)")
    if not summary["complete"]:
        pytest.fail(f"{contestant}: a client did not get every byte: {summary['failures']}")
    if floor1 is not None and not floor1["complete"]:
        pytest.fail(f"the paired floor lost data: {floor1['failures']}")
    assert not math.isnan(summary["cpu_us_per_delivery"])
