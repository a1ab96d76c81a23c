"""Memory: per idle connection at N = 5000, and under one slow consumer.

Idle: the server's RSS with 5000 connected, idle clients minus its RSS listening
with none (after ``gc.collect()`` in the Python servers), per connection; then the
same after one 64-byte broadcast to all ("warm").  Kernel socket buffers are not
in any process's RSS and are the same for everyone.  Every server runs without
pings (a ping would be an unexpected byte for the counting clients); the
``reinhardt-*-keepalive`` rows run ours with its keep-alive on, as ``serve()``'s
defaults do, with an interval longer than the run.

Slow consumer: 1001 clients, one of which never reads after the handshake; the
server broadcasts ``--bench-slow-messages`` messages of ``--bench-slow-size``
bytes, one per loop iteration.  Recorded: the server's peak RSS growth over its
RSS before the phase (VmHWM, reset before the phase), whether all 1000 healthy
clients got every byte, and what the server reports as dropped.  reinhardt runs
with ``max_write_buffer = --bench-max-write-buffer`` under both policies.
A peer that stalls or bloats is a finding, recorded, not a test failure;
reinhardt failing to serve its healthy clients fails the test.
"""

from __future__ import annotations

from typing import Any

import pytest
from harness import wire
from harness.arena import Arena, ArenaPool, BenchError
from harness.scenarios import (
    CONTESTANT_IDS,
    KEEPALIVE_SPECS,
    SLOW_SPECS,
    FloorBuild,
    base_spec,
    phase_timeout,
    require,
)

IDLE_N = 5000
SLOW_HEALTHY = 1000

@pytest.mark.parametrize("contestant", CONTESTANT_IDS + tuple(KEEPALIVE_SPECS))
def test_idle_memory(benchmark, arena_pool: ArenaPool, bench_config, floor_build: FloorBuild,
                     contestant: str) -> None:
    spec = base_spec(contestant)
    assert spec is not None
    require(spec, floor_build)
    arena = arena_pool.get(spec, IDLE_N)
    _measure_idle(benchmark, arena, contestant, bench_config, "idle_memory")


@pytest.mark.parametrize("contestant", CONTESTANT_IDS + tuple(KEEPALIVE_SPECS))
def test_idle_memory_browser(benchmark, arena_pool: ArenaPool, bench_config,
                             floor_build: FloorBuild, contestant: str) -> None:
    """The same, with clients whose upgrades carry what a browser sends
    (``wire.BROWSER_HEADERS``: user agent, origin, languages, a session cookie; a
    head of about 600 bytes instead of 150): what a server keeps of the request
    shows here."""
    spec = base_spec(contestant)
    assert spec is not None
    require(spec, floor_build)
    arena_pool.release(floor=True)
    arena = Arena(spec, IDLE_N, browser_headers=True, **arena_pool.arena_kwargs).start()
    try:
        _measure_idle(benchmark, arena, contestant, bench_config, "idle_memory_browser")
    finally:
        arena.close()


def _measure_idle(benchmark, arena: Arena, contestant: str, bench_config: Any,
                  scenario: str) -> None:
    benchmark.group = f"{scenario.replace('_', ' ')} n={IDLE_N}"
    idle = (arena.rss_connected - arena.rss_empty) / IDLE_N

    def warm_round() -> None:
        result = arena.phase(8, 64, 8, timeout=60)
        if not result.complete:
            pytest.fail(f"{contestant}: the warm-up broadcast lost data: {result.reason}")

    benchmark.pedantic(warm_round, rounds=1, iterations=1)
    assert arena.server is not None
    arena.server.send("GC")
    arena.server.expect("OK", 30)
    warm = (arena.rss()["VmRSS"] - arena.rss_empty) / IDLE_N
    benchmark.extra_info.update(
        scenario=scenario, contestant=contestant, n=IDLE_N, server_info=arena.info,
        loop=bench_config.loop, rss_empty=arena.rss_empty, rss_connected=arena.rss_connected,
        rss_per_conn_idle=idle, rss_per_conn_warm=warm, connect_s=arena.connect_s,
    )


@pytest.mark.parametrize("contestant", tuple(SLOW_SPECS))
def test_slow_consumer(benchmark, arena_pool: ArenaPool, bench_config, floor_build: FloorBuild,
                       contestant: str) -> None:
    spec = SLOW_SPECS[contestant]
    require(spec, floor_build)
    max_write_buffer = bench_config.max_write_buffer
    if spec.server == "reinhardt":
        spec = spec.with_options(max_write_buffer=max_write_buffer)
    elif spec.server == "socketify":
        # uWebSockets' own limit: above it a publish skips the socket (drops).
        spec = spec.with_options(max_backpressure=max_write_buffer)
    messages, size = bench_config.slow_messages, bench_config.slow_size
    deliveries = SLOW_HEALTHY * messages
    arena: Arena = arena_pool.fresh(spec, SLOW_HEALTHY + 1)
    benchmark.group = f"slow consumer {SLOW_HEALTHY}+1 x {messages} x {size}B"
    results = []
    try:
        arena.start()
        arena.stall(1)
        arena.reset_peak_rss()

        def one_round() -> None:
            results.append(arena.phase(messages, size, 1, timeout=phase_timeout(deliveries, size),
                                       stall_timeout=20, sample_rss=True))

        benchmark.pedantic(one_round, rounds=1, iterations=1)
    except BenchError as exc:
        pytest.fail(f"{contestant}: {exc}")
    finally:
        arena.close()
    r = results[0]
    growth = r.rss_peak - r.rss_before
    benchmark.extra_info.update(
        scenario="slow_consumer", contestant=contestant, n=SLOW_HEALTHY, stalled=1,
        messages=messages, size=size, loop=bench_config.loop, server_info=arena.info,
        policy=dict(spec.options).get("slow_consumer", ""),
        max_write_buffer=max_write_buffer if spec.server == "reinhardt" else None,
        max_backpressure=max_write_buffer if spec.server == "socketify" else None,
        healthy_complete=r.complete, short_sockets=r.short_sockets, missing_bytes=r.missing_bytes,
        healthy_completeness=1 - r.missing_bytes / (deliveries * wire.frame_len(size)),
        send_loop_finished=r.send_wall_s == r.send_wall_s,  # NaN when it never finished
        rss_before=r.rss_before, rss_peak=r.rss_peak, peak_growth_bytes=growth,
        unbounded_backlog_bytes=messages * wire.frame_len(size),
        server_cpu_s=r.cpu_s, wall_s=r.wall_s, cpu_us_per_delivery=r.cpu_us_per_delivery,
        delivered=r.delivered, dropped=r.dropped, failed=r.failed, reason=r.reason,
    )
    if spec.server == "reinhardt" and not r.complete:
        pytest.fail(f"{contestant}: healthy clients short: {r.reason}")
