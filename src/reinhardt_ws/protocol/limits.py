"""Rate limits without I/O: a token bucket the caller feeds with the clock."""

from __future__ import annotations

__all__ = ["TokenBucket"]


class TokenBucket:
    """*rate* tokens a second, at most *burst* saved up; :meth:`take` spends one.

    The clock is the caller's (``time.monotonic()``), so tests drive it directly.
    """

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.rate = float(rate)
        self.burst = float(burst)
        self._tokens = float(burst)
        self._last = now

    def take(self, now: float) -> bool:
        """Spend one token if there is one; False when over the rate."""
        tokens = self._tokens + (now - self._last) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        self._last = now
        if tokens < 1.0 - 1e-9:  # a sender exactly at the rate is not refused by rounding
            self._tokens = tokens
            return False
        self._tokens = max(0.0, tokens - 1.0)
        return True
