"""The first reader of every accepted TCP connection: it reads the request head,
answers plain HTTP itself (any method, HEAD, 404/405, coroutine handlers,
limits picows cannot answer) and hands WebSocket upgrades to picows.

picows parses only ``GET`` and drops heads of 16 KiB without an answer, and its
handshake callback is synchronous; reading the head first lifts all three.  The
hand-over (``transport.set_protocol``) happens once per connection, before
picows has read anything: after it, picows reads the socket directly, as if it
had accepted the connection itself.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from multidict import CIMultiDict

from .protocol.handshake import (
    HeadError,
    HTTPResponse,
    Request,
    check_request,
    error_response,
    is_upgrade,
    parse_request_head,
    render_response,
)

if TYPE_CHECKING:
    from .server import Server

__all__ = ["RequestReader"]

logger = logging.getLogger("reinhardt_ws")

#: Seconds an answered client has to hang up before its connection is aborted.
LINGER = 2.0


def _discard(data: bytes) -> None:
    pass


class _Detached(asyncio.Protocol):
    """A protocol no connection runs on: see ``RequestReader._hand_over``."""

    data_received = staticmethod(_discard)  # a plain function: no bound method per access


_DETACHED = _Detached()


class RequestReader(asyncio.Protocol):
    """Reads one request head; answers it, or hands the connection to picows."""

    __slots__ = ("_buffer", "_eof", "_make_ws_protocol", "_peer", "_server", "_task", "_timer",
                 "_transport")

    def __init__(self, server: Server,
                 make_ws_protocol: Callable[[Any, tuple[tuple[str, str], ...], bytes], Any]
                 ) -> None:
        self._server = server
        self._make_ws_protocol = make_ws_protocol
        self._transport: Any = None
        self._peer: Any = None
        self._buffer: bytearray | None = bytearray()
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._peer = transport.get_extra_info("peername")
        timeout = self._server.options.handshake_timeout
        if timeout is not None:
            self._timer = asyncio.get_running_loop().call_later(timeout, self._expire)

    def _expire(self) -> None:
        self._timer = None
        self._buffer = None
        self._transport.abort()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._buffer = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        if buffer is None:
            return  # answered (or answering): the rest of what it sends is ignored
        buffer += data
        opts = self._server.options
        end = buffer.find(b"\r\n\r\n")
        if end < 0 or end > opts.max_request_head:
            if len(buffer) > opts.max_request_head:
                # Too big, read or not: picows would drop it without an answer.
                first = buffer.find(b"\r\n")
                too_long_line = (first < 0 or first > opts.max_request_line + 16)
                self._answer(error_response(414, "URI Too Long") if too_long_line else
                             error_response(431, "Request Header Fields Too Large"),
                             "request_too_large")
            return
        raw_head = bytes(buffer[:end])
        try:
            head = parse_request_head(raw_head)
        except HeadError as exc:
            status = exc.response.status
            self._answer(exc.response, "request_too_large" if status == 431 else "bad_request")
            return
        headers: CIMultiDict[str] = CIMultiDict(head.headers)
        if head.method == "GET" and head.version == "HTTP/1.1" and is_upgrade(headers):
            self._hand_over(head.headers, raw_head)
            return
        request = Request(head.method, head.target, headers, self._peer)
        refusal = check_request(request, max_request_line=opts.max_request_line,
                                max_request_head=opts.max_request_head,
                                header_items=head.headers)
        if refusal is not None and (refusal.status != 400 or head.version == "HTTP/1.1"):
            self._answer(refusal, "bad_request" if refusal.status == 400
                         else "request_too_large")
            return
        self._buffer = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        answer, reason = self._server._http_response(request, head.has_body)
        if inspect.isawaitable(answer):
            self._task = asyncio.ensure_future(self._await_answer(answer, request))
        else:
            self._send(answer, reason, request.method == "HEAD")

    async def _await_answer(self, pending: Any, request: Request) -> None:
        try:
            answer = await pending
            if not isinstance(answer, HTTPResponse):
                raise TypeError(f"HTTP handler returned {type(answer).__name__}, "
                                "not an HTTPResponse")
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("HTTP handler failed for %r", request)
            self._send(error_response(500, "Internal Server Error"), "error", False)
            return
        self._send(answer, None, request.method == "HEAD")

    def _answer(self, answer: HTTPResponse, reason: str) -> None:
        self._buffer = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._send(answer, reason, False)

    def _send(self, answer: HTTPResponse, reason: str | None, head_only: bool) -> None:
        server = self._server
        if reason is None:
            server._http_answered += 1
        else:
            server._limits.refused(reason)
        transport = self._transport
        if transport.is_closing():
            return
        transport.write(render_response(answer, head_only=head_only))
        if self._eof:
            transport.close()  # the client has sent everything: nothing to drain
            return
        # A lingering close: closing a socket with unread input sends a reset,
        # which can destroy the answer in flight (a client still sending a 20 KiB
        # head would see a reset, not our 431).  So stop writing, keep reading
        # (and discarding) until the client hangs up, for LINGER seconds at most.
        if transport.can_write_eof():
            transport.write_eof()
        self._timer = asyncio.get_running_loop().call_later(LINGER, transport.abort)

    def eof_received(self) -> bool:
        # A client may half-close once its request is sent: keep the connection
        # open while a coroutine handler prepares the answer; otherwise close.
        self._eof = True
        return self._task is not None and not self._task.done()

    def _hand_over(self, header_items: tuple[tuple[str, str], ...], raw_head: bytes) -> None:
        """Give the connection, and every byte read so far, to a picows protocol
        (with the head's *header_items*, for the admission's size check, and the
        head itself, which the connection keeps for ``conn.headers``)."""
        data = self._buffer
        assert data is not None
        self._buffer = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        transport = self._transport
        proto = self._make_ws_protocol(self._peer, header_items, raw_head)
        # Idle memory: uvloop keeps the bound data_received of a stream's last
        # non-buffered protocol after set_protocol() to a buffered one (picows'),
        # and with it this reader, for the connection's life.  Passing through a
        # shared protocol whose data_received is a plain function leaves nothing
        # of ours behind.
        transport.set_protocol(_DETACHED)
        transport.set_protocol(proto)
        proto.connection_made(transport)
        view = memoryview(data)
        while view and not transport.is_closing():
            room = proto.get_buffer(len(view))
            n = min(len(room), len(view))
            if n == 0:  # picows grows its buffer as it reads: not expected
                transport.abort()
                return
            room[:n] = view[:n]
            proto.buffer_updated(n)
            view = view[n:]
