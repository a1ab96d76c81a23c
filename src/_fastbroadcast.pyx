# cython: language_level=3, freethreading_compatible=False
"""C fan-out for reinhardt_ws rooms (private: import ``reinhardt_ws`` instead).

Line-for-line counterpart of ``reinhardt_ws/_fastbroadcast_py.py``; read that
module's docstring for the model (Hub per loop, Peer per connection, one coalesced
``sendmsg`` per connection per event-loop iteration, one shared ``bytes`` frame per
broadcast, the slow-consumer rule about backlog, the hub's counters).  Everything
the twin does, this does, in the same order, with one difference of means, not
of promise: on Linux the held flush (``flush_interval``) waits on a timerfd, to
the nanosecond, where the twin uses ``loop.call_at`` (whose uvloop timers count
whole milliseconds and may fire up to one early; neither ever fires late by
design).  What does not run per frame (the descriptor a peer may write to, the
validation of its limits) is the selector's, ``reinhardt_ws/_fanout.py``.

``Listener`` is the counterpart of ``reinhardt_ws/_listener.py``'s
``ConnectionListener``: the same calls into the connection for every frame,
and one shortcut, for a whole text or binary message in one plain frame while
the connection takes messages as they come, which builds the message here (what
the connection's ``_on_data_frame`` and the assembler would do) and hands it to
``_deliver``.  It reads picows' frame and transport structures directly, so the
selector uses it only with the picows release it was compiled against
(``PICOWS_VERSION``).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize
from cpython.dict cimport PyDict_Next
from cpython.number cimport PyNumber_Index
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.object cimport PyObject, PyObject_GenericSetAttr
from cpython.ref cimport Py_DECREF, Py_INCREF
from cpython.set cimport PySet_Contains
from libc.errno cimport errno
from libc.string cimport memcpy
from libc.string cimport strerror
from cpython.unicode cimport PyUnicode_DecodeUTF8
from picows.picows cimport WSFrame, WSListener, WSMsgType, WSTransport

cdef extern from "_fastbroadcast_compat.h":
    ctypedef struct rws_iovec:
        void *iov_base
        size_t iov_len
    int RWS_HAVE_DIRECT
    Py_ssize_t rws_sendv(int fd, rws_iovec *iov, int n) nogil
    void rws_prefetch(const void *p) nogil
    object rws_descr_get(object descr, object obj)
    object rws_call_unbound(object func, object obj)
    int rws_would_block(int err) nogil
    int RWS_HAVE_TIMERFD
    double rws_monotonic() nogil
    int rws_timer_new() nogil
    int rws_timer_set(int fd, double deadline) nogil
    void rws_timer_drain(int fd) nogil
    void rws_timer_close(int fd) nogil
    const char *RWS_PICOWS_VERSION

from collections.abc import Mapping as _Mapping
from inspect import getattr_static as _getattr_static
from weakref import ref as _weakref

from reinhardt_ws.protocol.messages import CloseCode as _CloseCode
from reinhardt_ws.protocol.messages import Message as _Message
from reinhardt_ws.protocol.messages import MessageType as _MessageType

__all__ = ["DELIVERED", "DROPPED", "FAILED", "IMPLEMENTATION", "PICOWS_VERSION", "Hub",
           "Listener", "Peer", "build_frame"]

IMPLEMENTATION = "cython"
#: The picows release whose structures ``Listener`` was compiled against.
PICOWS_VERSION = RWS_PICOWS_VERSION.decode("ascii")

DELIVERED = 0
DROPPED = 1
FAILED = 2

cdef enum:
    IOV_CHUNK = 256
    # Frames a peer holds without a heap array (one broadcast burst of a loop
    # iteration usually fits).
    INLINE_FRAMES = 8
    # Up to this many bytes, a queue of several frames is copied into one buffer
    # and written with one send(): the kernel copies one segment instead of many
    # (what the coalesced floor does).  Larger queues go by sendmsg's iovecs.
    COALESCE_MAX = 16384

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
        # Declared in the order they are touched: what every frame of a fan-out
        # reads and writes (flags, sizes, the queue) shares the first cache lines
        # after the object header; what only the flush reads comes after.
        readonly bint closed
        readonly bint failed
        readonly bint paused
        readonly bint drop_slow
        readonly bint over_limit
        bint _scheduled
        bint _held
        readonly Py_ssize_t pending_size
        Py_ssize_t _transport_size
        readonly Py_ssize_t max_write_buffer
        # The queue: owned references to frames, in order; _q is _inline until
        # a queue outgrows it.  No Python list: nothing to allocate or free per
        # flush, and one cache line less to touch per member.
        Py_ssize_t _qlen
        Py_ssize_t _qcap
        PyObject **_q
        PyObject *_inline[INLINE_FRAMES]
        Hub _hub
        int _fd
        object _ws
        # The transport itself, not its bound methods: calling a method on it
        # touches the transport only, where three bound-method objects were three
        # more cache misses per member per flush (perf showed them dominating).
        object _transport
        # What the flush asks each time, found once on the types (see
        # _type_attribute): saves an attribute lookup per question per flush.
        object _is_closing_f
        object _buffer_size_f
        object _close_sent_d
        readonly str conn_id
        object _on_overflow
        object _on_failure

    def __cinit__(self):
        self._q = self._inline
        self._qlen = 0
        self._qcap = INLINE_FRAMES

    def __dealloc__(self):
        self._release_queue()

    def __init__(self, Hub hub not None, transport, ws, int fd, str conn_id not None,
                 Py_ssize_t max_write_buffer, bint drop_slow, on_overflow, on_failure):
        self._hub = hub
        self._ws = ws
        self._transport = transport
        self._is_closing_f = _type_attribute(transport, "is_closing")
        self._buffer_size_f = _type_attribute(transport, "get_write_buffer_size")
        self._close_sent_d = _type_attribute(ws, "is_close_frame_sent") if ws is not None else None
        self._fd = fd if RWS_HAVE_DIRECT else -1
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

    # -- the queue ------------------------------------------------------------
    cdef void _release_queue(self):
        """Drop every queued frame and go back to the inline array."""
        cdef Py_ssize_t i
        cdef PyObject **q = self._q
        cdef Py_ssize_t n = self._qlen
        self._q = self._inline
        self._qlen = 0
        self._qcap = INLINE_FRAMES
        for i in range(n):
            Py_DECREF(<object>q[i])
        if q != self._inline:
            PyMem_Free(q)

    cdef int _append(self, bytes frame) except -1:
        cdef PyObject **grown
        cdef Py_ssize_t cap
        if self._qlen == self._qcap:
            cap = self._qcap * 2
            grown = <PyObject **>PyMem_Malloc(cap * sizeof(PyObject *))
            if grown == NULL:
                raise MemoryError()
            memcpy(grown, self._q, self._qlen * sizeof(PyObject *))
            if self._q != self._inline:
                PyMem_Free(self._q)
            self._q = grown
            self._qcap = cap
        Py_INCREF(frame)
        self._q[self._qlen] = <PyObject *>frame
        self._qlen += 1
        return 0

    cdef inline object _closing_now(self):
        if self._is_closing_f is not None:
            return rws_call_unbound(self._is_closing_f, self._transport)
        return self._transport.is_closing()

    cdef inline object _close_sent(self):
        if self._close_sent_d is not None:
            return rws_descr_get(self._close_sent_d, self._ws)
        return self._ws.is_close_frame_sent

    cdef inline object _buffer_size(self):
        if self._buffer_size_f is not None:
            return rws_call_unbound(self._buffer_size_f, self._transport)
        return self._transport.get_write_buffer_size()

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
        cdef int status = self._send(frame, False, 0.0)
        cdef Hub hub = self._hub
        if status == 0:
            hub._delivered += 1
            hub._bytes_queued += PyBytes_GET_SIZE(frame)
        elif status == 1:
            hub._dropped += 1
        else:
            hub._failed += 1
        return status

    cdef int _send(self, bytes frame, bint held, double deadline) except -1:
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
                self._hub._get_loop().call_soon(self._on_overflow)
                return 1
        self.over_limit = False
        self._enqueue(frame, size, held, deadline)
        return 0

    cdef inline int _enqueue(self, bytes frame, Py_ssize_t size, bint held,
                             double deadline) except -1:
        """Append to the queue.  The first frame of an iteration schedules the
        flush; with *held* (a fan-out with a flush interval) the first frame arms
        the hub's held flush instead, to run by *deadline* (the hub's clock, see
        Hub._now)."""
        self._append(frame)
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
        self._enqueue(frame, size, False, 0.0)
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
            buffered = self._buffer_size()
            if buffered == 0 and self.pending_size:
                self._flush()
                buffered = self._buffer_size()
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
            return <Py_ssize_t>self._buffer_size() + self.pending_size
        except Exception:  # transport already gone
            return self.pending_size

    # -- writing ------------------------------------------------------------
    def flush(self):
        """Write everything queued, now, in order (one ``sendmsg`` when possible)."""
        self._flush()

    cdef int _flush(self) except -1:
        cdef Py_ssize_t count = self._qlen
        if count == 0:
            return 0
        # Detach the queue first (whatever the transport calls back finds an
        # empty one): a small queue is copied to the stack, a heap one is taken.
        cdef PyObject *local[INLINE_FRAMES]
        cdef PyObject **frames
        cdef PyObject **heap = NULL
        cdef Py_ssize_t i
        if self._q == self._inline:
            memcpy(local, self._inline, count * sizeof(PyObject *))
            frames = local
        else:
            heap = frames = self._q
        self._q = self._inline
        self._qlen = 0
        self._qcap = INLINE_FRAMES
        self.pending_size = 0
        try:
            if self.failed:
                return 0
            if self._ws is not None and self._close_sent():
                # picows closed the connection itself (a protocol error it
                # detected): nothing may follow its close frame.
                self.closed = True
                return 0
            try:
                self._write_out(frames, count)
            except Exception as exc:  # OSError, or whatever the transport raised
                self._fail(exc)
        finally:
            for i in range(count):
                Py_DECREF(<object>frames[i])
            if heap != NULL:
                PyMem_Free(heap)
        return 0

    cdef int _write_out(self, PyObject **frames, Py_ssize_t count) except -1:
        cdef rws_iovec iov[IOV_CHUNK]
        cdef Py_ssize_t start = 0
        cdef Py_ssize_t cnt, i, j, sent, flen, total
        cdef int err
        cdef object frame
        cdef char *buf
        cdef Hub hub = self._hub
        if self._closing_now():  # closed by someone else: no more bytes
            self._fail(None)
            return 0
        hub._flushes += 1
        if self._fd >= 0 and self._buffer_size() == 0:
            self._transport_size = 0
            while start < count:
                cnt = count - start
                if cnt > IOV_CHUNK:
                    cnt = IOV_CHUNK
                total = 0
                for i in range(cnt):
                    iov[i].iov_base = PyBytes_AS_STRING(<object>frames[start + i])
                    iov[i].iov_len = <size_t>PyBytes_GET_SIZE(<object>frames[start + i])
                    total += <Py_ssize_t>iov[i].iov_len
                hub._syscalls += 1
                if cnt > 1 and total <= COALESCE_MAX:
                    # One segment for the kernel to copy: the frames side by side.
                    buf = hub._scratch
                    j = 0
                    for i in range(cnt):
                        memcpy(buf + j, iov[i].iov_base, iov[i].iov_len)
                        j += <Py_ssize_t>iov[i].iov_len
                    hub._one.iov_base = buf
                    hub._one.iov_len = <size_t>total
                    sent = rws_sendv(self._fd, &hub._one, 1)
                else:
                    sent = rws_sendv(self._fd, iov, <int>cnt)
                if sent < 0:
                    err = errno
                    # As in asyncio's transports, every other error is fatal.
                    if not rws_would_block(err):
                        _raise_os_error(err)
                    sent = 0
                # Walk past what the kernel took; hand the rest to the transport.
                for i in range(cnt):
                    flen = <Py_ssize_t>iov[i].iov_len
                    if sent >= flen:
                        sent -= flen
                        start += 1
                        continue
                    if sent:
                        frame = <object>frames[start]
                        hub._transport_writes += 1
                        self._transport.write(PyBytes_FromStringAndSize(
                            PyBytes_AS_STRING(frame) + sent, flen - sent))
                        sent = 0
                        start += 1
                    hub._transport_writes += count - start
                    for j in range(start, count):
                        self._transport.write(<object>frames[j])
                    self._transport_size = self._buffer_size()
                    return 0
            return 0
        hub._transport_writes += count
        for i in range(count):
            self._transport.write(<object>frames[i])
        self._transport_size = self._buffer_size()
        return 0

    cdef void _drop_pending(self):
        self._release_queue()
        self.pending_size = 0

    cdef int _fail(self, exc) except -1:
        if self.failed:
            return 0
        self.failed = True
        self._drop_pending()
        self._hub._write_failures += 1
        self._hub._get_loop().call_soon(self._on_failure, exc)
        return 0

    def write_now(self, bytes frame=None):
        """Flush the queue and then *frame* (if given) synchronously, in order.
        A closed or failed peer ignores *frame*."""
        if frame is not None:
            if self.closed or self.failed:
                return
            self._append(frame)
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
    a held flush for fan-outs with a flush interval, and the counters of
    everything its fan-outs and peers did.

    The held flush's timer is a timerfd (Linux; made at the first held fan-out,
    watched with ``loop.add_reader`` only while armed, closed with the hub), or
    ``loop.call_at`` where there is none or it cannot be had.  The hub holds its
    loop weakly: the registry of hubs is keyed weakly by the loop."""

    cdef:
        # A weak reference: the hub registry (``_fanout.get_hub``) is keyed
        # weakly by the loop, and a strong one here would keep every loop that
        # ever had a hub (and the hub) alive for good.
        object _loop_ref
        list _dirty
        bint _flush_scheduled
        object _flush_cb
        # Peers with frames held by a fan-out's flush interval, and the timer
        # that writes them: a timerfd where there is one (_use_timerfd; its
        # deadline on CLOCK_MONOTONIC, see _fastbroadcast_compat.h), else a
        # loop.call_at handle (the deadline on the loop's clock).
        list _held_peers
        bint _armed
        double _held_deadline
        object _held_handle
        object _held_cb
        bint _use_timerfd
        int _timer_fd
        bint _timer_watched
        object _timer_cb
        rws_iovec _one
        char _scratch[COALESCE_MAX]
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
        self._loop_ref = _weakref(loop)
        self._dirty = []
        self._flush_scheduled = False
        self._flush_cb = self._flush_soon
        self._held_peers = []
        self._armed = False
        self._held_handle = None
        self._held_deadline = 0.0
        self._held_cb = self._flush_held
        self._use_timerfd = RWS_HAVE_TIMERFD
        self._timer_fd = -1
        self._timer_watched = False
        self._timer_cb = self._on_timer
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
        """The hub's event loop, or None once it has been garbage-collected."""
        return self._loop_ref()

    cdef object _get_loop(self):
        loop = self._loop_ref()
        if loop is None:
            raise RuntimeError("the fan-out hub's event loop is gone")
        return loop

    cdef int _schedule(self) except -1:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._get_loop().call_soon(self._flush_cb)
        return 0

    def __cinit__(self):
        self._timer_fd = -1

    def __dealloc__(self):
        if self._timer_fd >= 0:
            rws_timer_close(self._timer_fd)

    cdef double _now(self) except? -1.0:
        """The clock of the held flush's deadlines: CLOCK_MONOTONIC with the
        timerfd, else the loop's."""
        if self._use_timerfd:
            return rws_monotonic()
        return <double>self._get_loop().time()

    cdef int _arm(self, double deadline) except -1:
        """Make sure the held flush runs by *deadline* (the clock of ``_now``)."""
        if self._armed:
            if self._held_deadline <= deadline:
                return 0
            if self._held_handle is not None:
                self._held_handle.cancel()  # a shorter interval than the armed one
                self._held_handle = None
        self._armed = False
        if self._use_timerfd:
            try:
                self._arm_timerfd(deadline)
                self._held_deadline = deadline
                self._armed = True
                return 0
            except Exception:
                # No timerfd to be had (descriptors exhausted, a loop without
                # add_reader): from now on, the loop's timers.
                self._drop_timerfd()
                deadline = <double>self._get_loop().time() + (deadline - rws_monotonic())
        self._held_handle = self._get_loop().call_at(deadline, self._held_cb)
        self._held_deadline = deadline
        self._armed = True
        return 0

    cdef int _arm_timerfd(self, double deadline) except -1:
        if self._timer_fd < 0:
            self._timer_fd = rws_timer_new()
            if self._timer_fd < 0:
                _raise_os_error(errno)
        if rws_timer_set(self._timer_fd, deadline) < 0:
            _raise_os_error(errno)
        if not self._timer_watched:
            self._get_loop().add_reader(self._timer_fd, self._timer_cb)
            self._timer_watched = True
        return 0

    cdef int _unwatch_timer(self) except -1:
        if self._timer_watched:
            self._timer_watched = False
            loop = self._loop_ref()
            if loop is not None and not loop.is_closed():
                loop.remove_reader(self._timer_fd)
        return 0

    cdef void _drop_timerfd(self):
        self._use_timerfd = False
        try:
            self._unwatch_timer()
        except Exception:
            pass
        if self._timer_fd >= 0:
            rws_timer_close(self._timer_fd)
            self._timer_fd = -1

    cdef int _disarm(self) except -1:
        if not self._armed:
            return 0
        self._armed = False
        if self._held_handle is not None:
            self._held_handle.cancel()
            self._held_handle = None
        if self._timer_fd >= 0:
            rws_timer_set(self._timer_fd, -1.0)
            self._unwatch_timer()
        return 0

    def _on_timer(self):
        """The timerfd is readable: its deadline passed (or it was re-armed for a
        later one after it fired, and this is what is left of that)."""
        rws_timer_drain(self._timer_fd)
        if self._armed and rws_monotonic() < self._held_deadline:
            return  # armed again, for later: wait for that expiry
        self._unwatch_timer()
        if self._armed:
            self._flush_held()

    def _flush_soon(self):
        """The iteration's flush (scheduled with ``call_soon``)."""
        self._flush_scheduled = False
        cdef list dirty = self._dirty
        self._dirty = []
        _flush_peers(dirty, False)

    def _flush_held(self):
        """The held flush (the timer armed by a fan-out with a flush interval)."""
        self._armed = False
        self._held_handle = None
        cdef list held = self._held_peers
        self._held_peers = []
        _flush_peers(held, True)

    def flush(self):
        """Write out every peer that has something queued, held frames included."""
        self._disarm()
        self._flush_soon()
        self._flush_held()

    def fanout(self, peers, bytes frame not None, exclude=None, double flush_interval=0.0):
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
        cdef Py_ssize_t counts[2]
        cdef list failed = []
        cdef Py_ssize_t pos = 0
        cdef PyObject *key
        cdef PyObject *value
        if exclude is not None and type(exclude) is not frozenset:
            raise TypeError(f"exclude must be a frozenset or None, not "
                            f"{type(exclude).__name__}")
        if not 0.0 <= flush_interval < 1e300:
            raise ValueError(f"flush_interval must be finite and not negative, "
                             f"not {flush_interval!r}")
        counts[0] = counts[1] = 0
        # One deadline for the whole fan-out, read before its first member: no
        # member's held frames wait longer than the interval.
        cdef bint held = flush_interval > 0.0
        cdef double deadline = self._now() + flush_interval if held else 0.0
        if type(peers) is dict:
            while PyDict_Next(peers, &pos, &key, &value):
                _offer(<Peer?><object>value, frame, exclude, counts, failed, held, deadline)
        else:
            values = peers.values() if isinstance(peers, _Mapping) else peers
            for obj in values:
                _offer(<Peer?>obj, frame, exclude, counts, failed, held, deadline)
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


cdef int _raise_os_error(int err) except -1:
    """Raise the OSError of *err* (an errno value), as the os module would."""
    raise OSError(err, strerror(err).decode("utf-8", "replace"))


cdef object _type_attribute(obj, str name):
    """*name* as *obj*'s type defines it (a function, or a data descriptor such
    as a Cython attribute), when asking the type gives what ``getattr(obj,
    name)`` gives; else None (an instance attribute, a static or class method,
    a property, nothing): the peer then asks the object itself."""
    raw = _getattr_static(obj, name, None)
    if raw is None or isinstance(raw, (staticmethod, classmethod, property)):
        return None
    instance_dict = getattr(obj, "__dict__", None)
    if instance_dict is not None and name in instance_dict:
        return None
    return raw


cdef int _flush_peers(list peers, bint held) except -1:
    """Flush each peer of *peers* (the iteration's dirty list, or the held list).

    Each write is a syscall whose kernel work evicts the caches, so the objects
    of the next members are prefetched while the current one is written: the
    member after next (its Peer), and the next one's transport and picows
    transport (what its flush reads).
    """
    cdef Py_ssize_t i, n = len(peers)
    cdef Peer peer, nxt
    for i in range(n):
        if i + 2 < n:
            rws_prefetch(<PyObject *>peers[i + 2])
        if i + 1 < n:
            nxt = <Peer>peers[i + 1]
            rws_prefetch(<PyObject *>nxt._transport)
            rws_prefetch(<PyObject *>nxt._ws)
        peer = <Peer>peers[i]
        if held:
            if not peer._held:
                continue
            peer._held = False
            if peer._scheduled:  # this iteration's flush writes it
                continue
        else:
            peer._scheduled = False
        peer._flush()
    return 0


cdef inline int _offer(Peer peer, bytes frame, object exclude, Py_ssize_t *counts,
                       list failed, bint held, double deadline) except -1:
    """One member of a fan-out: skip if excluded, else queue and count."""
    if exclude is not None and PySet_Contains(exclude, peer.conn_id):
        return 0
    cdef int status = peer._send(frame, held, deadline)
    if status == 2:
        failed.append(peer.conn_id)
    else:
        counts[status] += 1
    return 0


# -- the frame listener (counterpart of reinhardt_ws/_listener.py) -------------------

cdef object _new_object = object.__new__
cdef object _TEXT_TYPE = _MessageType.TEXT
cdef object _BINARY_TYPE = _MessageType.BINARY
cdef object _PROTOCOL_ERROR = _CloseCode.PROTOCOL_ERROR


cdef class Listener(WSListener):
    """picows listener of one connection: frames in, events out (see the module
    docstring for its one shortcut)."""

    cdef public object conn

    def __init__(self, conn):
        self.conn = conn

    cpdef on_ws_connected(self, WSTransport transport):
        self.conn._on_connected(transport)

    cpdef on_ws_frame(self, WSTransport transport, WSFrame frame):
        conn = self.conn
        conn._rx_seen = True  # keep-alive: not silent (see _keepalive)
        closing = conn._closing
        if closing.received:
            return  # nothing may follow a close frame (picows still delivers it)
        if transport.is_close_frame_sent and not closing.sent:
            conn._on_transport_close()
        cdef WSMsgType op = frame.msg_type
        cdef int rsv = frame.rsv1 << 2 | frame.rsv2 << 1 | frame.rsv3  # RSV1 = 4: deflate
        if op == WSMsgType.TEXT or op == WSMsgType.BINARY:
            if (frame.fin and rsv == 0 and not closing.sent and conn._parked is None
                    and not conn._reading_paused and not conn._dispatch_stopped):
                if _deliver_whole(conn, op, frame):
                    return
            conn._on_data_frame(<int>op, frame.fin, rsv, frame.get_payload_as_bytes())
        elif op == WSMsgType.CONTINUATION:
            conn._on_data_frame(0, frame.fin, rsv, frame.get_payload_as_bytes())
        elif rsv:
            conn._fail(_PROTOCOL_ERROR, "reserved bits set on a control frame")
        elif op == WSMsgType.PING:
            conn._on_ping(frame.get_payload_as_bytes())
        elif op == WSMsgType.PONG:
            conn._on_pong(frame.get_payload_as_bytes())
        elif op == WSMsgType.CLOSE:
            if frame.payload_size >= 2:
                conn._on_close_frame(<int>frame.get_close_code(),
                                     frame.get_close_reason() or "")
            else:
                conn._on_close_frame(None, "")

    cpdef on_ws_disconnected(self, WSTransport transport):
        self.conn._on_lost()

    cpdef pause_writing(self):
        self.conn._on_pause_writing()

    cpdef resume_writing(self):
        self.conn._on_resume_writing()


cdef bint _deliver_whole(object conn, WSMsgType op, WSFrame frame) except -1:
    """A whole message in one plain frame, to a connection that takes messages as
    they come: what the assembler's first-frame path and ``text_message`` /
    ``binary_message`` do, then ``conn._deliver``.  False (nothing done) when the
    assembler has a message in progress (its error to raise), the message is over
    the size limit (1009) or its text is not UTF-8 (1007): the caller then takes
    the connection's own path."""
    assembler = conn._assembler
    if assembler._opcode != -1:
        return False
    limit = assembler._max
    if limit is not None and frame.payload_size > limit:
        return False
    if op == WSMsgType.TEXT:
        try:
            data = PyUnicode_DecodeUTF8(frame.payload_ptr, frame.payload_size, NULL)
        except UnicodeDecodeError:
            return False
        kind = _TEXT_TYPE
        payload = frame.get_payload_as_bytes()
    else:
        kind = _BINARY_TYPE
        payload = data = frame.get_payload_as_bytes()
    message = _new_object(_Message)
    # Message is immutable (its __setattr__ raises): set its slots as its own
    # package-internal constructors do.
    PyObject_GenericSetAttr(message, "type", kind)
    PyObject_GenericSetAttr(message, "data", data)
    PyObject_GenericSetAttr(message, "code", None)
    PyObject_GenericSetAttr(message, "reason", "")
    PyObject_GenericSetAttr(message, "_payload", payload)
    conn._deliver(message)
    return True
