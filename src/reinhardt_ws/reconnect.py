"""Reconnection for the client: :class:`Backoff` (exponential, with jitter) and
the iterator behind ``async for conn in connect(url)``."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass

from .connection import WebSocketConnection
from .errors import HandshakeError

__all__ = ["Backoff"]


@dataclass(frozen=True)
class Backoff:
    """How ``async for conn in connect(url)`` waits between attempts.

    Attempt *n* (1 for the first reconnection) waits ``min(max_delay, initial *
    factor ** (n - 1))``, scaled by a random factor within ``1 ± jitter`` (so a
    fleet of clients that lost one server does not come back in step).  The count
    restarts after every successful connection.  After ``max_attempts`` failed
    attempts in a row (None: never) the iterator raises the last error.
    ``ValueError`` for a negative delay, a factor below 1, a jitter outside
    [0, 1) or an attempt count below 1.
    """

    initial: float = 1.0
    factor: float = 2.0
    max_delay: float = 30.0
    jitter: float = 0.1
    max_attempts: int | None = None

    def __post_init__(self) -> None:
        if self.initial < 0 or self.max_delay < self.initial:
            raise ValueError("need 0 <= initial <= max_delay")
        if self.factor < 1:
            raise ValueError("factor must be at least 1")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be in [0, 1)")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("max_attempts must be positive or None")

    def delays(self) -> Iterator[float]:
        """The waits before attempts 1, 2, ... (endless)."""
        delay = self.initial
        while True:
            spread = delay * self.jitter
            yield max(0.0, delay + random.uniform(-spread, spread))
            delay = min(self.max_delay, delay * self.factor)


def _retryable(exc: BaseException) -> bool:
    """Network failures and refusals a later attempt may get past: OSError (the
    server is down), timeouts, and HTTP 5xx / 429 or no status at all; a 4xx
    refusal (bad URL, bad credentials) would only repeat."""
    if isinstance(exc, HandshakeError):
        return exc.status is None or exc.status >= 500 or exc.status == 429
    return isinstance(exc, (OSError, asyncio.TimeoutError, TimeoutError))


async def reconnecting(open_once: Callable[[], Awaitable[WebSocketConnection]],
                       backoff: Backoff) -> AsyncIterator[WebSocketConnection]:
    """Yield a connection, and a new one each time the loop asks again (the
    previous one is closed first if still open); see :class:`Backoff`."""
    previous: WebSocketConnection | None = None
    while True:
        if previous is not None and not previous.is_closed:
            await previous.close()
        waits = backoff.delays()
        failures = 0
        while True:
            if previous is not None or failures:
                await asyncio.sleep(next(waits))
            try:
                conn = await open_once()
                break
            except Exception as exc:
                if not _retryable(exc):
                    raise
                failures += 1
                if backoff.max_attempts is not None and failures >= backoff.max_attempts:
                    raise
        previous = conn
        yield conn
