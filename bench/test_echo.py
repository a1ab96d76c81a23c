"""The receive path: echo, C clients each sending one 64 B text message and
waiting for its echo, for a fixed duration (issue 14, target 1).

Every contestant runs its library's echo in its own process
(``harness/echo_server.py``, ``node/echo_server.js``) with one client process
(``harness/echo_client.py``: raw sockets, masked frames, every echoed byte
checked).  Recorded in ``extra_info`` (medians over rounds): server CPU
microseconds per echoed message (``getrusage`` in the server, read over its
control channel before and after the phase), messages per second, the round
trip's p50 and p99.

Rounds alternate: before each round of a contestant, one round of each reference
(picows' raw echo, the floor of our stack; socketify; Node ``ws``) runs on its own
arena, which stays up for the whole module, and the paired ratios are the medians
of the per-round ratios.  A contestant that cannot start here is skipped with the
reason, and the reason is recorded beside reinhardt's results (``absent``).

Knobs (environment): ``BENCH_ECHO_SECONDS`` (per phase, default 10),
``BENCH_ECHO_CLIENTS`` (default 100); ``--bench-rounds`` as for the fan-out.
Test ids: ``test_echo[<contestant>]``, e.g. ``-k cy-uvloop`` runs ours on uvloop
with its references.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.arena import BenchError, median
from harness.echo_arena import ECHO_SPECS, EchoArena, EchoResult, EchoSpec, absent_reason

SECONDS = float(os.environ.get("BENCH_ECHO_SECONDS") or 10)
CLIENTS = int(os.environ.get("BENCH_ECHO_CLIENTS") or 100)
SIZE = 64
REFERENCES = ("picows", "socketify", "node-ws")  # measured beside every reinhardt round

SPECS = {spec.id: spec for spec in ECHO_SPECS}


class EchoArenas:
    """The module's echo arenas, started on first use and kept up."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.arenas: dict[str, EchoArena] = {}
        self.absent: dict[str, str] = {}

    def get(self, spec: EchoSpec) -> EchoArena | None:
        """The running arena of *spec*, or None (then ``absent`` says why)."""
        if spec.id in self.arenas:
            return self.arenas[spec.id]
        if spec.id in self.absent:
            return None
        reason = absent_reason(spec)
        if reason is None:
            try:
                arena = EchoArena(spec, CLIENTS, self.log_dir).start()
                arena.phase(min(2.0, SECONDS / 4))  # warm-up, not recorded
            except BenchError as exc:
                reason = f"did not start: {str(exc)[:300]}"
            else:
                self.arenas[spec.id] = arena
                return arena
        self.absent[spec.id] = reason
        return None

    def close(self) -> None:
        for arena in self.arenas.values():
            arena.close()
        self.arenas.clear()


@pytest.fixture(scope="module")
def echo_arenas(bench_logs: Path) -> Iterator[EchoArenas]:
    arenas = EchoArenas(bench_logs)
    yield arenas
    arenas.close()


def _summary(results: list[EchoResult]) -> dict[str, float]:
    return {
        "cpu_us_per_message": median(r.cpu_us_per_message for r in results),
        "messages_per_s": median(r.messages_per_s for r in results),
        "p50_us": median(r.p50_us for r in results),
        "p99_us": median(r.p99_us for r in results),
        "messages": median(r.messages for r in results),
        "client_cpu_share": median(r.client_cpu_s / r.wall_s for r in results if r.wall_s),
    }


def _id(spec: EchoSpec) -> str:
    return spec.id if not spec.id.startswith("reinhardt") or spec.loop != "uvloop" or (
        spec.id.endswith(spec.loop)) else f"{spec.id}-uvloop"


@pytest.mark.parametrize("echo_contestant", [spec.id for spec in ECHO_SPECS],
                         ids=[_id(spec) for spec in ECHO_SPECS])
def test_echo(benchmark, bench_config, echo_arenas: EchoArenas, echo_contestant: str) -> None:
    spec = SPECS[echo_contestant]
    arena = echo_arenas.get(spec)
    if arena is None:
        pytest.skip(f"{spec.id} absent: {echo_arenas.absent[spec.id]}")
    paired = spec.server == "reinhardt"
    references: dict[str, EchoArena] = {}
    if paired:
        for ref in REFERENCES:
            ref_arena = echo_arenas.get(SPECS[ref])
            if ref_arena is not None:
                references[ref] = ref_arena
    benchmark.group = f"echo c={CLIENTS} size={SIZE}"
    benchmark.extra_info.update(
        scenario="echo", contestant=spec.id, clients=CLIENTS, size=SIZE, seconds=SECONDS,
        server_info=arena.info, loop=arena.info.get("loop", spec.loop))

    results: list[EchoResult] = []
    ref_rounds: dict[str, list[EchoResult]] = {ref: [] for ref in references}

    def reference_round() -> None:
        for ref, ref_arena in references.items():
            ref_rounds[ref].append(ref_arena.phase(SECONDS, SIZE))

    def one_round() -> None:
        results.append(arena.phase(SECONDS, SIZE))

    benchmark.pedantic(one_round, setup=reference_round if references else None,
                       rounds=bench_config.rounds, iterations=1)

    summary = _summary(results)
    summary["cpu_us_per_message_rounds"] = [round(r.cpu_us_per_message, 3) for r in results]
    benchmark.extra_info.update(summary)
    if paired:
        benchmark.extra_info["absent"] = dict(echo_arenas.absent)
        benchmark.extra_info["paired"] = {
            ref: {**_summary(rounds),
                  "cpu_ratio": median(r.cpu_us_per_message / f.cpu_us_per_message
                                      for r, f in zip(results, rounds, strict=True)),
                  "server_info": references[ref].info}
            for ref, rounds in ref_rounds.items()}
    assert all(r.messages > 0 for r in results)
