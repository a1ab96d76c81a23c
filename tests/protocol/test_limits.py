"""The token bucket behind the per-connection message rate, on a fake clock."""

from __future__ import annotations

import pytest

from reinhardt_ws.protocol.limits import TokenBucket


def test_burst_then_rate() -> None:
    bucket = TokenBucket(rate=10, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.05) is False  # half a token
    assert bucket.take(0.1) is True  # one token after 1/rate seconds
    assert bucket.take(0.1) is False


def test_savings_are_capped_at_the_burst() -> None:
    bucket = TokenBucket(rate=100, burst=2, now=0.0)
    assert [bucket.take(1000.0) for _ in range(3)] == [True, True, False]


def test_a_steady_sender_at_the_rate_is_never_refused() -> None:
    bucket = TokenBucket(rate=50, burst=1, now=0.0)
    assert all(bucket.take(i / 50) for i in range(1, 500))


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (1, 0.5)])
def test_bad_settings(rate: float, burst: float) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst, 0.0)
