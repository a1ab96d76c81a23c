"""Pure-Python twin of ``reinhardt_ws._fastbroadcast``.

Same interface and the same semantics as the Cython module (``src/_fastbroadcast.pyx``);
it is the fallback where the extension is missing and the oracle the test-suite
compares the extension against.  Keep the two in step: every behaviour here has a
line-for-line counterpart there.  Only what runs per frame lives in the twins;
the selector (``reinhardt_ws._fanout``) decides which descriptor a peer may write
to directly and validates its limits (``_fanout.new_peer``).

The model
---------
A :class:`Hub` belongs to one event loop.  Each WebSocket connection that the server
writes to owns a :class:`Peer`.  Frames are *queued* on a peer (written at once only
when the queue would pass ``max_write_buffer``, see below); the first queued frame
of an event-loop iteration schedules one ``Hub.flush`` with ``loop.call_soon``,
which writes everything each peer has queued in one ``writev`` (one syscall per
connection per iteration, the uWebSockets "cork").  A frame is one ``bytes`` object
shared by every peer it goes to: when a transport must buffer it keeps a reference,
not a copy.

Held frames (``Hub.fanout(..., flush_interval=t)``, what ``RoomManager(flush_interval=t)``
uses): the frame is queued as above, but instead of the iteration's flush the
first held frame arms one hub timer (``loop.call_at`` here; the C twin uses a
timerfd on Linux) at most *t* seconds after its fan-out began (the clock is read
once per fan-out), which writes every peer's held queue at once; frames of later
iterations join the same write.  A peer flushed earlier for another reason (a
frame queued without hold, an early write under the rule below, a close) writes
its held frames then, in order.  One write per member per interval instead of
per iteration: fewer syscalls for a stream of single broadcasts, at up to *t* of
added latency.

Slow consumers: the rule is about *backlog*, the transport's buffer (what the socket
refused) plus the queue.  A peer with no backlog always takes the frame offered,
however large.  A peer with a backlog takes it only if backlog plus frame stay
within ``max_write_buffer``.  Frames queued in this iteration are the cork, not a
slow consumer's backlog: when a frame would not fit and the transport holds nothing,
the peer writes its queue out at once (early, in order) and judges again by what the
socket then refused, which the transport now holds.  A frame that still does not fit
is either skipped (``drop_slow=True``) or handed to the peer's ``on_overflow``
callback once (the connection closes it with 1013); both count as *dropped*.  So
what a peer holds stays within ``max_write_buffer`` or one frame, whichever is
larger (plus the small control frames picows writes by itself).  To keep the check
cheap, a peer remembers the transport's buffer size as of its last write (an upper
bound: a transport buffer only shrinks between our writes) and asks the transport
again only when that bound says the frame might not fit (or while the transport has
paused writing).  A peer whose socket write failed (or whose transport raised), or
that is closing, counts as *failed* and calls ``on_failure`` once; one failing peer
never keeps the others from being written.

Counters: a hub counts, in plain integers, what its fan-outs and peers did;
:meth:`Hub.stats` reads them (for metrics, at scrape time).
"""

from __future__ import annotations

import asyncio
import errno
import operator
import os
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .protocol.framing import frame_header

__all__ = [
    "DELIVERED",
    "DROPPED",
    "FAILED",
    "IMPLEMENTATION",
    "Hub",
    "Peer",
    "build_frame",
]

IMPLEMENTATION = "python"

#: Results of :meth:`Peer.send`.
DELIVERED = 0
DROPPED = 1
FAILED = 2

#: Frames per ``writev`` (IOV_CHUNK in the .pyx; aiofastnet flushes 256 iovecs too).
_IOV_MAX = 256
#: Where there is no ``os.writev`` (Windows) there is no direct path, as in C
#: (``RWS_HAVE_DIRECT`` 0): every frame goes through the transport.
_HAVE_DIRECT = hasattr(os, "writev")


def build_frame(opcode: int, payload: bytes) -> bytes:
    """Return one unmasked, final server frame (RFC 6455 section 5.2) carrying *payload*.

    Raises ``ValueError`` for an opcode outside 0..15 and for a control frame
    (opcode >= 8) whose payload is longer than 125 bytes, ``TypeError`` for an
    opcode that is not an integer or a payload that is not ``bytes``.
    """
    opcode = operator.index(opcode)
    if not 0 <= opcode <= 0xF:
        raise ValueError(f"opcode out of range: {opcode}")
    if not isinstance(payload, bytes):
        raise TypeError(f"payload must be bytes, not {type(payload).__name__}")
    n = len(payload)
    if opcode >= 0x8 and n > 125:
        raise ValueError(f"control frame payload too long: {n} > 125")
    return frame_header(0x80 | opcode, n) + payload


class Peer:
    """Write state of one connection: its queue, its socket and its limits.

    *transport* is the connection's asyncio transport; *ws* the picows transport on
    top of it (or None), consulted so nothing is written after a close frame picows
    sent by itself.  *fd* is the socket descriptor the peer writes to directly when
    the transport holds nothing, or -1 to always write through the transport
    (``_fanout.direct_fd`` computes it; it is ignored where there is no
    scatter-gather send).  ``on_overflow()`` and ``on_failure(exc)`` are called at
    most once each, from the event loop, through ``call_soon``: never while a
    fan-out is iterating a room.  Build peers with ``_fanout.new_peer``, which
    validates *max_write_buffer*.

    The slow-consumer rule (``send``, ``Hub.fanout``): the peer's *backlog* is what
    its transport holds (what the socket refused) plus its queue.  A frame is taken
    when the backlog is zero, however large the frame, or when backlog plus frame
    stay within *max_write_buffer*.  Frames queued in this event-loop iteration are
    not by themselves a slow consumer's backlog: when a frame would not fit and the
    transport holds nothing, the queue is first written out at once (early, in
    order) and the rule is applied again to what the socket then refused, which the
    transport now holds.  While the transport holds bytes the queue is never
    written early.  A frame that still does not fit is dropped (*drop_slow*) or
    closes the peer (``on_overflow``; its queue is dropped).
    """

    __slots__ = (
        "_fd",
        "_get_write_buffer_size",
        "_held",
        "_hub",
        "_is_closing",
        "_on_failure",
        "_on_overflow",
        "_pending",
        "_scheduled",
        "_spare",
        "_transport_size",
        "_write",
        "_ws",
        "closed",
        "conn_id",
        "drop_slow",
        "failed",
        "max_write_buffer",
        "over_limit",
        "paused",
        "pending_size",
    )

    def __init__(
        self,
        hub: Hub,
        transport: Any,
        ws: Any,
        fd: int,
        conn_id: str,
        max_write_buffer: int,
        drop_slow: bool,
        on_overflow: Callable[[], object],
        on_failure: Callable[[BaseException | None], object],
    ) -> None:
        self._hub = hub
        self._ws = ws
        self._write = transport.write
        self._get_write_buffer_size = transport.get_write_buffer_size
        self._is_closing = transport.is_closing
        self._fd = operator.index(fd) if _HAVE_DIRECT else -1
        self._pending: list[bytes] = []
        self._spare: list[bytes] | None = None
        self._scheduled = False
        self._held = False
        self._transport_size = 0
        self._on_overflow = on_overflow
        self._on_failure = on_failure
        self.conn_id = conn_id
        self.max_write_buffer = max_write_buffer
        self.drop_slow = drop_slow
        self.pending_size = 0
        self.paused = False
        self.closed = False
        self.failed = False
        self.over_limit = False

    # -- queueing -----------------------------------------------------------
    def send(self, frame: bytes) -> int:
        """Queue *frame* under the slow-consumer rule; return DELIVERED, DROPPED or
        FAILED.

        DELIVERED means queued for this iteration's flush: always so when the
        peer has no backlog, however large the frame; with a backlog, only if
        backlog plus frame stay within ``max_write_buffer`` (see the class: before
        refusing while the transport holds nothing, this call writes the queue out
        and judges by what the socket refused).  FAILED for a closed or failed
        peer, including one that this early write finds gone.  Never raises for a
        broken connection; the failure is reported by the return value.
        ``TypeError`` if *frame* is not ``bytes``.
        """
        if type(frame) is not bytes:
            raise TypeError(f"frame must be bytes, not {type(frame).__name__}")
        status = self._send(frame, False, 0.0)
        hub = self._hub
        if status == DELIVERED:
            hub._delivered += 1
            hub._bytes_queued += len(frame)
        elif status == DROPPED:
            hub._dropped += 1
        else:
            hub._failed += 1
        return status

    def _send(self, frame: bytes, held: bool, deadline: float) -> int:
        if self.closed or self.failed:
            return FAILED
        size = len(frame)
        if (self.paused or self._transport_size + self.pending_size + size
                > self.max_write_buffer):
            over = self._over(size)
            if self.closed or self.failed:  # the early write found the connection gone
                return FAILED
            if over:
                if self.drop_slow:
                    self.over_limit = True
                    return DROPPED
                self.closed = True
                self._drop_pending()
                self._hub._overflows += 1
                self._hub._get_loop().call_soon(self._on_overflow)
                return DROPPED
        self.over_limit = False
        self._enqueue(frame, size, held, deadline)
        return DELIVERED

    def _enqueue(self, frame: bytes, size: int, held: bool, deadline: float) -> None:
        """Append to the queue.  The first frame of an iteration schedules the
        flush; with *held* (a fan-out with a flush interval) the first frame arms
        the hub's held flush instead, to run by *deadline* (the loop's clock)."""
        self._pending.append(frame)
        self.pending_size += size
        if held:
            if not self._scheduled and not self._held:
                self._held = True
                self._hub._held_peers.append(self)
                self._hub._arm(deadline)
        elif not self._scheduled:
            self._scheduled = True
            self._hub._dirty.append(self)
            self._hub._schedule()

    def push(self, frame: bytes) -> int:
        """Queue *frame* without the slow-consumer check; DELIVERED or FAILED.

        For a connection's own sends, which wait for the buffer to drain
        (backpressure) instead of being dropped.  The queue never holds more than
        ``max_write_buffer`` plus this frame: a queue grown past
        ``max_write_buffer`` is written out at once (a sender that never yields to
        the loop never lets the flush run, and must still see the transport's
        backlog, which pauses it).
        """
        if type(frame) is not bytes:
            raise TypeError(f"frame must be bytes, not {type(frame).__name__}")
        hub = self._hub
        if self.closed or self.failed:
            hub._failed += 1
            return FAILED
        size = len(frame)
        hub._pushed += 1
        hub._bytes_queued += size
        self._enqueue(frame, size, False, 0.0)
        if self.pending_size > self.max_write_buffer:
            self.flush()
        return DELIVERED

    def _over(self, size: int) -> bool:
        """The exact slow-consumer check: a backlog, and no room for *size* more.

        Frames queued in this iteration while the transport holds nothing are not
        a slow consumer's backlog: they are written out now (early, instead of at
        the iteration's flush) and only what the socket then refuses counts.
        """
        try:
            buffered = int(self._get_write_buffer_size())
            if buffered == 0 and self.pending_size:
                self.flush()
                buffered = int(self._get_write_buffer_size())
        except Exception:  # transport already gone
            buffered = 0
        self._transport_size = buffered
        backlog = buffered + self.pending_size
        return bool(backlog > 0 and backlog + size > self.max_write_buffer)

    def buffered_size(self) -> int:
        """Bytes this connection holds for writing: queued here plus held by the
        transport (not what the kernel's socket buffer holds).  Exact; costs one
        call to the transport's ``get_write_buffer_size``."""
        try:
            return int(self._get_write_buffer_size()) + self.pending_size
        except Exception:  # transport already gone
            return self.pending_size

    # -- writing ------------------------------------------------------------
    def flush(self) -> None:
        """Write everything queued, now, in order (one ``writev`` when possible)."""
        pending = self._pending
        if not pending:
            return
        # Swap in the spare list: no allocation per peer per flush.
        self._pending = self._spare if self._spare is not None else []
        self._spare = None
        self.pending_size = 0
        try:
            if self.failed:
                return
            if self._ws is not None and self._ws.is_close_frame_sent:
                # picows closed the connection itself (a protocol error it
                # detected): nothing may follow its close frame.
                self.closed = True
                return
            try:
                self._write_out(pending)
            except Exception as exc:  # OSError, or whatever the transport raised
                self._fail(exc)
        finally:
            pending.clear()
            self._spare = pending

    def _write_out(self, frames: list[bytes]) -> None:
        if self._is_closing():  # closed by someone else: no more bytes
            self._fail(None)
            return
        hub = self._hub
        hub._flushes += 1
        if self._fd >= 0 and self._get_write_buffer_size() == 0:
            self._transport_size = 0
            start = 0
            count = len(frames)
            while start < count:
                chunk = frames[start : start + _IOV_MAX]
                hub._syscalls += 1
                try:
                    if len(chunk) == 1:
                        sent = os.write(self._fd, chunk[0])
                    else:
                        sent = os.writev(self._fd, chunk)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                except OSError as exc:
                    # As in asyncio's transports, every other error is fatal
                    # (ENOBUFS is transient, as rws_would_block says in C).
                    if exc.errno != errno.ENOBUFS:
                        raise
                    sent = 0
                # Walk past what the kernel took; hand the rest to the transport.
                for frame in chunk:
                    n = len(frame)
                    if sent >= n:
                        sent -= n
                        start += 1
                        continue
                    if sent:
                        hub._transport_writes += 1
                        self._write(frame[sent:])
                        sent = 0
                        start += 1
                    hub._transport_writes += count - start
                    for rest in frames[start:]:
                        self._write(rest)
                    self._transport_size = self._get_write_buffer_size()
                    return
            return
        hub._transport_writes += len(frames)
        for frame in frames:
            self._write(frame)
        self._transport_size = self._get_write_buffer_size()

    def _drop_pending(self) -> None:
        self._pending = []
        self.pending_size = 0

    def _fail(self, exc: BaseException | None) -> None:
        if self.failed:
            return
        self.failed = True
        self._drop_pending()
        self._hub._write_failures += 1
        self._hub._get_loop().call_soon(self._on_failure, exc)

    def write_now(self, frame: bytes | None = None) -> None:
        """Flush the queue and then *frame* (if given) synchronously, in order.
        A closed or failed peer ignores *frame*."""
        if frame is not None:
            if type(frame) is not bytes:
                raise TypeError(f"frame must be bytes, not {type(frame).__name__}")
            if self.closed or self.failed:
                return
            self._pending.append(frame)
            self.pending_size += len(frame)
            self._hub._pushed += 1
            self._hub._bytes_queued += len(frame)
        self.flush()

    def close(self) -> None:
        """Accept no more frames; frames already queued are still flushed."""
        self.closed = True

    def discard(self) -> None:
        """The connection is gone: drop the queue and refuse everything."""
        self.closed = True
        self.failed = True
        self._drop_pending()

    # -- transport flow control (from the protocol) ------------------------
    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False


class Hub:
    """Per-event-loop fan-out engine: one flush per loop iteration for all peers,
    a held flush for fan-outs with a flush interval, and the counters of
    everything its fan-outs and peers did."""

    __slots__ = (
        "_bytes_queued",
        "_delivered",
        "_dirty",
        "_dropped",
        "_failed",
        "_fanouts",
        "_flush_scheduled",
        "_flushes",
        "_held_deadline",
        "_held_handle",
        "_held_peers",
        "_loop_ref",
        "_overflows",
        "_pushed",
        "_syscalls",
        "_transport_writes",
        "_write_failures",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # A weak reference: the hub registry (``_fanout.get_hub``) is keyed
        # weakly by the loop, and a strong one here would keep every loop that
        # ever had a hub (and the hub) alive for good.
        self._loop_ref = weakref.ref(loop)
        self._dirty: list[Peer] = []
        self._flush_scheduled = False
        # Peers with frames held by a fan-out's flush interval, and the timer
        # that writes them (its deadline on the loop's clock).
        self._held_peers: list[Peer] = []
        self._held_handle: asyncio.TimerHandle | None = None
        self._held_deadline = 0.0
        self._fanouts = 0
        self._delivered = 0
        self._dropped = 0
        self._overflows = 0
        self._failed = 0
        self._pushed = 0
        self._bytes_queued = 0
        self._flushes = 0
        self._syscalls = 0
        self._transport_writes = 0
        self._write_failures = 0

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The hub's event loop, or None once it has been garbage-collected."""
        return self._loop_ref()

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop_ref()
        if loop is None:
            raise RuntimeError("the fan-out hub's event loop is gone")
        return loop

    def _schedule(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._get_loop().call_soon(self._flush_soon)

    def _arm(self, deadline: float) -> None:
        """Make sure the held flush runs by *deadline* (the loop's clock)."""
        if self._held_handle is not None:
            if self._held_deadline <= deadline:
                return
            self._held_handle.cancel()  # a shorter interval than the armed one
        self._held_deadline = deadline
        self._held_handle = self._get_loop().call_at(deadline, self._flush_held)

    def _flush_soon(self) -> None:
        """The iteration's flush (scheduled with ``call_soon``)."""
        self._flush_scheduled = False
        dirty = self._dirty
        self._dirty = []
        for peer in dirty:
            peer._scheduled = False
            peer.flush()

    def _flush_held(self) -> None:
        """The held flush (the timer armed by a fan-out with a flush interval)."""
        self._held_handle = None
        held = self._held_peers
        self._held_peers = []
        for peer in held:
            if peer._held:
                peer._held = False
                if not peer._scheduled:  # else this iteration's flush writes it
                    peer.flush()

    def flush(self) -> None:
        """Write out every peer that has something queued, held frames included."""
        if self._held_handle is not None:
            self._held_handle.cancel()
        self._flush_soon()
        self._flush_held()

    def fanout(
        self,
        peers: Mapping[Any, Peer] | Iterable[Peer],
        frame: bytes,
        exclude: frozenset[str] | None = None,
        flush_interval: float = 0.0,
    ) -> tuple[int, int, list[str]]:
        """Queue *frame* on every peer not excluded (by ``conn_id``), each under the
        slow-consumer rule of :meth:`Peer.send`.

        *peers* is a mapping whose values are peers, or an iterable of peers;
        *exclude* a ``frozenset`` of connection ids, or None.  *flush_interval*
        (seconds, 0: none) holds the frame instead of writing it in this
        iteration: a peer's held frames are written together at most that long
        after the first of them was queued (earlier if the peer is flushed for
        another reason, or must be written early under the slow-consumer rule).
        Returns ``(delivered, dropped, failed_ids)``.  ``TypeError`` for a *frame*
        that is not ``bytes`` or an *exclude* that is not a ``frozenset``;
        ``ValueError`` for a negative or non-finite *flush_interval*.
        """
        if type(frame) is not bytes:
            raise TypeError(f"frame must be bytes, not {type(frame).__name__}")
        if exclude is not None and type(exclude) is not frozenset:
            raise TypeError(f"exclude must be a frozenset or None, not "
                            f"{type(exclude).__name__}")
        if not isinstance(flush_interval, (int, float)):
            raise TypeError(f"flush_interval must be a number, not "
                            f"{type(flush_interval).__name__}")
        hold = float(flush_interval)
        if not 0.0 <= hold < 1e300:
            raise ValueError(f"flush_interval must be finite and not negative, "
                             f"not {flush_interval!r}")
        counts = [0, 0]  # DELIVERED, DROPPED
        failed: list[str] = []
        # One deadline for the whole fan-out, read before its first member: no
        # member's held frames wait longer than the interval.
        held = hold > 0.0
        deadline = self._get_loop().time() + hold if held else 0.0
        values = peers.values() if isinstance(peers, Mapping) else peers
        for peer in values:
            _offer(peer, frame, exclude, counts, failed, held, deadline)
        self._fanouts += 1
        self._delivered += counts[DELIVERED]
        self._dropped += counts[DROPPED]
        self._failed += len(failed)
        self._bytes_queued += counts[DELIVERED] * len(frame)
        return counts[DELIVERED], counts[DROPPED], failed

    def stats(self) -> dict[str, int]:
        """The counters, since the hub was made (the same keys in both twins):

        ``fanouts`` (calls of :meth:`fanout`); ``delivered``, ``dropped`` and
        ``failed`` (the answers of fan-outs and of ``Peer.send``, per peer;
        ``failed`` also counts ``Peer.push`` refused); ``overflows`` (peers closed
        by the close policy, also counted in ``dropped``); ``pushed`` (frames
        queued by ``Peer.push`` and ``Peer.write_now``); ``bytes_queued`` (bytes of
        every frame queued); ``flushes`` (queues written out, one per peer per
        write); ``syscalls`` (direct socket writes); ``transport_writes`` (frames or
        frame remainders handed to a transport); ``write_failures`` (peers failed
        by a write or a closing transport).
        """
        return {
            "fanouts": self._fanouts,
            "delivered": self._delivered,
            "dropped": self._dropped,
            "overflows": self._overflows,
            "failed": self._failed,
            "pushed": self._pushed,
            "bytes_queued": self._bytes_queued,
            "flushes": self._flushes,
            "syscalls": self._syscalls,
            "transport_writes": self._transport_writes,
            "write_failures": self._write_failures,
        }


def _offer(peer: Peer, frame: bytes, exclude: frozenset[str] | None,
           counts: list[int], failed: list[str], held: bool, deadline: float) -> None:
    """One member of a fan-out: skip if excluded, else queue and count."""
    if exclude is not None and peer.conn_id in exclude:
        return
    status = peer._send(frame, held, deadline)
    if status == FAILED:
        failed.append(peer.conn_id)
    else:
        counts[status] += 1
