"""Many small rooms: 2000 rooms of 5 members, each broadcast going to one room.

The chat pattern, where the fixed cost of a broadcast (look the room up, frame the
message, start the loop over its members) is paid for every 5 deliveries instead
of every N.  N = 10,000 clients (over client processes as every arena spreads
them, 2500 sockets each, well under the 20,000 open files a process may have) are
dealt into 2000 rooms in accept order (``ROOMS 2000``: connection i into room
i % 2000; not measured), then ``BCASTROOMS``: message j of 64 B goes to room
j % 2000 only, one broadcast per loop iteration, so every socket receives
messages / 2000 frames and every byte is checked as in the fan-out.

Recorded (medians over rounds): server CPU microseconds per delivery, deliveries per
second of server CPU and of wall clock.  Contestants: every spec that declares
``rooms=True`` (the floor does not: it has no rooms), so a contestant whose server
process learns ROOMS joins by setting that flag.  A round that loses a byte, or a
server that reports a dropped or failed delivery, fails the test.
"""

from __future__ import annotations

import math

import pytest
from harness.arena import ArenaPool, PhaseResult
from harness.scenarios import SPECS, FloorBuild, phase_timeout, require, summarize

SMALL_ROOMS_N = 10_000
ROOMS = 2000
ROOM_SIZE = SMALL_ROOMS_N // ROOMS
SIZE = 64
BATCH = 1

ROOM_CONTESTANTS = tuple(spec.id for spec in SPECS.values() if spec.rooms)


def room_messages(deliveries: int) -> int:
    """Messages per phase: about *deliveries* deliveries, a multiple of the room count."""
    return max(ROOMS, deliveries // ROOM_SIZE // ROOMS * ROOMS)


@pytest.mark.parametrize("n", (SMALL_ROOMS_N,), ids=lambda n: f"n{n // 1000}k")
@pytest.mark.parametrize("contestant", ROOM_CONTESTANTS)
def test_small_rooms(benchmark, arena_pool: ArenaPool, bench_config, floor_build: FloorBuild,
                     contestant: str, n: int) -> None:
    spec = SPECS[contestant]
    require(spec, floor_build)
    arena = arena_pool.get(spec, n)
    if arena.room_count != ROOMS:
        arena.set_rooms(ROOMS)
    messages = room_messages(bench_config.deliveries)
    deliveries = messages * ROOM_SIZE
    timeout = phase_timeout(deliveries, SIZE)
    benchmark.group = f"small rooms {ROOMS} x {ROOM_SIZE}, {SIZE} B, b={BATCH}"
    benchmark.extra_info.update(
        scenario="small_rooms", contestant=contestant, n=n, rooms=ROOMS, room_size=ROOM_SIZE,
        size=SIZE, batch=BATCH, server_info=arena.info, loop=bench_config.loop,
    )

    warm = arena.phase(ROOMS, SIZE, BATCH, timeout=timeout, to_rooms=True)
    if not warm.complete:
        pytest.fail(f"{contestant}: warm-up phase lost data: {warm.reason}")

    results: list[PhaseResult] = []

    def one_round() -> None:
        if arena.broken:
            return
        results.append(arena.phase(messages, SIZE, BATCH, timeout=timeout, to_rooms=True))

    benchmark.pedantic(one_round, rounds=bench_config.rounds, iterations=1)
    summary = summarize(results)
    benchmark.extra_info.update(summary)
    if summary["dropped"] or summary["failed"]:
        pytest.fail(f"{contestant}: the server reports dropped={summary['dropped']} "
                    f"failed={summary['failed']} (no client is slow in this scenario)")
    if not summary["complete"]:
        pytest.fail(f"{contestant}: a client did not get every byte: {summary['failures']}")
    assert summary["deliveries_per_round"] == deliveries
    assert not math.isnan(summary["cpu_us_per_delivery"])
