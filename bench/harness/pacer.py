"""An open-loop, fixed-rate source of broadcasts for the server process (``PACE``).

:func:`pace` yields the due time of message j, ``t0 + j / rate``, one per event-loop
iteration, from a periodic ``timerfd`` (Linux, through libc: ``os.timerfd_*`` is
3.13+) that the loop watches like any socket, the way a Redis subscriber or a
market-data feed wakes it.  Open loop: the ticks come from the kernel's clock,
whatever the server or its clients do; a server that falls behind finds several
expirations at once and works through them (still one per iteration), so the
caller sees its own lateness as ``now - due``.  The timer runs on
``CLOCK_MONOTONIC``, the clock of ``time.monotonic()`` in every process of this
machine, so due times compare with the clients' arrival times.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import sys
import time
from collections.abc import AsyncIterator

__all__ = ["pace", "timerfd_absent_reason"]

_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK = os.O_NONBLOCK
_TFD_CLOEXEC = os.O_CLOEXEC
_TFD_TIMER_ABSTIME = 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


def timerfd_absent_reason() -> str | None:
    """Why :func:`pace` cannot run here (not Linux, no ``timerfd_create``), or None."""
    if not sys.platform.startswith("linux"):
        return f"timerfd is Linux-only (this is {sys.platform})"
    try:
        libc = _libc()
        libc.timerfd_create  # noqa: B018 (the lookup is the check)
    except (OSError, AttributeError) as exc:
        return f"libc has no timerfd_create: {exc}"
    return None


def _timerfd(first_ns: int, period_ns: int) -> int:
    """A non-blocking periodic timerfd: first expiry at CLOCK_MONOTONIC *first_ns*,
    then every *period_ns*."""
    libc = _libc()
    fd = int(libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"timerfd_create: {os.strerror(err)}")
    spec = _Itimerspec(_Timespec(*divmod(period_ns, 1_000_000_000)),
                       _Timespec(*divmod(first_ns, 1_000_000_000)))
    if libc.timerfd_settime(fd, _TFD_TIMER_ABSTIME, ctypes.byref(spec), None) != 0:
        err = ctypes.get_errno()
        os.close(fd)
        raise OSError(err, f"timerfd_settime: {os.strerror(err)}")
    return fd


async def pace(messages: int, rate: float, lead: float = 0.02) -> AsyncIterator[float]:
    """Yield *messages* due times (``time.monotonic()`` seconds) ``t0 + j / rate``,
    each once it has come, at most one per event-loop iteration; ``t0`` is *lead*
    seconds from the call.  The period is ``1 / rate`` rounded to a nanosecond
    (the due times are exactly the kernel timer's).  ``ValueError`` for a rate
    that is not positive or above 1 MHz, or a negative count."""
    if not 0 < rate <= 1e6:
        raise ValueError(f"rate must be within 0 < rate <= 1e6 per second, not {rate!r}")
    if messages < 0:
        raise ValueError(f"messages must not be negative, not {messages!r}")
    loop = asyncio.get_running_loop()
    period_ns = max(1, round(1e9 / rate))
    t0_ns = time.monotonic_ns() + round(lead * 1e9)
    fd = _timerfd(t0_ns, period_ns)
    ready = 0  # expirations read but not yet yielded
    waiter: asyncio.Future[None] | None = None

    def on_readable() -> None:
        nonlocal ready
        try:
            data = os.read(fd, 8)
        except BlockingIOError:
            return
        ready += int.from_bytes(data, sys.byteorder)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    loop.add_reader(fd, on_readable)
    try:
        for j in range(messages):
            if ready == 0:
                waiter = loop.create_future()
                await waiter
                waiter = None
            else:  # behind: the next one is due already, but in the next iteration
                await asyncio.sleep(0)
            ready -= 1
            yield (t0_ns + j * period_ns) / 1e9
    finally:
        loop.remove_reader(fd)
        os.close(fd)
