"""permessage-deflate on a room broadcast: server CPU and wire bytes per delivery.

A room of N = 1000 (``--bench-compression-n``) receives a 4 KiB JSON message
(``wire.make_json_payload``: a chat room's recent events, deterministic; it deflates
about 4:1), one broadcast per loop iteration.  The clients offer what a browser
offers (``permessage-deflate; client_max_window_bits``), check the 101's answer,
parse every frame, inflate the RSV1 ones (a fresh inflater per message when the
server answered ``server_no_context_takeover``, one per socket otherwise) and
compare every message with the payload; they count the wire bytes of the frames.

Variants (test ids):
  reinhardt-cy-deflate   serve()'s default compression: compressed once per broadcast
  reinhardt-cy-plain     compression=None (the clients' offer is declined): the baseline
  reinhardt-py-deflate   the pure-Python twin, default compression (for reference)
  websockets-deflate     python-websockets ``broadcast()``, its default compression
                         (context takeover: compressed once per connection)
  websockets-deflate-nct the same with server_no_context_takeover
  socketify-shared       socketify ``app.publish(..., compress=True)`` with
                         ``CompressOptions.SHARED_COMPRESSOR``

Each variant's rounds alternate with rounds of the baseline (reinhardt-cy-plain, its
own arena beside it), so ``cpu_ratio_to_plain_paired`` is the median of per-round
ratios measured minutes apart at most.  Recorded: CPU us per delivery, wire bytes per
delivery, how many deliveries were compressed, the negotiated extension.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from harness.arena import Arena, ArenaPool, BenchError, PhaseResult, median
from harness.scenarios import SPECS, FloorBuild, messages_for, phase_timeout, require, summarize

SIZE = 4096
OFFER = "permessage-deflate; client_max_window_bits"  # what Chromium and Firefox send
BASELINE = "reinhardt-cy-plain"

#: variant id -> (contestant id, options, compressed?)
VARIANTS: dict[str, tuple[str, dict[str, str], bool]] = {
    "reinhardt-cy-deflate": ("reinhardt-cy", {}, True),
    "reinhardt-cy-plain": ("reinhardt-cy", {"compression": "none"}, False),
    "reinhardt-py-deflate": ("reinhardt-py", {}, True),
    "websockets-deflate": ("websockets", {"compression": "deflate"}, True),
    "websockets-deflate-nct": ("websockets", {"compression": "deflate-nct"}, True),
    "socketify-shared": ("socketify", {"compression": "shared"}, True),
}


def _arena(variant: str, n: int, bench_config: Any, bench_logs: Any) -> Arena:
    contestant, options, _ = VARIANTS[variant]
    spec = SPECS[contestant].with_options(payload="json", **options)
    return Arena(spec, n, floor_binary=None, loop=bench_config.loop,
                 clients_per_process=bench_config.clients_per_process,
                 verify=True, poll_interval=bench_config.client_poll, log_dir=bench_logs,
                 deflate=OFFER, payload="json")


def _check(variant: str, arena: Arena, result: PhaseResult) -> None:
    if not result.complete:
        pytest.fail(f"{variant}: a client did not get every message intact: {result.reason}")
    compressed = VARIANTS[variant][2]
    if compressed and result.compressed_messages != result.deliveries:
        pytest.fail(f"{variant}: {result.compressed_messages} of {result.deliveries} "
                    f"deliveries were compressed (negotiated {arena.negotiated!r})")
    if not compressed and result.compressed_messages:
        pytest.fail(f"{variant}: compressed frames without compression")


@pytest.mark.parametrize("contestant", tuple(VARIANTS))
def test_compression(benchmark, arena_pool: ArenaPool, bench_config, bench_logs,
                     floor_build: FloorBuild, contestant: str) -> None:
    variant = contestant
    base_id, _options, compressed = VARIANTS[variant]
    require(SPECS[base_id], floor_build)
    if base_id not in bench_config.selected:
        pytest.skip(f"{base_id} is not among --bench-contestants")
    arena_pool.release()  # the fan-out arenas' clients would share the machine
    n = bench_config.compression_n
    messages = messages_for(n, bench_config.deliveries)
    timeout = phase_timeout(n * messages, SIZE) + n * messages * 50e-6
    paired = variant != BASELINE and "reinhardt-cy" in bench_config.selected
    arena = _arena(variant, n, bench_config, bench_logs)
    baseline = _arena(BASELINE, n, bench_config, bench_logs) if paired else None
    results: list[PhaseResult] = []
    base_rounds: list[PhaseResult] = []
    try:
        try:
            arena.start()
            if baseline is not None:
                baseline.start()
        except BenchError as exc:
            pytest.fail(f"{variant}: {exc}")
        if compressed and "permessage-deflate" not in arena.negotiated:
            pytest.fail(f"{variant}: the server declined the offer: {arena.negotiated!r}")
        if not compressed and arena.negotiated != "-":
            pytest.fail(f"{variant}: negotiated {arena.negotiated!r} with compression off")
        benchmark.group = f"compression n={n} 4 KiB JSON"
        warm_messages = max(1, messages // 10)
        for a, name in ((arena, variant), (baseline, BASELINE)):
            if a is not None:
                _check(name, a, a.phase(warm_messages, SIZE, 1, timeout=timeout))

        def base_round() -> None:
            if baseline is not None and not baseline.broken:
                base_rounds.append(baseline.phase(messages, SIZE, 1, timeout=timeout))

        def one_round() -> None:
            if not arena.broken:
                results.append(arena.phase(messages, SIZE, 1, timeout=timeout))

        benchmark.pedantic(one_round, setup=base_round if baseline is not None else None,
                           rounds=bench_config.rounds, iterations=1)
    finally:
        arena.close()
        if baseline is not None:
            baseline.close()
    for r in results:
        _check(variant, arena, r)
    for r in base_rounds:
        _check(BASELINE, arena, r)
    summary = summarize(results)
    ok = [r for r in results if r.complete]
    summary.update(
        scenario="compression", contestant=variant, library=base_id, n=n, size=SIZE,
        batch=1, compressed=compressed, offer=OFFER, negotiated=arena.negotiated,
        server_info=arena.info, loop=bench_config.loop,
        wire_bytes_per_delivery=median(r.wire_bytes / r.deliveries for r in ok),
        compressed_deliveries=sum(r.compressed_messages for r in results),
    )
    if base_rounds:
        summary["cpu_ratio_to_plain_paired"] = median(
            r.cpu_us_per_delivery / b.cpu_us_per_delivery
            for r, b in zip(results, base_rounds, strict=False) if r.complete and b.complete)
        summary["plain_paired_cpu_us_per_delivery"] = median(
            b.cpu_us_per_delivery for b in base_rounds if b.complete)
    benchmark.extra_info.update(summary)
    assert not math.isnan(summary["cpu_us_per_delivery"])
