"""Pure-Python twin of ``reinhardt_ws._fastbroadcast``.

Same interface and the same semantics as the Cython module (``src/_fastbroadcast.pyx``);
it is the fallback where the extension is missing and the oracle the test-suite
compares the extension against.  Keep the two in step: every behaviour here has a
line-for-line counterpart there.

The model
---------
A :class:`Hub` belongs to one event loop.  Each WebSocket connection that the server
writes to owns a :class:`Peer`.  Frames are *queued* on a peer (never written at
once); the first queued frame of an event-loop iteration schedules one
``Hub.flush`` with ``loop.call_soon``, which writes everything each peer has
queued in one ``writev`` (one syscall per connection per iteration, the uWebSockets
"cork").  A frame is one ``bytes`` object shared by every peer it goes to: when a
transport must buffer it keeps a reference, not a copy.

Slow consumers: a peer whose buffered bytes (transport buffer plus queue) would pass
``max_write_buffer`` is either skipped for that frame (``drop_slow=True``) or
handed to its ``on_overflow`` callback once (the connection closes it with 1013);
both count as *dropped*.  So what a peer holds stays within ``max_write_buffer``
(plus the small control frames picows writes by itself).  To keep the check cheap,
a peer remembers the transport's buffer size as of its last write (an upper bound:
a transport buffer only shrinks between our writes) and asks the transport again
only when that bound says the frame might not fit.  A peer whose socket write
failed (or whose transport raised), or that is closing, counts as *failed* and
calls ``on_failure`` once; one failing peer never keeps the others from being
written.
"""

from __future__ import annotations

import asyncio
import errno
import operator
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

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
_FATAL_ERRNOS = frozenset(
    {errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.EBADF, errno.ECONNABORTED,
     errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH}
)


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
    first = 0x80 | opcode
    if n < 126:
        header = bytes((first, n))
    elif n < 65536:
        header = bytes((first, 126, n >> 8, n & 0xFF))
    else:
        header = bytes((first, 127)) + n.to_bytes(8, "big")
    return header + payload


class Peer:
    """Write state of one connection: its queue, its socket and its limits.

    *transport* is the connection's asyncio transport; *ws* the picows transport on
    top of it (or None), consulted so nothing is written after a close frame picows
    sent by itself.  ``on_overflow()`` and ``on_failure(exc)`` are called at most
    once each, from the event loop, through ``call_soon``: never while a fan-out
    is iterating a room.
    """

    __slots__ = (
        "_fd",
        "_get_write_buffer_size",
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
        conn_id: str,
        max_write_buffer: int,
        drop_slow: bool,
        on_overflow: Callable[[], object],
        on_failure: Callable[[BaseException | None], object],
    ) -> None:
        if max_write_buffer <= 0:
            raise ValueError("max_write_buffer must be positive")
        self._hub = hub
        self._ws = ws
        self._write = transport.write
        self._get_write_buffer_size = transport.get_write_buffer_size
        self._is_closing = transport.is_closing
        self._fd = _direct_fd(transport)
        self._pending: list[bytes] = []
        self._spare: list[bytes] | None = None
        self._scheduled = False
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
        """Queue *frame*; return DELIVERED, DROPPED or FAILED.

        DELIVERED means queued for this iteration's flush.  Never raises for a
        broken connection; the failure is reported by the return value.
        ``TypeError`` if *frame* is not ``bytes``.
        """
        if type(frame) is not bytes:
            raise TypeError(f"frame must be bytes, not {type(frame).__name__}")
        return self._send(frame)

    def _send(self, frame: bytes) -> int:
        if self.closed or self.failed:
            return FAILED
        size = len(frame)
        if (self.paused or self._transport_size + self.pending_size + size
                > self.max_write_buffer) and self._over(size):
            if self.drop_slow:
                self.over_limit = True
                return DROPPED
            self.closed = True
            self._drop_pending()
            self._hub._loop.call_soon(self._on_overflow)
            return DROPPED
        self.over_limit = False
        self._enqueue(frame, size)
        return DELIVERED

    def _enqueue(self, frame: bytes, size: int) -> None:
        """Append to the queue; the first frame of an iteration schedules the flush."""
        self._pending.append(frame)
        self.pending_size += size
        if not self._scheduled:
            self._scheduled = True
            self._hub._dirty.append(self)
            self._hub._schedule()

    def push(self, frame: bytes) -> int:
        """Queue *frame* without the slow-consumer check; DELIVERED or FAILED.

        For a connection's own sends, which wait for the buffer to drain
        (backpressure) instead of being dropped.  A queue grown past
        ``max_write_buffer`` is written at once: a sender that never yields to
        the loop never lets the flush run, and must still see the transport's
        backlog (which pauses it).
        """
        if type(frame) is not bytes:
            raise TypeError(f"frame must be bytes, not {type(frame).__name__}")
        if self.closed or self.failed:
            return FAILED
        self._enqueue(frame, len(frame))
        if self.pending_size > self.max_write_buffer:
            self.flush()
        return DELIVERED

    def _over(self, size: int) -> bool:
        try:
            buffered = int(self._get_write_buffer_size())
        except Exception:  # transport already gone
            buffered = 0
        self._transport_size = buffered
        return bool(buffered + self.pending_size + size > self.max_write_buffer)

    def buffered_size(self) -> int:
        """Bytes queued here plus bytes the transport holds."""
        try:
            return int(self._get_write_buffer_size()) + self.pending_size
        except Exception:
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
        if self._fd >= 0 and self._get_write_buffer_size() == 0:
            self._transport_size = 0
            start = 0
            count = len(frames)
            while start < count:
                chunk = frames[start : start + _IOV_MAX]
                try:
                    if len(chunk) == 1:
                        sent = os.write(self._fd, chunk[0])
                    else:
                        sent = os.writev(self._fd, chunk)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                except OSError as exc:
                    if exc.errno in _FATAL_ERRNOS:
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
                        self._write(frame[sent:])
                        sent = 0
                        start += 1
                    for rest in frames[start:]:
                        self._write(rest)
                    self._transport_size = self._get_write_buffer_size()
                    return
            return
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
        self._hub._loop.call_soon(self._on_failure, exc)

    def write_now(self, frame: bytes | None = None) -> None:
        """Flush the queue and then *frame* (if given) synchronously, in order."""
        if frame is not None:
            if type(frame) is not bytes:
                raise TypeError(f"frame must be bytes, not {type(frame).__name__}")
            if self.closed or self.failed:
                return
            self._pending.append(frame)
            self.pending_size += len(frame)
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
    """Per-event-loop fan-out engine: one flush per loop iteration for all peers."""

    __slots__ = ("_dirty", "_flush_scheduled", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._dirty: list[Peer] = []
        self._flush_scheduled = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def _schedule(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write out every peer that has something queued."""
        self._flush_scheduled = False
        dirty = self._dirty
        self._dirty = []
        for peer in dirty:
            peer._scheduled = False
            peer.flush()

    def fanout(
        self,
        peers: Mapping[Any, Peer] | Iterable[Peer],
        frame: bytes,
        exclude: frozenset[str] | set[str] | None = None,
    ) -> tuple[int, int, list[str]]:
        """Queue *frame* on every peer not excluded (by ``conn_id``).

        *peers* is a mapping whose values are peers, or an iterable of peers.
        Returns ``(delivered, dropped, failed_ids)``.
        """
        if type(frame) is not bytes:
            raise TypeError(f"frame must be bytes, not {type(frame).__name__}")
        if exclude is not None and not exclude:
            exclude = None
        elif exclude is not None and not isinstance(exclude, (set, frozenset)):
            exclude = frozenset(exclude)
        counts = [0, 0]  # DELIVERED, DROPPED
        failed: list[str] = []
        values = peers.values() if isinstance(peers, Mapping) else peers
        for peer in values:
            _offer(peer, frame, exclude, counts, failed)
        return counts[DELIVERED], counts[DROPPED], failed


def _offer(peer: Peer, frame: bytes, exclude: frozenset[str] | set[str] | None,
           counts: list[int], failed: list[str]) -> None:
    """One member of a fan-out: skip if excluded, else queue and count."""
    if exclude is not None and peer.conn_id in exclude:
        return
    status = peer._send(frame)
    if status == FAILED:
        failed.append(peer.conn_id)
    else:
        counts[status] += 1


def _direct_fd(transport: Any) -> int:
    """The socket fd we may ``writev`` on directly, or -1 (TLS, no socket)."""
    if transport.get_extra_info("sslcontext") is not None:
        return -1
    if transport.get_extra_info("ssl_object") is not None:
        return -1
    sock = transport.get_extra_info("socket")
    if sock is None:
        return -1
    try:
        return int(sock.fileno())
    except Exception:
        return -1
