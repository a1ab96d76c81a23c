"""Keep-alive for many connections with one timer (``ping_interval``/``ping_timeout``).

picows' own keep-alive runs one task per connection, each with its coroutine frame,
its sleep future and its timer handle: about 1.9 KiB of every idle connection, and
one timer in the loop's heap per connection.  Here one timer per server (per client
connection on the client side) sweeps its connections, as uWebSockets' timer sweep
does:

- every frame a connection receives sets its ``_rx_seen`` flag (one attribute store
  in the frame callback, nothing else per frame);
- a sweep that finds the flag set clears it and moves the connection's ping date to
  ``now + interval``; a connection whose ping date has come while it stayed silent
  gets a ping (through the write budget: a peer that never reads is closed with
  1008, as for any control frame);
- a pong carrying that ping's payload (or any pong: it answers every earlier ping)
  cancels the deadline; a connection still without one when its deadline comes is
  closed with 1001 (Going Away), and TCP is dropped at once (the peer is presumed
  gone, there is no closing handshake to wait for).

The sweep runs every ``min(interval, timeout) / 8`` (at least 5 ms), so a ping goes
out after ``interval`` to ``interval * 1.25`` of silence and a silent peer is closed
``timeout`` to ``timeout * 1.125`` after its ping.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .connection import WebSocketConnection

__all__ = ["KEEPALIVE_PAYLOAD", "Keepalive"]

logger = logging.getLogger("reinhardt_ws")

#: The payload of our keep-alive pings (a pong carrying it is the answer).
KEEPALIVE_PAYLOAD = b"rws-keepalive"

#: The sweep's period, as a fraction of the shorter of interval and timeout.
SWEEPS_PER_INTERVAL = 8
#: The sweep's shortest period, seconds.
MIN_SWEEP = 0.005


class Keepalive:
    """Pings the silent connections among ``members()`` and drops the dead ones.

    *interval*: seconds of silence (no frame received) before a ping; *timeout*:
    seconds to wait for its pong.  Call :meth:`start` on the connections' loop and
    :meth:`stop` when done; *members* is called once per sweep and may return a view
    of a collection that changes between sweeps.
    """

    __slots__ = ("_handle", "_loop", "interval", "members", "sweep_period", "timeout")

    def __init__(self, members: Callable[[], Iterable[WebSocketConnection]],
                 interval: float, timeout: float) -> None:
        if not interval > 0 or not timeout > 0:
            raise ValueError("keep-alive interval and timeout must be positive")
        self.members = members
        self.interval = float(interval)
        self.timeout = float(timeout)
        self.sweep_period = max(MIN_SWEEP, min(self.interval, self.timeout) / SWEEPS_PER_INTERVAL)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None

    @property
    def running(self) -> bool:
        return self._handle is not None

    def start(self) -> None:
        """Arm the sweep on the running loop (idempotent)."""
        if self._handle is None:
            self._loop = asyncio.get_running_loop()
            self._handle = self._loop.call_later(self.sweep_period, self._sweep)

    def stop(self) -> None:
        """Disarm the sweep (idempotent)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _sweep(self) -> None:
        loop = self._loop
        assert loop is not None
        now = loop.time()
        # Re-armed first: a connection that raises below must not end keep-alive
        # for all the others.
        self._handle = loop.call_at(now + self.sweep_period, self._sweep)
        interval = self.interval
        for conn in list(self.members()):
            deadline = conn._ka_deadline
            if deadline:  # our ping is out
                if now >= deadline:
                    self._act(conn._on_keepalive_timeout, conn)
                continue
            if conn._rx_seen:
                conn._rx_seen = False
                conn._ka_due = now + interval
            elif now >= conn._ka_due:
                conn._ka_deadline = now + self.timeout
                self._act(conn._send_keepalive_ping, conn)

    def _act(self, action: Callable[[float], None], conn: WebSocketConnection) -> None:
        try:
            action(self.timeout)
        except Exception:  # a bug: log it, and keep the others alive
            logger.exception("keep-alive of %s failed", conn)
