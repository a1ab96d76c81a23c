# cython: language_level=3, freethreading_compatible=False
"""C fan-out for reinhardt_ws rooms (private: import ``reinhardt_ws`` instead).

Line-for-line counterpart of ``reinhardt_ws/_fastbroadcast_py.py``; read that
module's docstring for the model (Hub per loop, Peer per connection, one coalesced
``sendmsg`` per connection per event-loop iteration, one shared ``bytes`` frame per
broadcast, the slow-consumer rule about backlog, the hub's counters).  Everything
the twin does, this does, in the same order.  What does not run per frame (the
descriptor a peer may write to, the validation of its limits) is the selector's,
``reinhardt_ws/_fanout.py``.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize
from cpython.dict cimport PyDict_Next
from cpython.number cimport PyNumber_Index
from cpython.object cimport PyObject
from cpython.set cimport PySet_Contains
from libc.errno cimport errno
from libc.string cimport memcpy
from libc.string cimport strerror

cdef extern from "_fastbroadcast_compat.h":
    ctypedef struct rws_iovec:
        void *iov_base
        size_t iov_len
    int RWS_HAVE_DIRECT
    Py_ssize_t rws_sendv(int fd, rws_iovec *iov, int n) nogil
    int rws_would_block(int err) nogil

from collections.abc import Mapping as _Mapping

__all__ = ["DELIVERED", "DROPPED", "FAILED", "IMPLEMENTATION", "Hub", "Peer", "build_frame"]

IMPLEMENTATION = "cython"

DELIVERED = 0
DROPPED = 1
FAILED = 2

cdef enum:
    IOV_CHUNK = 256

cpdef bytes build_frame(object opcode, object payload):
    """Return one unmasked, final server frame (RFC 6455 section 5.2) carrying *payload*.

    Raises ``ValueError`` for an opcode outside 0..15 and for a control frame
    (opcode >= 8) whose payload is longer than 125 bytes, ``TypeError`` for an
    opcode that is not an integer or a payload that is not ``bytes``.
    """
    opcode = PyNumber_Index(opcode)
    if not 0 <= opcode <= 0xF:
        raise ValueError(f"opcode out of range: {opcode}")
    if not isinstance(payload, bytes):
        raise TypeError(f"payload must be bytes, not {type(payload).__name__}")
    cdef int op = opcode
    cdef Py_ssize_t n = PyBytes_GET_SIZE(payload)
    if op >= 0x8 and n > 125:
        raise ValueError(f"control frame payload too long: {n} > 125")
    cdef Py_ssize_t hlen = 2 if n < 126 else (4 if n < 65536 else 10)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, hlen + n)
    cdef unsigned char *p = <unsigned char *>PyBytes_AS_STRING(out)
    cdef int i
    p[0] = <unsigned char>(0x80 | op)
    if n < 126:
        p[1] = <unsigned char>n
    elif n < 65536:
        p[1] = 126
        p[2] = <unsigned char>((n >> 8) & 0xFF)
        p[3] = <unsigned char>(n & 0xFF)
    else:
        p[1] = 127
        for i in range(8):
            p[2 + i] = <unsigned char>((<unsigned long long>n >> (8 * (7 - i))) & 0xFF)
    memcpy(p + hlen, PyBytes_AS_STRING(payload), n)
    return out


cdef class Peer:
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

    cdef:
        Hub _hub
        object _ws
        object _write
        object _get_write_buffer_size
        object _is_closing
        object _on_overflow
        object _on_failure
        int _fd
        list _pending
        list _spare
        bint _scheduled
        Py_ssize_t _transport_size
        readonly str conn_id
        readonly Py_ssize_t max_write_buffer
        readonly Py_ssize_t pending_size
        readonly bint drop_slow
        readonly bint paused
        readonly bint closed
        readonly bint failed
        readonly bint over_limit

    def __init__(self, Hub hub not None, transport, ws, int fd, str conn_id not None,
                 Py_ssize_t max_write_buffer, bint drop_slow, on_overflow, on_failure):
        self._hub = hub
        self._ws = ws
        self._write = transport.write
        self._get_write_buffer_size = transport.get_write_buffer_size
        self._is_closing = transport.is_closing
        self._fd = fd if RWS_HAVE_DIRECT else -1
        self._pending = []
        self._spare = None
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
    def send(self, bytes frame not None):
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
        cdef int status = self._send(frame)
        cdef Hub hub = self._hub
        if status == 0:
            hub._delivered += 1
            hub._bytes_queued += PyBytes_GET_SIZE(frame)
        elif status == 1:
            hub._dropped += 1
        else:
            hub._failed += 1
        return status

    cdef int _send(self, bytes frame) except -1:
        if self.closed or self.failed:
            return 2
        cdef Py_ssize_t size = PyBytes_GET_SIZE(frame)
        cdef bint over
        if (self.paused or self._transport_size + self.pending_size + size
                > self.max_write_buffer):
            over = self._over(size)
            if self.closed or self.failed:  # the early write found the connection gone
                return 2
            if over:
                if self.drop_slow:
                    self.over_limit = True
                    return 1
                self.closed = True
                self._drop_pending()
                self._hub._overflows += 1
                self._hub._loop.call_soon(self._on_overflow)
                return 1
        self.over_limit = False
        self._enqueue(frame, size)
        return 0

    cdef inline int _enqueue(self, bytes frame, Py_ssize_t size) except -1:
        """Append to the queue; the first frame of an iteration schedules the flush."""
        self._pending.append(frame)
        self.pending_size += size
        if not self._scheduled:
            self._scheduled = True
            self._hub._dirty.append(self)
            self._hub._schedule()
        return 0

    def push(self, bytes frame not None):
        """Queue *frame* without the slow-consumer check; DELIVERED or FAILED.

        For a connection's own sends, which wait for the buffer to drain
        (backpressure) instead of being dropped.  The queue never holds more than
        ``max_write_buffer`` plus this frame: a queue grown past
        ``max_write_buffer`` is written out at once (a sender that never yields to
        the loop never lets the flush run, and must still see the transport's
        backlog, which pauses it).
        """
        cdef Hub hub = self._hub
        if self.closed or self.failed:
            hub._failed += 1
            return 2
        cdef Py_ssize_t size = PyBytes_GET_SIZE(frame)
        hub._pushed += 1
        hub._bytes_queued += size
        self._enqueue(frame, size)
        if self.pending_size > self.max_write_buffer:
            self._flush()
        return 0

    cdef bint _over(self, Py_ssize_t size) except -1:
        """The exact slow-consumer check: a backlog, and no room for *size* more.

        Frames queued in this iteration while the transport holds nothing are not
        a slow consumer's backlog: they are written out now (early, instead of at
        the iteration's flush) and only what the socket then refuses counts.
        """
        cdef Py_ssize_t buffered, backlog
        try:
            buffered = self._get_write_buffer_size()
            if buffered == 0 and self.pending_size:
                self.flush()
                buffered = self._get_write_buffer_size()
        except Exception:  # transport already gone
            buffered = 0
        self._transport_size = buffered
        backlog = buffered + self.pending_size
        return backlog > 0 and backlog + size > self.max_write_buffer

    def buffered_size(self):
        """Bytes this connection holds for writing: queued here plus held by the
        transport (not what the kernel's socket buffer holds).  Exact; costs one
        call to the transport's ``get_write_buffer_size``."""
        try:
            return <Py_ssize_t>self._get_write_buffer_size() + self.pending_size
        except Exception:  # transport already gone
            return self.pending_size

    # -- writing ------------------------------------------------------------
    def flush(self):
        """Write everything queued, now, in order (one ``sendmsg`` when possible)."""
        self._flush()

    cdef int _flush(self) except -1:
        cdef list pending = self._pending
        if not pending:
            return 0
        # Swap in the spare list: no allocation per peer per flush.
        self._pending = self._spare if self._spare is not None else []
        self._spare = None
        self.pending_size = 0
        try:
            if self.failed:
                return 0
            if self._ws is not None and self._ws.is_close_frame_sent:
                self.closed = True
                return 0
            try:
                self._write_out(pending)
            except Exception as exc:  # OSError, or whatever the transport raised
                self._fail(exc)
        finally:
            pending.clear()  # no slice object
            self._spare = pending
        return 0

    cdef int _write_out(self, list frames) except -1:
        cdef rws_iovec iov[IOV_CHUNK]
        cdef Py_ssize_t count = len(frames)
        cdef Py_ssize_t start = 0
        cdef Py_ssize_t cnt, i, j, sent, flen
        cdef int err
        cdef bytes frame
        cdef Hub hub = self._hub
        if self._is_closing():  # closed by someone else: no more bytes
            self._fail(None)
            return 0
        hub._flushes += 1
        if self._fd >= 0 and self._get_write_buffer_size() == 0:
            self._transport_size = 0
            while start < count:
                cnt = count - start
                if cnt > IOV_CHUNK:
                    cnt = IOV_CHUNK
                for i in range(cnt):
                    frame = <bytes>frames[start + i]
                    iov[i].iov_base = PyBytes_AS_STRING(frame)
                    iov[i].iov_len = <size_t>PyBytes_GET_SIZE(frame)
                hub._syscalls += 1
                sent = rws_sendv(self._fd, iov, <int>cnt)
                if sent < 0:
                    err = errno
                    # As in asyncio's transports, every other error is fatal.
                    if not rws_would_block(err):
                        raise OSError(err, strerror(err).decode("utf-8", "replace"))
                    sent = 0
                # Walk past what the kernel took; hand the rest to the transport.
                for i in range(cnt):
                    flen = <Py_ssize_t>iov[i].iov_len
                    if sent >= flen:
                        sent -= flen
                        start += 1
                        continue
                    if sent:
                        frame = <bytes>frames[start]
                        hub._transport_writes += 1
                        self._write(PyBytes_FromStringAndSize(
                            PyBytes_AS_STRING(frame) + sent, flen - sent))
                        sent = 0
                        start += 1
                    hub._transport_writes += count - start
                    for j in range(start, count):
                        self._write(frames[j])
                    self._transport_size = self._get_write_buffer_size()
                    return 0
            return 0
        hub._transport_writes += count
        for frame in frames:
            self._write(frame)
        self._transport_size = self._get_write_buffer_size()
        return 0

    cdef void _drop_pending(self):
        self._pending = []
        self.pending_size = 0

    cdef int _fail(self, exc) except -1:
        if self.failed:
            return 0
        self.failed = True
        self._drop_pending()
        self._hub._write_failures += 1
        self._hub._loop.call_soon(self._on_failure, exc)
        return 0

    def write_now(self, bytes frame=None):
        """Flush the queue and then *frame* (if given) synchronously, in order.
        A closed or failed peer ignores *frame*."""
        if frame is not None:
            if self.closed or self.failed:
                return
            self._pending.append(frame)
            self.pending_size += PyBytes_GET_SIZE(frame)
            self._hub._pushed += 1
            self._hub._bytes_queued += PyBytes_GET_SIZE(frame)
        self._flush()

    def close(self):
        """Accept no more frames; frames already queued are still flushed."""
        self.closed = True

    def discard(self):
        """The connection is gone: drop the queue and refuse everything."""
        self.closed = True
        self.failed = True
        self._drop_pending()

    # -- transport flow control (from the protocol) ------------------------
    def pause_writing(self):
        self.paused = True

    def resume_writing(self):
        self.paused = False


cdef class Hub:
    """Per-event-loop fan-out engine: one flush per loop iteration for all peers,
    and the counters of everything its fan-outs and peers did."""

    cdef:
        object _loop
        list _dirty
        bint _flush_scheduled
        object _flush_cb
        # Plain integers, read by stats(): no lock, no dict in the hot path.
        long long _fanouts
        long long _delivered
        long long _dropped
        long long _overflows
        long long _failed
        long long _pushed
        long long _bytes_queued
        long long _flushes
        long long _syscalls
        long long _transport_writes
        long long _write_failures

    def __init__(self, loop):
        self._loop = loop
        self._dirty = []
        self._flush_scheduled = False
        self._flush_cb = self.flush
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
    def loop(self):
        return self._loop

    cdef int _schedule(self) except -1:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush_cb)
        return 0

    def flush(self):
        """Write out every peer that has something queued."""
        self._flush_scheduled = False
        cdef list dirty = self._dirty
        self._dirty = []
        cdef Peer peer
        for peer in dirty:
            peer._scheduled = False
            peer._flush()

    def fanout(self, peers, bytes frame not None, exclude=None):
        """Queue *frame* on every peer not excluded (by ``conn_id``), each under the
        slow-consumer rule of :meth:`Peer.send`.

        *peers* is a mapping whose values are peers, or an iterable of peers;
        *exclude* a ``frozenset`` of connection ids, or None.  Returns
        ``(delivered, dropped, failed_ids)``.  ``TypeError`` for a *frame* that is
        not ``bytes`` or an *exclude* that is not a ``frozenset``.
        """
        cdef Py_ssize_t counts[2]
        cdef list failed = []
        cdef Py_ssize_t pos = 0
        cdef PyObject *key
        cdef PyObject *value
        if exclude is not None and type(exclude) is not frozenset:
            raise TypeError(f"exclude must be a frozenset or None, not "
                            f"{type(exclude).__name__}")
        counts[0] = counts[1] = 0
        if type(peers) is dict:
            while PyDict_Next(peers, &pos, &key, &value):
                _offer(<Peer?><object>value, frame, exclude, counts, failed)
        else:
            values = peers.values() if isinstance(peers, _Mapping) else peers
            for obj in values:
                _offer(<Peer?>obj, frame, exclude, counts, failed)
        self._fanouts += 1
        self._delivered += counts[0]
        self._dropped += counts[1]
        self._failed += len(failed)
        self._bytes_queued += counts[0] * PyBytes_GET_SIZE(frame)
        return counts[0], counts[1], failed

    def stats(self):
        """The counters, since the hub was made; the keys and their meaning are
        those of the Python twin's ``Hub.stats``."""
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


cdef inline int _offer(Peer peer, bytes frame, object exclude, Py_ssize_t *counts,
                       list failed) except -1:
    """One member of a fan-out: skip if excluded, else queue and count."""
    if exclude is not None and PySet_Contains(exclude, peer.conn_id):
        return 0
    cdef int status = peer._send(frame)
    if status == 2:
        failed.append(peer.conn_id)
    else:
        counts[status] += 1
    return 0
