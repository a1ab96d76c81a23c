"""One WebSocket connection: :class:`WebSocketConnection`.

picows parses frames; :mod:`reinhardt_ws._listener` forwards them here, and the
connection keeps the RFC 6455 promises picows leaves to its user with the
sans-I/O pieces of :mod:`reinhardt_ws.protocol`: the assembler checks reserved
bits, fragmentation order, UTF-8 and the whole-message size; the closing
handshake state machine decides close codes and states; the connection answers
pings within its write budget and hands whole messages either to a
:class:`~reinhardt_ws.WebSocketHandler` (server side) or to ``recv()`` (client
side).  Sending on the server side goes through the fan-out :class:`Peer`, so a
connection's direct sends and the room broadcasts that reach it share one
ordered, coalesced write path.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import logging
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, cast

from multidict import CIMultiDict, CIMultiDictProxy
from picows import WSCloseCode, WSMsgType

from . import _fanout
from ._keepalive import KEEPALIVE_PAYLOAD, Keepalive
from ._logging import client_fault
from .errors import AuthenticationFailed, ConnectionClosed, ProtocolError, SendError
from .options import ConnectionOptions, keepalive_periods
from .protocol.assembler import MessageAssembler
from .protocol.closing import CloseState, ClosingHandshake, PeerClose, fit_reason
from .protocol.extensions.permessage_deflate import PerMessageDeflate, build_compressed_frame
from .protocol.handshake import head_header_items
from .protocol.limits import TokenBucket
from .protocol.messages import (
    OPCODE_BINARY,
    OPCODE_CLOSE,
    OPCODE_PING,
    OPCODE_PONG,
    OPCODE_TEXT,
    CloseCode,
    Message,
    MessageType,
    WebSocketMessage,
    encode_close_payload,
    frame_parts,
)

if TYPE_CHECKING:
    from ._fastbroadcast_py import Peer
    from .handler import WebSocketHandler

__all__ = ["WebSocketConnection"]

logger = logging.getLogger("reinhardt_ws")

#: Seconds a connection closed for not answering our keep-alive ping has to take
#: its close frame before TCP is dropped (as picows' own keep-alive does).
_DEAD_PEER_LINGER = 0.01


class ConnectionOwner(Protocol):
    """What a server offers its connections: to be registered once open, and
    forgotten once gone; and counters of the messages received (metrics)."""

    _messages_received: int
    _bytes_received: int
    #: Where workers linger between messages (None: they do not; see _run_handler).
    _lingering: Lingering | None

    def _adopt(self, conn: WebSocketConnection) -> None: ...
    def _forget(self, conn: WebSocketConnection) -> None: ...
    def _note(self, limit: str) -> None: ...


class WebSocketConnection:
    """An open (or closed) WebSocket connection.

    Server connections are handed to your :class:`~reinhardt_ws.WebSocketHandler`;
    client connections come from :func:`~reinhardt_ws.connect`.

    Sending: every ``send*`` coroutine returns once the frame is handed to the
    connection's write path, and first *waits* while the transport's buffer is
    above its high-water mark (backpressure).  Sending on a closed or closing
    connection raises :class:`~reinhardt_ws.ConnectionClosed`.  On the server side
    frames sent within one event-loop iteration, by ``send`` or by room
    broadcasts, leave in one write, in call order.
    """

    __slots__ = (
        "__weakref__",
        "_accepted",
        "_assembler",
        "_close_handle",
        "_close_listeners",
        "_closed_fut",
        "_closing",
        "_connect_done",
        "_context",
        "_disconnect_done",
        "_disconnect_watch",
        "_dispatch_stopped",
        "_done",
        "_drain_waiters",
        "_extension",
        "_handler",
        "_headers",
        "_inbox",
        "_inbox_bytes",
        "_inline_budget",
        "_ka_deadline",
        "_ka_due",
        "_lost",
        "_opts",
        "_owner",
        "_parked",
        "_peer",
        "_peer_loop",
        "_pings",
        "_rate",
        "_reading_paused",
        "_recv_waiter",
        "_rx_seen",
        "_user_data",
        "_wakeup",
        "_worker",
        "_write_paused",
        "_ws",
        "id",
        "is_client",
        "path",
        "path_params",
        "remote_address",
        "subprotocol",
        "user",
    )

    id: str
    path: str
    subprotocol: str | None
    remote_address: Any
    is_client: bool
    user: Any
    path_params: dict[str, str]

    def __init__(self, *, path: str, headers: Mapping[str, str] | bytes, subprotocol: str | None,
                 opts: ConnectionOptions, is_client: bool,
                 handler: WebSocketHandler | None = None,
                 server: ConnectionOwner | None = None,
                 extension: PerMessageDeflate | None = None) -> None:
        self.id = uuid.uuid4().hex
        self.path = path
        # A server connection keeps its request head as the bytes that came (see
        # the headers property); a client its response's headers.
        self._headers = headers
        self.subprotocol = subprotocol
        self.remote_address = None
        self.is_client = is_client
        #: The identity the handshake hook or ``authenticate`` established (None: anonymous).
        self.user = None
        #: Parameters the router extracted from the path (``/rooms/{room}``).
        self.path_params = {}
        self._user_data: dict[str, Any] | None = None  # idle memory: see user_data
        self._opts = opts
        self._handler = handler
        self._owner = server
        self._ws: Any = None
        self._peer: Peer | None = None
        self._peer_loop: asyncio.AbstractEventLoop | None = None  # rooms: the peer's loop
        self._closing = ClosingHandshake()
        self._extension = extension  # permessage-deflate, when negotiated
        self._assembler = MessageAssembler(opts.max_message_size, extension)
        self._close_handle: asyncio.TimerHandle | None = None
        self._closed_fut: asyncio.Future[None] | None = None
        self._close_listeners: list[Callable[[WebSocketConnection], object]] | None = None
        # Idle memory: the inbox deque (~760 bytes), the drain waiters and the
        # pings are made when first needed, never for a connection that stays idle.
        self._inbox: collections.deque[Message] = _NO_INBOX
        self._inbox_bytes = 0
        # Messages on_message may still take at once (an eager task, in the read
        # callback) before one goes through the worker task, which yields to the
        # other connections.
        self._inline_budget = opts.max_queue
        self._parked: collections.deque[tuple[int, bool, int, bytes]] | None = None
        self._worker: asyncio.Task[None] | None = None
        # The context every callback of this connection runs in (see _start_worker).
        self._context: contextvars.Context | None = None
        # The lingering worker's wait for the next message (see _run_handler).
        self._wakeup: asyncio.Future[bool] | None = None
        self._connect_done = False
        self._accepted = False
        self._disconnect_done = False
        self._disconnect_watch: asyncio.Task[None] | None = None
        # Queued messages no longer go to on_message: a callback failed, or the
        # server decided to close (but for a shutdown).
        self._dispatch_stopped = False
        self._lost = False
        self._done: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._write_paused = False
        self._drain_waiters: list[asyncio.Future[None]] | None = None
        self._recv_waiter: asyncio.Future[None] | None = None
        self._pings: list[tuple[bytes, float, asyncio.Future[float]]] | None = None
        # Keep-alive (_keepalive.Keepalive sweeps these): a frame came in since the
        # last sweep; when to ping if none comes; when our ping's pong is due (0.0:
        # no ping out).
        self._rx_seen = True
        self._ka_due = 0.0
        self._ka_deadline = 0.0
        rate = getattr(opts, "message_rate", None)
        self._rate = (TokenBucket(rate, getattr(opts, "message_burst", None) or 1.0,
                                  time.monotonic()) if rate else None)

    @property
    def headers(self) -> Mapping[str, str]:
        """The headers of the opening handshake: the request's on a server
        connection, the 101 response's on a client connection.  Case-insensitive
        and read-only (a ``multidict.CIMultiDictProxy``; ``getall()`` gives every
        value of a repeated field).

        A server connection keeps its request head as the bytes that came (about
        640 bytes for a browser's request) rather than parsed (about 3.4 KiB), and
        parses it on each access: read what you need once, in ``on_connect`` or
        ``authenticate``, rather than on every message.
        """
        kept = self._headers
        if isinstance(kept, bytes):
            return CIMultiDictProxy(CIMultiDict(head_header_items(kept)))
        return kept

    @property
    def user_data(self) -> dict[str, Any]:
        """Free for the application: per-connection data (user id, session...).
        A dict, made on first use (an idle connection that never needs one does
        not pay for it); assignable."""
        data = self._user_data
        if data is None:
            data = self._user_data = {}
        return data

    @user_data.setter
    def user_data(self, value: dict[str, Any]) -> None:
        self._user_data = value

    # -- state ----------------------------------------------------------------
    @property
    def is_closed(self) -> bool:
        """True once a close frame was sent or received, or the socket is gone."""
        return not self._closing.is_open

    @property
    def close_code(self) -> int | None:
        """The close code that ended (or is ending) the connection; None while open."""
        return self._closing.code

    @property
    def close_reason(self) -> str:
        """The close reason that goes with :attr:`close_code`."""
        return self._closing.reason

    def __repr__(self) -> str:
        state = ("open", "closing", "closed")[self._closing.state]
        # Without the query string: it may carry a token, and this goes to logs.
        return f"<WebSocketConnection {self.id[:8]} {self.path.partition('?')[0]!r} {state}>"

    def _closed_error(self) -> ConnectionClosed:
        code = self._closing.code
        return ConnectionClosed(code if code is not None else CloseCode.ABNORMAL_CLOSURE,
                                self._closing.reason)

    @property
    def extension(self) -> PerMessageDeflate | None:
        """The negotiated permessage-deflate codec (its ``params`` say what was
        agreed), or None when the connection sends and receives uncompressed."""
        return self._extension

    # -- the package-internal interface of rooms ---------------------------------
    def _room_peer(self) -> Peer | None:
        """The fan-out peer rooms queue frames on; None once the connection is
        closing or closed.  ``ValueError`` for a client connection (no rooms)."""
        if self.is_client:
            raise ValueError("only server-side connections can join rooms")
        if not self._closing.is_open or self._lost:
            return None
        return self._peer

    def _room_loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop this connection's fan-out peer runs on (None before it
        is connected, and for a client connection)."""
        return self._peer_loop

    # -- sending ----------------------------------------------------------------
    async def send(self, message: Message | WebSocketMessage | str | bytes | bytearray
                   | memoryview) -> None:
        """Send a :class:`Message`, a ``str`` (text), bytes (binary) or a
        :class:`WebSocketMessage` (its JSON, as text).

        A close message closes the connection (as :meth:`close`).  Raises
        :class:`ConnectionClosed` when the connection is closed or closing and
        :class:`SendError` for what cannot be sent.
        """
        if type(message) is Message:  # an echo or a relay: no conversion to make
            # Identity tests: hashing an Enum member is a Python-level call.
            kind = message.type
            data_opcode = (OPCODE_TEXT if kind is _TEXT_TYPE
                           else OPCODE_BINARY if kind is _BINARY_TYPE else 0)
            if data_opcode:
                if self._write_paused:
                    await self._wait_writable()
                self._send_frame(data_opcode, message._payload)
                return
        opcode, payload = frame_parts(message)
        if opcode == OPCODE_CLOSE:
            assert isinstance(message, Message)
            await self.close(message.code if message.code is not None else CloseCode.NORMAL,
                             message.reason)
            return
        if self._write_paused:
            await self._wait_writable()
        self._send_frame(opcode, payload)

    async def send_text(self, data: str) -> None:
        """Send a text message."""
        if not isinstance(data, str):
            raise SendError("send_text takes str")
        await self.send(data)

    async def send_binary(self, data: bytes | bytearray | memoryview) -> None:
        """Send a binary message."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise SendError("send_binary takes bytes")
        await self.send(data)

    async def send_json(self, obj: Any) -> None:
        """Send *obj* as JSON text (orjson); :class:`SendError` if it is not JSON-able."""
        try:
            message = Message.json(obj)
        except TypeError as exc:
            raise SendError(f"cannot encode as JSON: {exc}") from exc
        await self.send(message)

    async def ping(self, data: bytes = b"") -> float:
        """Send a ping and wait for its pong; return the round trip in seconds.

        A pong acknowledges its own ping and every earlier one.  Raises
        :class:`ConnectionClosed` if the connection closes first (including when
        the peer does not read and the ping would pass the write budget).
        """
        payload = bytes(data)
        if len(payload) > 125:
            raise SendError("ping payload is limited to 125 bytes")
        if not self._closing.is_open:
            raise self._closed_error()
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        if self._pings is None:
            self._pings = []
        self._pings.append((payload, time.monotonic(), fut))
        self._send_control(OPCODE_PING, payload)
        return await fut

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        if self._closing.state is not _OPEN:
            raise self._closed_error()
        peer = self._peer
        # permessage-deflate: data frames go compressed when that pays.
        extension = self._extension
        if extension is not None and opcode <= OPCODE_BINARY:
            wire = extension.encode(payload)
            if wire is not None:
                if peer is None:
                    self._ws.send(WSMsgType(opcode), wire, rsv1=True)
                elif peer.push(build_compressed_frame(opcode, wire)) != 0:
                    raise self._closed_error()
                return
        if peer is not None:
            if peer.push(_fanout.build_frame(opcode, payload)) != 0:
                raise self._closed_error()
        else:
            self._ws.send(WSMsgType(opcode), payload)

    def _buffered(self) -> int:
        """Bytes this connection holds for its peer: queued plus in the transport."""
        peer = self._peer
        if peer is not None:
            return int(peer.buffered_size())
        try:
            return int(self._ws.underlying_transport.get_write_buffer_size())
        except Exception:  # the transport is gone
            return 0

    def _send_control(self, opcode: int, payload: bytes) -> None:
        """A ping or pong, within the write budget: a peer that sends pings and
        never reads our pongs is not allowed to grow our memory.  Past the budget
        the connection stops reading and closes with 1008."""
        if self._buffered() + len(payload) + 2 > self._opts.max_write_buffer:
            self._note("control_budget")
            self._pause_reading()
            self._fail(CloseCode.POLICY_VIOLATION, "not reading: control frames over budget",
                       read_on=False)
            return
        self._send_frame(opcode, payload)

    async def _wait_writable(self) -> None:
        loop = asyncio.get_running_loop()
        while self._write_paused and self._closing.is_open:
            fut: asyncio.Future[None] = loop.create_future()
            if self._drain_waiters is None:
                self._drain_waiters = []
            self._drain_waiters.append(fut)
            await fut

    def _wake_drain_waiters(self) -> None:
        waiters = self._drain_waiters
        if waiters is None:
            return
        self._drain_waiters = None
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    # -- closing ---------------------------------------------------------------
    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Run the closing handshake with *code* and *reason*, then drop the socket.

        Waits for the peer's close frame up to the close timeout, then aborts.
        Returns once the connection is closed; idempotent.  ``ValueError`` for a
        code that may not be sent or a reason over 123 UTF-8 bytes.
        """
        encode_close_payload(int(code), reason)  # validate before anything happens
        self._start_close(int(code), reason)
        await self.wait_closed()

    async def wait_closed(self) -> None:
        """Wait until the socket is gone."""
        if self._lost:
            return
        if self._closed_fut is None:
            self._closed_fut = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._closed_fut)

    def _start_close(self, code: int, reason: str, *, read_on: bool = True,
                     shutdown: bool = False, linger: float | None = None) -> None:
        """Send our close frame (after everything queued) and arm the timeout.

        Once we decide to close, nothing queued or later is dispatched to the
        handler, except on server *shutdown*: messages received before it are
        still handled (within the shutdown timeout).  *read_on*: read again, so
        the peer's close frame is not stuck behind a full inbox (data is
        discarded from now on); False for a peer that must not be read (one that
        floods us while never reading).  *linger*: seconds before TCP is dropped if
        the peer's close frame has not come (default ``close_timeout``).
        """
        if self._lost or not self._closing.send(code, reason):
            return
        self._wake_drain_waiters()
        if self._closing.initiated and not shutdown:
            self._dispatch_stopped = True
            if self._handler is not None:
                self._drop_inbox()
        if read_on:
            self._resume_reading()
        peer = self._peer
        if peer is not None:
            peer.write_now()
            peer.close()
        try:
            self._ws.send_close(WSCloseCode(code) if code in _PICOWS_CODES else code,
                                reason.encode("utf-8"))
        except Exception:  # the transport is already gone
            logger.debug("close frame not sent", exc_info=True)
        self._close_handle = asyncio.get_running_loop().call_later(
            self._opts.close_timeout if linger is None else linger, self._abort)

    def _fail(self, code: int, reason: str, *, read_on: bool = True,
              linger: float | None = None) -> None:
        """Fail the connection (RFC 6455 section 7.1.7) with *code*."""
        if self._closing.is_open:
            client_fault(logger, "closing %s with %d: %s", self, code, reason)
        self._start_close(code, fit_reason(reason), read_on=read_on, linger=linger)

    def _abort(self) -> None:
        """Drop TCP now (the close timeout ran out, or the server is shutting down)."""
        self._close_handle = None
        if not self._lost and self._ws is not None:
            self._ws.disconnect(False)

    def _finish_close(self) -> None:
        """Both close frames have crossed: drop TCP (the server side closes first)."""
        if self._close_handle is not None:
            self._close_handle.cancel()
            self._close_handle = None
        self._ws.disconnect(True)

    def add_close_listener(self, callback: Callable[[WebSocketConnection], object]) -> None:
        """Call *callback(conn)* once, synchronously, when the socket is gone
        (before ``on_disconnect``).  Rooms use it to forget the connection."""
        if self._lost:
            callback(self)
        elif self._close_listeners is None:
            self._close_listeners = [callback]
        else:
            self._close_listeners.append(callback)

    def remove_close_listener(self, callback: Callable[[WebSocketConnection], object]) -> None:
        if self._close_listeners is None:
            return
        try:
            self._close_listeners.remove(callback)
        except ValueError:
            pass

    # -- the server's shutdown (package-internal) -----------------------------------
    async def _shutdown_handlers(self, timeout: float) -> None:
        """Wait until ``on_disconnect`` has run; cancel a callback still busy after
        *timeout* (``on_disconnect`` then runs all the same)."""
        if self._disconnect_done and self._worker is None:
            return
        if self._done is None:
            self._done = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(asyncio.shield(self._done), timeout)
        except (asyncio.TimeoutError, TimeoutError):
            worker = self._worker
            if worker is not None and not worker.done():
                logger.warning("handler of %s still busy after %.1fs; cancelling it",
                               self, timeout)
                worker.cancel()
                await asyncio.wait([self._done], timeout=1.0)

    # -- receiving (client side) ------------------------------------------------
    async def recv(self) -> Message:
        """The next message (client connections).

        Raises :class:`ConnectionClosed` once the connection is closed and every
        message received before the close has been returned.
        """
        if self._handler is not None:
            raise RuntimeError("server connections deliver messages to handler.on_message")
        while not self._inbox:
            if self._lost or self._closing.received:
                raise self._closed_error()
            if self._recv_waiter is not None:
                raise RuntimeError("recv() is already being awaited by another task")
            self._recv_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._recv_waiter
            finally:
                self._recv_waiter = None
        return self._take()

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Message]:
        while True:
            try:
                yield await self.recv()
            except ConnectionClosed:
                return

    def _wake_receiver(self) -> None:
        waiter = self._recv_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the inbox and inbound flow control -------------------------------------------
    def _deliver(self, message: Message) -> None:
        """A whole message arrived: queue it; stop reading past the inbox bounds
        (count and bytes; one message is always taken)."""
        rate = self._rate
        if rate is not None and not rate.take(time.monotonic()):
            self._note("message_rate")
            self._fail(CloseCode.POLICY_VIOLATION, "message rate exceeded")
            return
        size = len(message._payload)
        owner = self._owner
        if owner is not None:  # metrics: two integer additions per message
            owner._messages_received += 1
            owner._bytes_received += size
        inbox = self._inbox
        handler = self._handler
        if (_EAGER_TASKS and handler is not None and self._worker is None and not inbox
                and self._accepted and not self._dispatch_stopped and self._inline_budget):
            # Nothing is ahead of this message (no callback running, nothing
            # queued): on_message starts now, in an eager task (Python 3.12+), which
            # runs it up to its first suspension right here and is a task like any
            # other from its first line (current_task(), timeouts, cancellation).
            # Every max_queue-th message still goes through the worker, so one read
            # full of small messages cannot keep the loop from the other connections.
            self._inline_budget -= 1
            asyncio.Task(self._run_handler(message), loop=asyncio.get_running_loop(),
                         eager_start=True, context=self._callback_context())  # type: ignore[call-arg]
            return
        if inbox is _NO_INBOX:  # idle memory: the deque comes with the first message
            inbox = self._inbox = collections.deque()
        inbox.append(message)
        self._inbox_bytes += size
        opts = self._opts
        if len(inbox) >= opts.max_queue or self._inbox_bytes >= (opts.max_queue_bytes or 0):
            if not self._reading_paused:
                self._note("inbox_paused")
            self._pause_reading()
        if self._handler is None:
            self._wake_receiver()
        elif self._worker is None:
            self._start_worker()
        else:  # what _wake_worker(True) does, without one more call per message
            wakeup = self._wakeup
            if wakeup is not None:
                self._wakeup = None
                if not wakeup.done():
                    wakeup.set_result(True)

    def _wake_worker(self, more: bool) -> None:
        """End a lingering worker's wait: *more* (a message came, or the connection
        is gone) or not (it has been idle a whole linger period: it ends)."""
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            if not wakeup.done():
                wakeup.set_result(more)

    def _take(self) -> Message:
        message = self._inbox.popleft()
        self._inbox_bytes -= len(message._payload)
        if (self._parked is not None or self._reading_paused) and self._below_low_water():
            if self._parked is not None:
                self._unpark()
            if self._reading_paused and self._closing.is_open and self._parked is None:
                self._resume_reading()
        return message

    def _unpark(self) -> None:
        """Assemble parked frames until the inbox is over its bounds again.  They
        arrived before any close frame of the peer's, so they are still data; once
        we decided to close, the inbox (parked frames included) was dropped."""
        parked = self._parked
        assert parked is not None
        opts = self._opts
        while parked and len(self._inbox) < opts.max_queue and (
                self._inbox_bytes < (opts.max_queue_bytes or 0)):
            self._assemble(*parked.popleft())
        if not parked:
            self._parked = None

    def _below_low_water(self) -> bool:
        opts = self._opts
        return (len(self._inbox) <= opts.max_queue // 4
                and self._inbox_bytes <= (opts.max_queue_bytes or 0) // 4)

    def _drop_inbox(self) -> None:
        self._inbox = _NO_INBOX
        self._inbox_bytes = 0
        self._parked = None

    def _pause_reading(self) -> None:
        if not self._reading_paused and not self._lost:
            self._reading_paused = True
            self._ws.underlying_transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused:
            self._reading_paused = False
            if not self._lost:
                self._ws.underlying_transport.resume_reading()

    # -- delivery to the handler (server side) ------------------------------------
    if sys.version_info >= (3, 11):
        def _start_worker(self) -> None:
            self._worker = asyncio.get_running_loop().create_task(
                self._run_handler(), context=self._callback_context())
    else:  # no context= (each task runs in a copy of the current context)
        def _start_worker(self) -> None:
            self._worker = asyncio.get_running_loop().create_task(self._run_handler())

    def _callback_context(self) -> contextvars.Context:
        """The connection's context (Python 3.11+): every callback of the
        connection runs in it, whichever task runs the callback (an eager task, a
        worker, a lingering worker), so a context variable set in ``on_connect`` is
        seen by the later callbacks of the same connection and by no other
        connection's."""
        context = self._context
        if context is None:
            context = self._context = contextvars.copy_context()
        return context

    async def _run_handler(self, first: Message | None = None) -> None:
        """The worker task: on_connect, then the inbox, one on_message at a time;
        *first*: a message that nothing was ahead of, handled first (an eager task
        started by :meth:`_deliver`).

        Without eager tasks (Python 3.11) a worker that handled a message lingers
        once the inbox is empty: it waits for the next message instead of ending,
        so a conversation costs no new task per message (a task's creation was
        over a third of the receive path's own CPU).  A worker idle for a whole
        linger period ends (:class:`Lingering`): idle connections hold no task.
        """
        handler = self._handler
        assert handler is not None
        if first is not None:
            # An eager task runs before its creator could note it: it notes itself.
            self._worker = asyncio.current_task()
        fair_share = self._opts.max_queue
        handled = 0
        pristine: contextvars.Context | None = None
        try:
            if first is not None:
                try:
                    await handler.on_message(self, first)
                except Exception as exc:
                    self._handler_error("on_message", exc)
            elif not self._connect_done:
                self._connect_done = True
                if self._context is not None:
                    pristine = self._context.copy()
                if await self._authenticate():
                    self._accepted = True
                    try:
                        await handler.on_connect(self)
                    except Exception as exc:
                        self._handler_error("on_connect", exc)
            while True:
                while self._inbox:  # read each time: the inbox is made, or dropped, meanwhile
                    message = self._take()
                    if self._dispatch_stopped:
                        self._drop_inbox()
                        break
                    try:
                        await handler.on_message(self, message)
                    except Exception as exc:
                        self._handler_error("on_message", exc)
                    handled += 1
                    if handled % fair_share == 0:
                        # One socket read can queue hundreds of small messages; an
                        # on_message that never suspends must not starve the others.
                        await asyncio.sleep(0)
                owner = self._owner
                lingering = owner._lingering if owner is not None else None
                if (lingering is None or not handled or self._lost or self._inbox
                        or self._dispatch_stopped):
                    break
                loop = asyncio.get_running_loop()
                wakeup: asyncio.Future[bool] = loop.create_future()
                self._wakeup = wakeup
                lingering.waiting.add(self)
                if lingering.handle is None:
                    lingering.arm(loop)
                try:
                    more = await wakeup
                finally:
                    self._wakeup = None
                if not more and not self._inbox:
                    break
            if self._lost and not self._disconnect_done:
                await self._run_on_disconnect(handler)
        except asyncio.CancelledError:
            # server.close() cancelled a callback stuck past its timeout: the
            # connection is gone, and on_disconnect is still owed, once.
            if self._lost and not self._disconnect_done:
                self._dispatch_stopped = True
                self._drop_inbox()
                await self._run_on_disconnect(handler)
            raise
        finally:
            self._worker = None
            if first is None:
                # A worker that took its turn in the loop: what it handled since its
                # last yield counts against this iteration's share.
                self._inline_budget = fair_share - handled % fair_share
        if pristine is not None and not handled and self._context == pristine:
            # Idle memory: on_connect set no context variable, so the context a
            # later worker copies afresh is this one's equal; none is kept meanwhile.
            self._context = None
        if ((self._inbox and not self._dispatch_stopped)
                or (self._lost and not self._disconnect_done)):
            # Something arrived while the last await was finishing.
            self._start_worker()

    async def _authenticate(self) -> bool:
        """Run the server's ``authenticate`` hook; False (and closing, with the
        inbox dropped) when it refuses or fails."""
        authenticate = getattr(self._opts, "authenticate", None)
        if authenticate is None:
            return self._closing.is_open
        try:
            identity = await authenticate(self)
        except AuthenticationFailed as exc:
            client_fault(logger, "%s refused by authenticate: %d %s", self, exc.code,
                         exc.reason)
            self._note("authenticate")
            self._refuse(exc.code, exc.reason)
            return False
        except Exception:
            logger.exception("authenticate of %s raised; closing it with 1011", self)
            self._refuse(CloseCode.INTERNAL_ERROR, "authentication failed")
            return False
        # A connection that closed while the verdict was pending (the client
        # left, or server shutdown) was never accepted: what it sent meanwhile is
        # dropped, not dispatched.
        if not self._closing.is_open:
            self._dispatch_stopped = True
            self._drop_inbox()
            return False
        if identity is not None:
            self.user = identity
        return True

    def _refuse(self, code: int, reason: str) -> None:
        """Close without dispatching anything the client sent."""
        self._dispatch_stopped = True
        self._drop_inbox()
        self._start_close(code, fit_reason(reason))

    async def _run_on_disconnect(self, handler: WebSocketHandler) -> None:
        self._disconnect_done = True
        try:
            if self._accepted:  # a refused connection was never "connected"
                await handler.on_disconnect(self)
        except Exception:
            logger.exception("on_disconnect of %s raised", self)
        finally:
            if self._done is not None and not self._done.done():
                self._done.set_result(None)
            self._release()

    def _handler_error(self, where: str, exc: Exception) -> None:
        self._dispatch_stopped = True
        self._drop_inbox()
        self._resume_reading()
        if isinstance(exc, ConnectionClosed):
            # The connection closed under the callback (the client hung up): not
            # a bug of the application, not worth a traceback.
            logger.debug("%s of %s stopped: %s", where, self, exc)
            return
        logger.exception("%s of %s raised; closing it with 1011", where, self)
        self._fail(CloseCode.INTERNAL_ERROR, f"{where} failed")

    # -- events from the listener --------------------------------------------------
    def _on_connected(self, ws: Any) -> None:
        self._ws = ws
        transport = ws.underlying_transport
        if self.remote_address is None:  # the server passes the tuple it already has
            self.remote_address = transport.get_extra_info("peername")
        opts = self._opts
        if self._owner is not None:
            self._owner._adopt(self)
        if isinstance(self._headers, bytes):
            # Idle memory: picows keeps the request it parsed (ws.request) for the
            # connection's life, and its headers are ~3.4 KiB for a browser's; we
            # keep the head's bytes instead (the headers property), so empty them.
            try:
                ws.request.headers.clear()
            except Exception:  # not picows' multidict: leave it
                logger.debug("could not release the request headers", exc_info=True)
        # The connection log (DEBUG); no query string: it may hold a token.
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("connection %s opened: peer %s, path %r", self.id,
                         _address(self.remote_address), self.path.partition("?")[0])
        if self.is_client:
            periods = keepalive_periods(opts)
            if periods is not None:  # a client's keep-alive sweeps its one connection
                keepalive = Keepalive(lambda: (self,), *periods)
                keepalive.start()
                self.add_close_listener(lambda _conn: keepalive.stop())
            # picows parks the error that ends a client connection in a future only
            # wait_disconnected() reads; close_code reports it, so read it here, or
            # asyncio logs "Future exception was never retrieved".
            self._disconnect_watch = asyncio.get_running_loop().create_task(
                _swallow(ws.wait_disconnected()))
        else:
            self._peer_loop = asyncio.get_running_loop()
            hub = _fanout.get_hub(self._peer_loop)
            self._peer = _fanout.new_peer(
                hub, transport, ws, self.id, opts.max_write_buffer, opts.drop_slow,
                self._on_overflow, self._on_write_failure)
        high = max(1024, min(65536, opts.max_write_buffer // 4))
        try:
            transport.set_write_buffer_limits(high=high, low=high // 4)
        except Exception:
            pass
        if self._handler is not None:
            self._start_worker()

    def _on_data_frame(self, opcode: int, fin: bool, rsv: int, payload: bytes) -> None:
        if self._closing.sent:
            return  # closing: data is discarded (RFC 6455 section 1.4)
        if self._parked is not None or self._reading_paused:
            # The inbox is over its bounds and picows is still delivering the rest
            # of one read: park the frames as they came (compressed ones stay
            # small), and assemble them only as the handler catches up.  Else a
            # read of small compressed frames could inflate without limit.
            if self._parked is None:
                self._parked = collections.deque()
            self._parked.append((opcode, fin, rsv, payload))
            return
        # What _assemble() does, without one more call per frame.
        if self._dispatch_stopped:
            return
        try:
            message = self._assembler.feed(opcode, fin, rsv, payload)
        except ProtocolError as exc:
            self._fail(exc.code, str(exc))
            return
        if message is not None:
            self._deliver(message)

    def _assemble(self, opcode: int, fin: bool, rsv: int, payload: bytes) -> None:
        if self._dispatch_stopped:
            return  # we decided to close (or the assembler failed): nothing more
        try:
            message = self._assembler.feed(opcode, fin, rsv, payload)
        except ProtocolError as exc:
            self._fail(exc.code, str(exc))
            return
        if message is not None:
            self._deliver(message)

    def _send_keepalive_ping(self, timeout: float) -> None:
        """The keep-alive sweep found this connection silent for ``ping_interval``."""
        if self._closing.is_open:
            self._send_control(OPCODE_PING, KEEPALIVE_PAYLOAD)

    def _on_keepalive_timeout(self, timeout: float) -> None:
        """No pong within ``ping_timeout``: close with 1001 and drop TCP at once (the
        peer is presumed gone; its close frame is not awaited)."""
        if not self._closing.is_open:
            return
        self._note("ping_timeout")
        self._fail(CloseCode.GOING_AWAY, f"no pong within {timeout:g} s", linger=_DEAD_PEER_LINGER)

    def _on_ping(self, payload: bytes) -> None:
        if self._closing.is_open:
            self._send_control(OPCODE_PONG, payload)

    def _on_pong(self, payload: bytes) -> None:
        # Any pong answers our keep-alive ping (a pong acknowledges every earlier ping).
        self._ka_deadline = 0.0
        pings = self._pings
        if pings is None:
            return
        for index, (data, _sent, _fut) in enumerate(pings):
            if data == payload:
                now = time.monotonic()
                acknowledged, self._pings = pings[: index + 1], pings[index + 1:]
                for _data, sent, fut in acknowledged:
                    if not fut.done():
                        fut.set_result(now - sent)
                return

    def _on_pause_writing(self) -> None:
        self._write_paused = True
        if self._peer is not None:
            self._peer.pause_writing()

    def _on_resume_writing(self) -> None:
        self._write_paused = False
        if self._peer is not None:
            self._peer.resume_writing()
        self._wake_drain_waiters()

    def _on_overflow(self) -> None:
        """Slow consumer over max_write_buffer under the "close" policy: 1013."""
        if self._lost:
            return
        client_fault(logger, "%s is too slow (over %d buffered bytes); closing with 1013",
                     self, self._opts.max_write_buffer)
        self._note("slow_consumer")
        self._start_close(CloseCode.TRY_AGAIN_LATER, "slow consumer")

    def _on_transport_close(self) -> None:
        """picows failed the connection by itself (a malformed frame): it sent a close
        frame and will drop TCP.  From now on we are closing, with its code."""
        if self._closing.sent_by_transport(*_picows_sent_close(self._ws)):
            self._wake_drain_waiters()
            if self._handler is not None:
                self._drop_inbox()
            self._resume_reading()

    def _on_write_failure(self, exc: BaseException | None) -> None:
        if not self._lost:
            client_fault(logger, "write to %s failed (%r); dropping it", self, exc)
            self._ws.disconnect(False)

    def _on_close_frame(self, code: int | None, reason: str) -> None:
        action, reply_code, reply_reason = self._closing.receive(code, reason)
        self._wake_drain_waiters()
        if action is not PeerClose.FINISH:  # ECHO its code, or FAIL with 1002
            self._start_close(reply_code, reply_reason)
        self._wake_receiver()
        # The peer's close frame is in: no other is coming, drop TCP now.
        self._finish_close()

    def _on_lost(self) -> None:
        if self._lost:
            return
        self._lost = True
        # picows may have failed the connection itself (a frame over
        # max_frame_size: 1009, a malformed frame: 1002, no pong: 1001).
        self._closing.lost(*_picows_sent_close(self._ws))
        _mark_closed(self._ws)
        # The connection log (DEBUG).
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("connection %s closed: peer %s, path %r, code %s", self.id,
                         _address(self.remote_address), self.path.partition("?")[0],
                         self._closing.code)
        if self._close_handle is not None:
            self._close_handle.cancel()
            self._close_handle = None
        if self._peer is not None:
            self._peer.discard()
        self._reading_paused = False
        self._wake_drain_waiters()
        self._wake_receiver()
        if self._pings is not None:
            closed = self._closed_error()
            for _data, _sent, fut in self._pings:
                if not fut.done():
                    fut.set_exception(closed)
            self._pings = None
        listeners, self._close_listeners = self._close_listeners or (), None
        for callback in listeners:
            try:
                callback(self)
            except Exception:
                logger.exception("close listener of %s raised", self)
        if self._closed_fut is not None and not self._closed_fut.done():
            self._closed_fut.set_result(None)
        if self._owner is not None:
            self._owner._forget(self)
        if self._handler is None:
            self._release()
        elif self._worker is None and not self._disconnect_done:
            self._start_worker()
        else:
            self._wake_worker(True)  # a lingering worker runs on_disconnect
        if self._owner is not None and self._owner._lingering is not None:
            self._owner._lingering.discard(self)

    def _note(self, limit: str) -> None:
        """Count a limit hit in the server's ``stats()``."""
        if self._owner is not None:
            self._owner._note(limit)

    def _release(self) -> None:
        """Gone and done with: break the reference cycles (connection, listener,
        picows transport, fan-out peer and its callbacks), so the memory comes back
        at once instead of at the next cyclic garbage collection."""
        self._peer = None
        self._ws = None
        self._owner = None
        self._disconnect_watch = None


_PICOWS_CODES = frozenset(c.value for c in WSCloseCode)
#: asyncio.Task(..., eager_start=True): Python 3.12+.
_EAGER_TASKS = sys.version_info >= (3, 12)
#: Without eager tasks, a worker waits for the next message (see _run_handler);
#: not on 3.10, whose tasks cannot share the connection's context.
LINGER = sys.version_info[:2] == (3, 11)
#: Seconds a lingering worker waits for a message at least (at most twice that).
LINGER_PERIOD = 1.0


class Lingering:
    """The lingering workers of one server (package-internal), and the one timer
    that ends those idle for a whole period: a sweep ends the workers still
    waiting since the sweep before, so a worker ends between one and two periods
    after its last message.  A wait costs one set insertion; the timer runs only
    while some worker lingers."""

    __slots__ = ("handle", "marked", "waiting")

    def __init__(self) -> None:
        self.waiting: set[WebSocketConnection] = set()  # waited since the last sweep
        self.marked: set[WebSocketConnection] = set()  # waiting at the last sweep
        self.handle: asyncio.TimerHandle | None = None

    def arm(self, loop: asyncio.AbstractEventLoop) -> None:
        """Sweep in a period (a worker that starts waiting adds itself to
        ``waiting`` and arms this when it is not armed)."""
        self.handle = loop.call_later(LINGER_PERIOD, self._sweep, loop)

    def discard(self, conn: WebSocketConnection) -> None:
        """*conn* is gone: hold it no longer."""
        self.waiting.discard(conn)
        self.marked.discard(conn)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self.handle = None
        waiting = self.waiting
        for conn in self.marked:
            if conn not in waiting:  # it has waited since the last sweep, unwoken
                conn._wake_worker(False)
        self.marked = {conn for conn in waiting if conn._wakeup is not None}
        self.waiting = set()
        if self.marked:
            self.arm(loop)


_OPEN = CloseState.OPEN
_TEXT_TYPE, _BINARY_TYPE = MessageType.TEXT, MessageType.BINARY


#: The inbox of a connection with nothing queued yet (falsy, len 0; never
#: appended to: ``_deliver`` makes the real deque first).  Idle memory.
_NO_INBOX = cast("collections.deque[Message]", ())


# Peer addresses in the connection log.
def _mark_closed(ws: Any) -> None:
    """Close the transport of a lost connection if it does not say it is closed:
    Python 3.10's TLS transport (asyncio's old ``sslproto``) is not marked closed
    when the peer vanishes, and warns "unclosed transport" when collected.  A
    no-op for every transport that closes itself on loss."""
    try:
        transport = ws.underlying_transport
        if not transport.is_closing():
            transport.close()
    except Exception:  # no transport, or one already torn down
        pass


def _address(peer: object) -> str:
    """A peer address for the logs: ``host:port`` (``[host]:port`` for IPv6)."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = str(peer[0])
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    return str(peer)


async def _swallow(waiter: Awaitable[object]) -> None:
    try:
        await waiter
    except Exception:
        pass


def _picows_sent_close(ws: Any) -> tuple[int, str]:
    """The close frame picows sent on its own, else 1006 (no close frame at all)."""
    try:
        sent = ws.close_handshake.sent
        if sent is not None:
            return int(sent.code), str(sent.reason or "")
    except Exception:  # no handshake record, or a code picows' enum cannot hold
        pass
    return CloseCode.ABNORMAL_CLOSURE, ""
