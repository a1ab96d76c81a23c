"""The scenario grid and the arithmetic shared by the bench tests and report.py."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from . import wire
from .arena import CONTESTANT_SPECS, ContestantSpec, PhaseResult, median

__all__ = [
    "BATCHES",
    "CONTESTANT_IDS",
    "CONTESTANT_SPECS",
    "KEEPALIVE_SPECS",
    "NS",
    "PEERS",
    "SIZES",
    "SLOW_SPECS",
    "SPECS",
    "FloorBuild",
    "base_spec",
    "messages_for",
    "phase_timeout",
    "ratios",
    "require",
    "summarize",
]

NS = (100, 1000, 5000)
SIZES = (64, 4096)
BATCHES = (1, 8)  # broadcasts per event-loop iteration; for the floor, frames per send()
PEERS = ("picows", "websockets", "aiohttp", "node-ws", "socketify")

#: Contestants by id.  Tests parametrize over ids (plain strings serialize into the
#: --benchmark-json file) and look the spec up here.
SPECS: dict[str, ContestantSpec] = {spec.id: spec for spec in CONTESTANT_SPECS}
CONTESTANT_IDS = tuple(SPECS)

#: The slow-consumer variants: reinhardt under both policies, and the peers.
SLOW_SPECS: dict[str, ContestantSpec] = {
    **{f"{spec.id}-{policy}": spec.with_options(slow_consumer=policy)
       for spec in CONTESTANT_SPECS if spec.server == "reinhardt" for policy in ("close", "drop")},
    **{spec.id: spec for spec in CONTESTANT_SPECS if spec.server not in ("reinhardt", "floor")},
}


#: reinhardt with its keep-alive on (idle memory): the interval is longer than any
#: run, so no ping disturbs the counting clients; what a connection holds for its
#: keep-alive does not depend on the interval.
KEEPALIVE_SPECS: dict[str, ContestantSpec] = {
    f"{spec.id}-keepalive": spec.with_options(ping_interval=3600)
    for spec in CONTESTANT_SPECS if spec.server == "reinhardt"}


def base_spec(param: str) -> ContestantSpec | None:
    """The contestant a test parameter names (a plain, slow-consumer or keep-alive id)."""
    return SPECS.get(param) or SLOW_SPECS.get(param) or KEEPALIVE_SPECS.get(param)


class FloorBuild(NamedTuple):
    path: Path | None
    error: str


def require(spec: ContestantSpec, floor_build: FloorBuild) -> None:
    """Fail if the floor cannot be built; skip, with the reason, a contestant that
    cannot run here (library not installed, node or its packages missing).  The
    reasons also go into the --benchmark-json file (conftest), so report.py names
    every absent contestant."""
    if spec.server == "floor" and floor_build.path is None:
        pytest.fail(f"the floor could not be built: {floor_build.error}")
    reason = spec.absent_reason()
    if reason:
        pytest.skip(f"{spec.id} is absent: {reason}")


def messages_for(n: int, deliveries: int) -> int:
    """Messages per phase: about *deliveries* deliveries, a multiple of 8, at least 8."""
    return max(8, deliveries // n // 8 * 8)


def phase_timeout(deliveries: int, size: int) -> float:
    """Generous: 100 us per delivery plus 20 MB/s, plus a minute."""
    return 60.0 + deliveries * 100e-6 + deliveries * wire.frame_len(size) / 20e6


def summarize(results: Sequence[PhaseResult]) -> dict[str, Any]:
    """Medians of the complete rounds, and the completeness of all of them."""
    ok = [r for r in results if r.complete]
    out: dict[str, Any] = {
        "rounds": len(results),
        "complete": bool(results) and len(ok) == len(results),
        "failures": [r.reason for r in results if not r.complete],
        "deliveries_per_round": results[0].deliveries if results else 0,
        "messages": results[0].messages if results else 0,
        "cpu_us_per_delivery": median(r.cpu_us_per_delivery for r in ok),
        # Of that, the kernel's part (the floor's CPU is nearly all kernel).
        "sys_us_per_delivery": median(r.sys_us_per_delivery for r in ok),
        "deliveries_per_s": median(r.deliveries_per_s for r in ok),
        "deliveries_per_cpu_s": median(r.deliveries_per_cpu_s for r in ok),
        "server_cpu_s": median(r.cpu_s for r in ok),
        "wall_s": median(r.wall_s for r in ok),
        "send_wall_s": median(r.send_wall_s for r in ok),
        "client_cpu_s": median(r.client_cpu_s for r in ok),
        "cpu_us_per_delivery_rounds": [round(r.cpu_us_per_delivery, 4) for r in results],
        "delivered": sum(r.delivered for r in results),
        "dropped": sum(r.dropped for r in results),
        "failed": sum(r.failed for r in results),
    }
    return out


def ratios(summary: dict[str, Any], floor1: dict[str, Any] | None,
           floor_k: dict[str, Any] | None) -> dict[str, float]:
    """Ratios to the floor measured in the same run (NaN when it was not)."""

    def div(a: float, b: float) -> float:
        return a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan

    out: dict[str, float] = {}
    if floor1:
        out["cpu_ratio_to_floor"] = div(summary["cpu_us_per_delivery"],
                                        floor1["cpu_us_per_delivery"])
        out["throughput_ratio_to_floor"] = div(summary["deliveries_per_cpu_s"],
                                               floor1["deliveries_per_cpu_s"])
        out["wall_throughput_ratio_to_floor"] = div(summary["deliveries_per_s"],
                                                    floor1["deliveries_per_s"])
    if floor_k:
        out["cpu_ratio_to_coalesced_floor"] = div(summary["cpu_us_per_delivery"],
                                                  floor_k["cpu_us_per_delivery"])
    return out
