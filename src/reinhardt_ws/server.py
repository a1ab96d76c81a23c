"""The server: :func:`serve` and :class:`Server`, on picows."""

from __future__ import annotations

import asyncio
import logging
import ssl as ssl_module
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

import picows
from picows import WSUpgradeResponse, WSUpgradeResponseWithListener

from .connection import ConnectionListener, ConnectionOptions, WebSocketConnection
from .handler import WebSocketHandler
from .messages import CloseCode, encode_close_payload

__all__ = ["HTTPResponse", "Server", "serve"]

logger = logging.getLogger("reinhardt_ws")

MiB = 1024 * 1024


@dataclass(frozen=True)
class HTTPResponse:
    """A plain HTTP answer to a request that is not a WebSocket upgrade."""

    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: Mapping[str, str] = field(default_factory=dict)


#: ``http_handler(path, headers)`` answers plain HTTP requests, or returns None
#: (then the request must be a WebSocket upgrade, else it gets 400).
HTTPHandler = Callable[[str, Mapping[str, str]], "HTTPResponse | None"]


def _is_upgrade(headers: Mapping[str, str]) -> bool:
    return "websocket" in headers.get("upgrade", "").lower()


def _negotiate_subprotocol(offered: str | None, supported: tuple[str, ...]) -> str | None:
    if not offered or not supported:
        return None
    wanted = {p.strip() for p in offered.split(",") if p.strip()}
    for proto in supported:  # the server's order of preference
        if proto in wanted:
            return proto
    return None


class Server:
    """A running WebSocket server; create it with :func:`serve`.

    Await it (``server = await serve(...)``) or use it as an async context
    manager; leaving the context closes it with 1001 (Going Away).
    """

    def __init__(self, handler: WebSocketHandler, host: str | None, port: int, *,
                 options: ConnectionOptions, ssl: ssl_module.SSLContext | None,
                 subprotocols: tuple[str, ...], reuse_port: bool,
                 ping_interval: float | None, ping_timeout: float | None,
                 handshake_timeout: float | None, http_handler: HTTPHandler | None,
                 backlog: int, read_buffer_size: int, use_aiofastnet: bool) -> None:
        if not isinstance(handler, WebSocketHandler):
            raise TypeError("handler must be a WebSocketHandler instance")
        self.handler = handler
        self.host = host
        self._requested_port = port
        self._options = options
        self._ssl = ssl
        self._subprotocols = subprotocols
        self._reuse_port = reuse_port
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._handshake_timeout = handshake_timeout
        self._http_handler = http_handler
        self._backlog = backlog
        self._read_buffer_size = read_buffer_size
        self._use_aiofastnet = use_aiofastnet
        self._server: asyncio.Server | None = None
        self._connections: dict[str, WebSocketConnection] = {}
        self._closing = False
        self._closed: asyncio.Event | None = None

    # -- lifecycle ---------------------------------------------------------------
    async def start(self) -> Server:
        """Bind and listen; returns self.  Called by ``await serve(...)``."""
        if self._server is not None:
            return self
        self._closed = asyncio.Event()
        kwargs: dict[str, Any] = {"backlog": self._backlog}
        if self._ssl is not None:
            kwargs["ssl"] = self._ssl
        if self._reuse_port:
            kwargs["reuse_port"] = True
        ping = self._ping_interval is not None and self._ping_interval > 0
        self._server = await picows.ws_create_server(
            self._listener_for,
            self.host,
            self._requested_port,
            websocket_handshake_timeout=self._handshake_timeout,
            enable_auto_ping=ping,
            auto_ping_idle_timeout=float(self._ping_interval or 20),
            auto_ping_reply_timeout=float(self._ping_timeout or self._ping_interval or 20),
            enable_auto_pong=False,
            max_frame_size=self._options.max_message_size or (1 << 62),
            read_buffer_init_size=self._read_buffer_size,
            use_aiofastnet=self._use_aiofastnet,
            # A Logger, not a name: picows would prefix a name with "picows.".
            # An adapter, not a Logger: picows then creates no child Logger per
            # connection (about 1 KiB each, kept for the connection's life).
            logger_name=logging.LoggerAdapter(logging.getLogger("reinhardt_ws.picows")),
            **kwargs,
        )
        return self

    def __await__(self) -> Generator[Any, None, Server]:
        return self.start().__await__()

    async def __aenter__(self) -> Server:
        return await self.start()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    @property
    def port(self) -> int:
        """The bound port (useful with ``port=0``)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the server is not listening")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def sockets(self) -> tuple[Any, ...]:
        return tuple(self._server.sockets) if self._server is not None else ()

    @property
    def connections(self) -> frozenset[WebSocketConnection]:
        """The connections open right now."""
        return frozenset(self._connections.values())

    async def serve_forever(self) -> None:
        """Serve until :meth:`close` is called (or the task is cancelled)."""
        await self.start()
        assert self._closed is not None
        await self._closed.wait()

    async def close(self, code: int = CloseCode.GOING_AWAY, timeout: float = 5.0) -> None:
        """Stop accepting, close every connection with *code*, and wait.

        Waits up to *timeout* seconds for the closing handshakes, aborts the
        connections still open after that, and returns once every
        ``on_disconnect`` has run (a callback still busy after a further *timeout*
        is cancelled, and ``on_disconnect`` then runs all the same).  Idempotent.
        """
        encode_close_payload(int(code), "")
        if self._closing:
            if self._closed is not None:
                await self._closed.wait()
            return
        self._closing = True
        if self._server is not None:
            self._server.close()
        conns = list(self._connections.values())
        for conn in conns:
            if not conn.is_closed:
                conn._start_close(int(code), "server shutdown")
        if conns:
            waiters = [asyncio.ensure_future(c.wait_closed()) for c in conns]
            _done, pending = await asyncio.wait(waiters, timeout=timeout)
            for conn in conns:
                if not conn._lost:
                    conn._abort()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
            handlers = [asyncio.ensure_future(c._wait_done()) for c in conns]
            _done, stuck = await asyncio.wait(handlers, timeout=timeout)
            for conn in conns:
                worker = conn._worker
                if worker is not None and not worker.done() and stuck:
                    logger.warning("handler of %s still busy after %.1fs; cancelling it",
                                   conn, timeout)
                    worker.cancel()
            if stuck:
                await asyncio.wait(stuck, timeout=1.0)
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.wait_closed(), timeout=1.0)
            except (asyncio.TimeoutError, TimeoutError):
                pass
        if self._closed is not None:
            self._closed.set()

    # -- connections ------------------------------------------------------------
    def _listener_for(self, request: picows.WSUpgradeRequest) -> Any:
        headers = request.headers
        raw_path = request.path.decode("latin-1")
        path = unquote(urlsplit(raw_path).path) or "/"
        if not _is_upgrade(headers) and self._http_handler is not None:
            answer = self._http_handler(path, headers)
            if answer is not None:
                return _http_answer(answer)
        # Anything else must be a valid upgrade: picows answers 400 otherwise.
        if self._closing:
            return _http_answer(HTTPResponse(503, b"server shutting down\n"))
        subprotocol = _negotiate_subprotocol(headers.get("sec-websocket-protocol"),
                                             self._subprotocols)
        conn = WebSocketConnection(path=raw_path, headers=headers, subprotocol=subprotocol,
                                   opts=self._options, is_client=False,
                                   handler=self.handler, server=self)
        # Registered by _adopt() once the upgrade succeeds: picows may still refuse
        # the request (400), and then the connection never opens nor closes.
        listener = ConnectionListener(conn)
        if subprotocol is None:
            return listener
        response = WSUpgradeResponse.create_101_response(
            extra_headers={"Sec-WebSocket-Protocol": subprotocol})
        return WSUpgradeResponseWithListener(response, listener)

    def _adopt(self, conn: WebSocketConnection) -> None:
        self._connections[conn.id] = conn

    def _forget(self, conn: WebSocketConnection) -> None:
        self._connections.pop(conn.id, None)


def _http_answer(answer: HTTPResponse) -> WSUpgradeResponseWithListener:
    headers = dict(answer.headers)
    headers.setdefault("Content-Type", answer.content_type)
    if answer.status >= 400:
        response = WSUpgradeResponse.create_error_response(answer.status, answer.body,
                                                           extra_headers=headers)
    else:
        response = WSUpgradeResponse.create_ok_response(answer.body, extra_headers=headers)
        response.status = HTTPStatus(answer.status)
    return WSUpgradeResponseWithListener(response, None)


def serve(
    handler: WebSocketHandler,
    host: str | None = "127.0.0.1",
    port: int = 8765,
    *,
    max_message_size: int | None = 1 * MiB,
    ping_interval: float | None = 20.0,
    ping_timeout: float | None = 20.0,
    handshake_timeout: float | None = 5.0,
    close_timeout: float = 5.0,
    max_write_buffer: int = 1 * MiB,
    slow_consumer: str = "close",
    max_queue: int = 16,
    ssl: ssl_module.SSLContext | None = None,
    subprotocols: Iterable[str] = (),
    reuse_port: bool = False,
    http_handler: HTTPHandler | None = None,
    backlog: int = 1024,
    read_buffer_size: int = 2048,
    use_aiofastnet: bool = False,
) -> Server:
    """Create a WebSocket server running *handler*; ``await`` it to start listening.

    - ``max_message_size``: limit of a whole message, over all its fragments;
      bigger gets close 1009.  ``None``: no limit.
    - ``ping_interval`` / ``ping_timeout``: ping a connection idle that long and
      drop it (1001) when the pong does not come within ``ping_timeout``
      (picows needs ``ping_timeout <= ping_interval``).  ``None`` disables.
    - ``handshake_timeout``: seconds a client has to complete the opening
      handshake.  ``close_timeout``: seconds to wait for the peer's close frame.
    - ``max_write_buffer``: bytes a connection may have buffered (queued plus in
      the transport) before it counts as a slow consumer; ``slow_consumer``
      chooses what then happens to room broadcasts: ``"close"`` closes it with
      1013 (Try Again Later), ``"drop"`` skips messages for it while it is over
      the limit.  A connection's own ``send()`` waits instead (backpressure).
    - ``max_queue``: messages received and not yet handled, per connection,
      before the server stops reading that socket.
    - ``http_handler(path, headers)``: answers plain HTTP GETs on the same port.
    - ``read_buffer_size``: initial read buffer per connection (it grows as needed);
      small keeps idle connections cheap.
    - ``use_aiofastnet``: run the connections on picows' aiofastnet transports
      instead of the event loop's own.  They read faster and keep a reference
      instead of a copy when a backlogged client must buffer a frame, but cost
      about 5 KiB more per connection; room broadcasts write to the sockets
      directly either way.  Off by default: idle connections stay cheap.
    """
    if slow_consumer not in ("close", "drop"):
        raise ValueError("slow_consumer must be 'close' or 'drop'")
    if ping_interval is not None and ping_timeout is not None and ping_timeout > ping_interval:
        raise ValueError("ping_timeout must not exceed ping_interval")
    if max_message_size is not None and max_message_size <= 0:
        raise ValueError("max_message_size must be positive or None")
    options = ConnectionOptions(max_message_size=max_message_size, max_queue=max_queue,
                                max_write_buffer=max_write_buffer,
                                drop_slow=slow_consumer == "drop", close_timeout=close_timeout)
    return Server(handler, host, port, options=options, ssl=ssl,
                  subprotocols=tuple(subprotocols), reuse_port=reuse_port,
                  ping_interval=ping_interval, ping_timeout=ping_timeout,
                  handshake_timeout=handshake_timeout, http_handler=http_handler,
                  backlog=backlog, read_buffer_size=read_buffer_size,
                  use_aiofastnet=use_aiofastnet)
