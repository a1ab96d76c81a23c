"""The server: :func:`serve` and :class:`Server`, on picows."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Generator
from http import HTTPStatus
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

import picows
from picows import WSUpgradeResponse, WSUpgradeResponseWithListener

from ._listener import ConnectionListener
from .connection import WebSocketConnection
from .handler import WebSocketHandler
from .options import ServerOptions, deflate_settings, picows_options
from .protocol.extensions.permessage_deflate import PerMessageDeflate, negotiate
from .protocol.handshake import HTTPResponse, is_upgrade, negotiate_subprotocol
from .protocol.messages import CloseCode, encode_close_payload

__all__ = ["HTTPResponse", "Server", "serve"]

logger = logging.getLogger("reinhardt_ws")


class Server:
    """A running WebSocket server; create it with :func:`serve`.

    Await it (``server = await serve(...)``) or use it as an async context
    manager; leaving the context closes it with 1001 (Going Away).
    """

    def __init__(self, handler: WebSocketHandler, host: str | None, port: int,
                 options: ServerOptions) -> None:
        if not isinstance(handler, WebSocketHandler):
            raise TypeError("handler must be a WebSocketHandler instance")
        self.handler = handler
        self.host = host
        self.options = options
        self._requested_port = port
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
        opts = self.options
        kwargs: dict[str, Any] = picows_options(opts, "reinhardt_ws.picows")
        if opts.ssl is not None:
            kwargs["ssl"] = opts.ssl
        if opts.reuse_port:
            kwargs["reuse_port"] = True
        self._server = await picows.ws_create_server(
            self._listener_for,
            self.host,
            self._requested_port,
            backlog=opts.backlog,
            websocket_handshake_timeout=opts.handshake_timeout,
            read_buffer_init_size=opts.read_buffer_size,
            use_aiofastnet=opts.use_aiofastnet,
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
        http_handler = self.options.http_handler
        if not is_upgrade(headers) and http_handler is not None:
            answer = http_handler(path, headers)
            if answer is not None:
                return _http_answer(answer)
        # Anything else must be a valid upgrade: picows answers 400 otherwise.
        if self._closing:
            return _http_answer(HTTPResponse(503, b"server shutting down\n"))
        subprotocol = negotiate_subprotocol(headers.get("sec-websocket-protocol"),
                                            self.options.subprotocols)
        extra: dict[str, str] = {}
        if subprotocol is not None:
            extra["Sec-WebSocket-Protocol"] = subprotocol
        # -- permessage-deflate (RFC 7692) -------------------------------------
        extension = None
        deflate = deflate_settings(self.options)
        if deflate is not None:
            params = negotiate(_joined(headers, "sec-websocket-extensions"), deflate)
            if params is not None:
                extension = PerMessageDeflate(params, deflate, is_client=False)
                extra["Sec-WebSocket-Extensions"] = extension.response_header()
        # -- end permessage-deflate ---------------------------------------------
        conn = WebSocketConnection(path=raw_path, headers=headers, subprotocol=subprotocol,
                                   opts=self.options, is_client=False,
                                   handler=self.handler, server=self, extension=extension)
        # Registered by _adopt() once the upgrade succeeds: picows may still refuse
        # the request (400), and then the connection never opens nor closes.
        listener = ConnectionListener(conn)
        if not extra:
            return listener
        response = WSUpgradeResponse.create_101_response(extra_headers=extra)
        return WSUpgradeResponseWithListener(response, listener)

    def _adopt(self, conn: WebSocketConnection) -> None:
        self._connections[conn.id] = conn

    def _forget(self, conn: WebSocketConnection) -> None:
        self._connections.pop(conn.id, None)


def _joined(headers: Any, name: str) -> str | None:
    """Every *name* header of a request, joined with commas (RFC 9110 5.3)."""
    getall = getattr(headers, "getall", None)
    if getall is None:
        value = headers.get(name)
        return str(value) if value is not None else None
    values = getall(name, ())
    return ", ".join(values) if values else None


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


def serve(handler: WebSocketHandler, host: str | None = "127.0.0.1", port: int = 8765, *,
          options: ServerOptions | None = None, **settings: Any) -> Server:
    """Create a WebSocket server running *handler*; ``await`` it to start listening
    (or use ``async with``).

    The settings are the fields of :class:`~reinhardt_ws.ServerOptions`, as keyword
    arguments (``max_message_size=...``, ``ping_interval=...``), or a ready
    *options* object (keyword arguments then override its fields).  They are
    validated once, here: a bad value raises ``ValueError``, an unknown name
    ``TypeError``.  Defaults: messages up to 1 MiB, pings every 20 s, a 1 MiB
    write budget per connection whose slow consumers are closed with 1013.
    """
    if options is None:
        opts = ServerOptions(**settings)
    else:
        opts = dataclasses.replace(options, **settings) if settings else options
    return Server(handler, host, port, opts)
