"""One WebSocket connection: :class:`WebSocketConnection` and the picows listener
that keeps the RFC 6455 promises picows leaves to its user.

picows parses frames; the listener here checks what picows does not (reserved
bits, fragmentation order, UTF-8, the whole-message size, close codes), answers
pings, runs the closing handshake, and hands whole messages either to a
:class:`~reinhardt_ws.WebSocketHandler` (server side) or to ``recv()`` (client side).
Sending on the server side goes through the fan-out :class:`Peer`, so a
connection's direct sends and the room broadcasts that reach it share one ordered,
coalesced write path.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from picows import WSCloseCode, WSMsgType

from . import _fanout
from .errors import AuthenticationFailed, ConnectionClosed, SendError
from .options import ConnectionOptions
from .protocol.assembler import MessageAssembler
from .protocol.extensions.permessage_deflate import PerMessageDeflate, build_compressed_frame
from .protocol.messages import (
    OPCODE_BINARY,
    OPCODE_PING,
    OPCODE_TEXT,
    CloseCode,
    Message,
    MessageType,
    WebSocketMessage,
    encode_close_payload,
    is_valid_close_code,
)

if TYPE_CHECKING:
    from ._fastbroadcast_py import Peer
    from .handler import WebSocketHandler

__all__ = ["WebSocketConnection"]

logger = logging.getLogger("reinhardt_ws")

_OPEN, _CLOSING, _CLOSED = 0, 1, 2


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
        "_close_received",
        "_close_sent",
        "_closed_fut",
        "_connect_done",
        "_disconnect_done",
        "_disconnect_watch",
        "_done",
        "_drain_waiters",
        "_extension",
        "_handler",
        "_handler_failed",
        "_inbox",
        "_lost",
        "_opts",
        "_peer",
        "_pings",
        "_reading_paused",
        "_recv_waiter",
        "_server",
        "_state",
        "_worker",
        "_write_paused",
        "_ws",
        "close_code",
        "close_reason",
        "headers",
        "id",
        "is_client",
        "path",
        "path_params",
        "remote_address",
        "subprotocol",
        "user",
        "user_data",
    )

    id: str
    path: str
    headers: Mapping[str, str]
    subprotocol: str | None
    remote_address: Any
    close_code: int | None
    close_reason: str
    is_client: bool
    user: Any
    path_params: dict[str, str]
    user_data: dict[str, Any]

    def __init__(self, *, path: str, headers: Mapping[str, str], subprotocol: str | None,
                 opts: ConnectionOptions, is_client: bool,
                 handler: WebSocketHandler | None = None, server: Any = None,
                 extension: PerMessageDeflate | None = None) -> None:
        self.id = uuid.uuid4().hex
        self.path = path
        self.headers = headers
        self.subprotocol = subprotocol
        self.remote_address = None
        self.close_code = None
        self.close_reason = ""
        self.is_client = is_client
        #: The identity the handshake hook or ``authenticate`` established (None: anonymous).
        self.user = None
        #: Parameters the router extracted from the path (``/rooms/{room}``).
        self.path_params = {}
        #: Free for the application: per-connection data (user id, session...).
        self.user_data = {}
        self._opts = opts
        self._handler = handler
        self._server = server
        self._ws: Any = None
        self._peer: Peer | None = None
        self._state = _OPEN
        self._extension = extension  # permessage-deflate, when negotiated
        self._assembler = MessageAssembler(opts.max_message_size, extension)
        self._close_sent = False
        self._close_received = False
        self._close_handle: asyncio.TimerHandle | None = None
        self._closed_fut: asyncio.Future[None] | None = None
        self._close_listeners: list[Callable[[WebSocketConnection], object]] = []
        self._inbox: collections.deque[Message] = collections.deque()
        self._worker: asyncio.Task[None] | None = None
        self._connect_done = False
        self._disconnect_done = False
        self._disconnect_watch: asyncio.Task[None] | None = None
        self._handler_failed = False
        self._accepted = False
        self._lost = False
        self._done: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._write_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._recv_waiter: asyncio.Future[None] | None = None
        self._pings: list[tuple[bytes, float, asyncio.Future[float]]] = []

    # -- state ----------------------------------------------------------------
    @property
    def is_closed(self) -> bool:
        """True once a close frame was sent or received, or the socket is gone."""
        return self._state != _OPEN

    def __repr__(self) -> str:
        state = ("open", "closing", "closed")[self._state]
        return f"<WebSocketConnection {self.id[:8]} {self.path!r} {state}>"

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
        if self._state != _OPEN or self._lost:
            return None
        return self._peer

    # -- sending ----------------------------------------------------------------
    async def send(self, message: Message | WebSocketMessage | str | bytes | bytearray
                   | memoryview) -> None:
        """Send a :class:`Message`, a ``str`` (text), bytes (binary) or a
        :class:`WebSocketMessage` (its JSON, as text).

        A close message closes the connection (as :meth:`close`).  Raises
        :class:`ConnectionClosed` when the connection is closed or closing and
        :class:`SendError` for what cannot be sent.
        """
        if isinstance(message, str):
            opcode, payload = OPCODE_TEXT, message.encode("utf-8")
        elif isinstance(message, (bytes, bytearray, memoryview)):
            opcode, payload = OPCODE_BINARY, bytes(message)
        elif isinstance(message, Message):
            if message.type is MessageType.CLOSE:
                await self.close(message.code if message.code is not None else 1000,
                                 message.reason)
                return
            opcode, payload = message.opcode, message.payload
        elif isinstance(message, WebSocketMessage):
            opcode, payload = OPCODE_TEXT, message.to_json()
        else:
            raise SendError(f"cannot send {type(message).__name__}")
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
        :class:`ConnectionClosed` if the connection closes first.
        """
        payload = bytes(data)
        if len(payload) > 125:
            raise SendError("ping payload is limited to 125 bytes")
        if self._state != _OPEN:
            raise ConnectionClosed(self._code_or_abnormal(), self.close_reason)
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._pings.append((payload, time.monotonic(), fut))
        self._send_frame(OPCODE_PING, payload)
        return await fut

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        if self._state != _OPEN:
            raise ConnectionClosed(self._code_or_abnormal(), self.close_reason)
        peer = self._peer
        # -- permessage-deflate: data frames go compressed when that pays ---------
        extension = self._extension
        if extension is not None and opcode <= OPCODE_BINARY:
            wire = extension.encode(payload)
            if wire is not None:
                if peer is None:
                    self._ws.send(WSMsgType(opcode), wire, rsv1=True)
                elif peer.push(build_compressed_frame(opcode, wire)) != 0:
                    raise ConnectionClosed(self._code_or_abnormal(), self.close_reason)
                return
        # -- end permessage-deflate -----------------------------------------------
        if peer is not None:
            if peer.push(_fanout.impl.build_frame(opcode, payload)) != 0:
                raise ConnectionClosed(self._code_or_abnormal(), self.close_reason)
        else:
            self._ws.send(WSMsgType(opcode), payload)

    async def _wait_writable(self) -> None:
        loop = asyncio.get_running_loop()
        while self._write_paused and self._state == _OPEN:
            fut: asyncio.Future[None] = loop.create_future()
            self._drain_waiters.append(fut)
            await fut

    def _wake_drain_waiters(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
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
        if self._state == _OPEN:
            self._start_close(int(code), reason)
        await self.wait_closed()

    async def wait_closed(self) -> None:
        """Wait until the socket is gone."""
        if self._lost:
            return
        if self._closed_fut is None:
            self._closed_fut = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._closed_fut)

    def _start_close(self, code: int, reason: str) -> None:
        """Send our close frame (after everything queued) and arm the timeout."""
        if self._close_sent or self._lost:
            return
        self._close_sent = True
        if self._state == _OPEN:
            self._state = _CLOSING
            self._wake_drain_waiters()
        if self.close_code is None and not self._close_received:
            self.close_code, self.close_reason = code, reason
        # Data is discarded from now on; read again so the peer's close frame is
        # not stuck behind a full inbox (else every close waits close_timeout).
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
            self._opts.close_timeout, self._abort)

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection (RFC 6455 section 7.1.7) with *code*."""
        if self._state == _OPEN:
            logger.info("closing %s with %d: %s", self, code, reason)
            self._start_close(code, reason[:120])
        elif not self._close_sent:
            self._start_close(code, reason[:120])

    def _abort(self) -> None:
        self._close_handle = None
        if not self._lost:
            self._ws.disconnect(False)

    def _finish_close(self) -> None:
        """Both close frames have crossed: drop TCP (the server side closes first)."""
        if self._close_handle is not None:
            self._close_handle.cancel()
            self._close_handle = None
        self._ws.disconnect(True)

    def _code_or_abnormal(self) -> int:
        return self.close_code if self.close_code is not None else CloseCode.ABNORMAL_CLOSURE

    def add_close_listener(self, callback: Callable[[WebSocketConnection], object]) -> None:
        """Call *callback(conn)* once, synchronously, when the socket is gone
        (before ``on_disconnect``).  Rooms use it to forget the connection."""
        if self._lost:
            callback(self)
        else:
            self._close_listeners.append(callback)

    def remove_close_listener(self, callback: Callable[[WebSocketConnection], object]) -> None:
        try:
            self._close_listeners.remove(callback)
        except ValueError:
            pass

    # -- receiving (client side) ------------------------------------------------
    async def recv(self) -> Message:
        """The next message (client connections).

        Raises :class:`ConnectionClosed` once the connection is closed and every
        message received before the close has been returned.
        """
        if self._handler is not None:
            raise RuntimeError("server connections deliver messages to handler.on_message")
        while not self._inbox:
            if self._lost or self._close_received:
                raise ConnectionClosed(self._code_or_abnormal(), self.close_reason)
            if self._recv_waiter is not None:
                raise RuntimeError("recv() is already being awaited by another task")
            self._recv_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._recv_waiter
            finally:
                self._recv_waiter = None
        message = self._inbox.popleft()
        if self._reading_paused and len(self._inbox) <= self._opts.max_queue // 4:
            self._resume_reading()
        return message

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

    # -- inbound flow control -------------------------------------------------------
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
    def _deliver(self, message: Message) -> None:
        inbox = self._inbox
        inbox.append(message)
        if len(inbox) >= self._opts.max_queue:
            self._pause_reading()
        if self._handler is None:
            self._wake_receiver()
        elif self._worker is None:
            self._start_worker()

    def _start_worker(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run_handler())

    async def _run_handler(self) -> None:
        handler = self._handler
        assert handler is not None
        inbox = self._inbox
        low_water = self._opts.max_queue // 4
        try:
            if not self._connect_done:
                self._connect_done = True
                if await self._authenticate():
                    self._accepted = True
                    try:
                        await handler.on_connect(self)
                    except Exception:
                        self._handler_error("on_connect")
            while inbox:
                message = inbox.popleft()
                if self._reading_paused and len(inbox) <= low_water:
                    self._resume_reading()
                if self._handler_failed:
                    continue
                try:
                    await handler.on_message(self, message)
                except Exception:
                    self._handler_error("on_message")
            if self._lost and not self._disconnect_done:
                await self._run_on_disconnect(handler)
        except asyncio.CancelledError:
            # server.close() cancelled a callback stuck past its timeout: the
            # connection is gone, and on_disconnect is still owed, once.
            if self._lost and not self._disconnect_done:
                self._handler_failed = True
                inbox.clear()
                await self._run_on_disconnect(handler)
            raise
        finally:
            self._worker = None
        if (inbox and not self._handler_failed) or (self._lost and not self._disconnect_done):
            # Something arrived while the last await was finishing.
            self._start_worker()

    async def _authenticate(self) -> bool:
        """Run the server's ``authenticate`` hook; False (and closing, with the
        inbox dropped) when it refuses or fails."""
        authenticate = getattr(self._opts, "authenticate", None)
        if authenticate is None:
            return True
        try:
            identity = await authenticate(self)
        except AuthenticationFailed as exc:
            logger.info("%s refused by authenticate: %d %s", self, exc.code, exc.reason)
            self._refuse(exc.code, exc.reason)
            return False
        except Exception:
            logger.exception("authenticate of %s raised; closing it with 1011", self)
            self._refuse(CloseCode.INTERNAL_ERROR, "authentication failed")
            return False
        if identity is not None:
            self.user = identity
        return self._state == _OPEN

    def _refuse(self, code: int, reason: str) -> None:
        """Close without dispatching anything the client sent."""
        self._handler_failed = True
        self._inbox.clear()
        self._resume_reading()
        if self._state == _OPEN:
            self._start_close(code, reason[:120])

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

    def _handler_error(self, where: str) -> None:
        logger.exception("%s of %s raised; closing it with 1011", where, self)
        self._handler_failed = True
        self._inbox.clear()
        self._resume_reading()
        if self._state == _OPEN:
            self._fail(CloseCode.INTERNAL_ERROR, f"{where} failed")

    async def _wait_done(self) -> None:
        """Wait until ``on_disconnect`` has run (server side)."""
        if self._disconnect_done and self._worker is None:
            return
        if self._done is None:
            self._done = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._done)

    # -- events from the listener --------------------------------------------------
    def _on_connected(self, ws: Any) -> None:
        self._ws = ws
        transport = ws.underlying_transport
        self.remote_address = transport.get_extra_info("peername")
        opts = self._opts
        if self._server is not None:
            self._server._adopt(self)
        if self.is_client:
            # picows parks the error that ends a client connection in a future only
            # wait_disconnected() reads; close_code reports it, so read it here, or
            # asyncio logs "Future exception was never retrieved".
            self._disconnect_watch = asyncio.get_running_loop().create_task(
                _swallow(ws.wait_disconnected()))
        else:
            hub = _fanout.get_hub(asyncio.get_running_loop())
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

    def _on_overflow(self) -> None:
        """Slow consumer over max_write_buffer under the "close" policy: 1013."""
        if self._lost:
            return
        logger.info("%s is too slow (over %d buffered bytes); closing with 1013",
                    self, self._opts.max_write_buffer)
        if self._state == _OPEN:
            self._state = _CLOSING
        self._close_sent = True
        if self.close_code is None:
            self.close_code, self.close_reason = CloseCode.TRY_AGAIN_LATER, "slow consumer"
        try:
            self._ws.send_close(WSCloseCode.TRY_AGAIN_LATER, b"slow consumer")
        except Exception:
            pass
        self._wake_drain_waiters()
        self._close_handle = asyncio.get_running_loop().call_later(
            self._opts.close_timeout, self._abort)

    def _on_picows_close(self) -> None:
        """picows failed the connection by itself (a malformed frame): it sent a close
        frame and will drop TCP.  From now on we are closing, with its code."""
        self._close_sent = True
        if self._state == _OPEN:
            self._state = _CLOSING
            self._wake_drain_waiters()
        if self.close_code is None:
            self.close_code, self.close_reason = _picows_sent_close(self._ws)
        self._resume_reading()

    def _on_write_failure(self, exc: BaseException | None) -> None:
        if not self._lost:
            logger.info("write to %s failed (%r); dropping it", self, exc)
            self._ws.disconnect(False)

    def _on_pong(self, payload: bytes) -> None:
        pings = self._pings
        for index, (data, _sent, _fut) in enumerate(pings):
            if data == payload:
                now = time.monotonic()
                acknowledged, self._pings = pings[: index + 1], pings[index + 1:]
                for _data, sent, fut in acknowledged:
                    if not fut.done():
                        fut.set_result(now - sent)
                return

    def _on_close_frame(self, code: int | None, reason: str) -> None:
        self._close_received = True
        if code is not None and not is_valid_close_code(code):
            self._fail(CloseCode.PROTOCOL_ERROR, f"invalid close code {code}")
            # The peer's close frame is in: no other is coming, drop TCP now.
            self._finish_close()
            return
        if self._state == _OPEN:
            self._state = _CLOSING
            self._wake_drain_waiters()
        if not self._close_sent:
            self.close_code = code if code is not None else CloseCode.NO_STATUS_RCVD
            self.close_reason = reason
            # Echo the peer's code (RFC 6455 section 5.5.1); 1000 for an empty close.
            self._start_close(code if code is not None else CloseCode.NORMAL, reason[:120])
        self._wake_receiver()
        self._finish_close()

    def _on_lost(self) -> None:
        if self._lost:
            return
        self._lost = True
        self._state = _CLOSED
        if self.close_code is None:
            # picows may have failed the connection itself (a frame over
            # max_frame_size: 1009, a malformed frame: 1002, no pong: 1001).
            self.close_code, self.close_reason = _picows_sent_close(self._ws)
        if self._close_handle is not None:
            self._close_handle.cancel()
            self._close_handle = None
        if self._peer is not None:
            self._peer.discard()
        self._reading_paused = False
        self._wake_drain_waiters()
        self._wake_receiver()
        closed = ConnectionClosed(self.close_code, self.close_reason)
        for _data, _sent, fut in self._pings:
            if not fut.done():
                fut.set_exception(closed)
        self._pings = []
        listeners, self._close_listeners = self._close_listeners, []
        for callback in listeners:
            try:
                callback(self)
            except Exception:
                logger.exception("close listener of %s raised", self)
        if self._closed_fut is not None and not self._closed_fut.done():
            self._closed_fut.set_result(None)
        if self._handler is not None and self._worker is None and not self._disconnect_done:
            self._start_worker()
        if self._server is not None:
            self._server._forget(self)


_PICOWS_CODES = frozenset(c.value for c in WSCloseCode)


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
