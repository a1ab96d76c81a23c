"""The open-loop source (harness/pacer.py) and the ``PACE`` command: due times
evenly spaced on the kernel's timer, each message broadcast alone in its loop
iteration and never before it is due, a loop that falls behind shown as
lateness (not hidden by waiting), and every client getting every message.
The flush-interval latency benchmark trusts these, so they are checked here,
with a real server process and real clients."""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "harness"))

import pacer
from harness.arena import Arena
from harness.scenarios import SPECS

pytestmark = pytest.mark.skipif(pacer.timerfd_absent_reason() is not None,
                                reason=str(pacer.timerfd_absent_reason()))


def run_pace(messages: int, rate: float, stall_at: int = -1,
             stall_s: float = 0.0) -> tuple[list[float], list[float], list[int]]:
    """Due times, the monotonic time each was yielded, and the loop iteration
    (a call_soon counter) each was yielded in."""
    async def main() -> tuple[list[float], list[float], list[int]]:
        loop = asyncio.get_running_loop()
        iteration = [0]

        def tick() -> None:
            iteration[0] += 1
            loop.call_soon(tick)

        loop.call_soon(tick)
        dues: list[float] = []
        got: list[float] = []
        iterations: list[int] = []
        async for due in pacer.pace(messages, rate):
            got.append(time.monotonic())
            dues.append(due)
            iterations.append(iteration[0])
            if len(dues) == stall_at:
                time.sleep(stall_s)  # the loop is blocked: the ticks keep coming
        return dues, got, iterations

    return asyncio.run(main())


def test_due_times_are_evenly_spaced_and_never_early() -> None:
    dues, got, iterations = run_pace(40, 400.0)
    assert len(dues) == 40
    steps = [b - a for a, b in itertools.pairwise(dues)]
    assert all(abs(s - 1 / 400) < 1e-6 for s in steps), steps
    assert all(g >= d for g, d in zip(got, dues, strict=True))
    assert len(set(iterations)) == len(iterations)  # one per loop iteration


def test_a_blocked_loop_is_late_not_slower() -> None:
    # 200/s, the loop blocked 50 ms after the 5th message: about 10 messages come
    # due meanwhile; they are yielded late, one per iteration, and the due times
    # stay those of the fixed rate (open loop: no coordinated omission).
    dues, got, iterations = run_pace(30, 200.0, stall_at=5, stall_s=0.05)
    assert all(abs((b - a) - 1 / 200) < 1e-6 for a, b in itertools.pairwise(dues))
    late = [g - d for g, d in zip(got, dues, strict=True)]
    assert late[5] > 0.04  # due 5 ms after the 5th, yielded after the 50 ms stall
    assert len(set(iterations)) == len(iterations)
    assert max(late[-5:]) < 0.02  # caught up by the end (20 ms of slack)


def test_bad_rates_are_refused() -> None:
    async def first(rate: float) -> None:
        async for _ in pacer.pace(1, rate):
            pass

    for rate in (0.0, -1.0, 2e6, float("nan")):
        with pytest.raises(ValueError, match="rate"):
            asyncio.run(first(rate))


@pytest.mark.parametrize("contestant", ["reinhardt-cy", "reinhardt-py"])
def test_pace_command_delivers_every_message_at_the_rate(contestant: str,
                                                         tmp_path: Path) -> None:
    spec = SPECS[contestant]
    if spec.absent_reason():
        pytest.skip(str(spec.absent_reason()))
    messages, rate = 60, 300.0
    with Arena(spec, 20, floor_binary=None, log_dir=tmp_path,
               poll_interval=0.001) as arena:
        for interval in (0, 0.001):
            arena.set("flush_interval", interval)
            result = arena.phase(messages, 64, 1, timeout=60, record=20, rate=rate)
            assert result.complete, result.reason
            assert result.delivered == 20 * messages and not result.dropped
            assert result.rate == rate
            assert 0 <= result.late_p99_s <= result.late_max_s < 1.0
            # The phase lasts as long as the rate says, not as long as the loop allows.
            assert result.wall_s >= (messages - 1) / rate
            dues = arena.send_times()
            assert len(dues) == messages
            assert all(abs((b - a) - 1 / rate) < 1e-6 for a, b in itertools.pairwise(dues))
            arrivals = arena.arrivals()
            assert len(arrivals) == 20
            for per_socket in arrivals:
                assert len(per_socket) == messages
                assert all(a >= d for a, d in zip(per_socket, dues, strict=True))
