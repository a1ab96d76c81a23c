"""The server: :func:`serve` and :class:`Server`, on picows."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import inspect
import logging
import os
from collections.abc import Awaitable, Generator, Mapping
from functools import partial
from http import HTTPStatus
from types import TracebackType
from typing import Any

import picows
from picows import WSUpgradeResponse, WSUpgradeResponseWithListener
from picows.picows import WSProtocol  # type: ignore[attr-defined]

from . import _fanout
from ._http import RequestReader
from ._keepalive import Keepalive
from .connection import LINGER, Lingering, WebSocketConnection
from .handler import WebSocketHandler
from .options import ServerOptions, deflate_settings, keepalive_periods, picows_options
from .protocol.extensions.permessage_deflate import PerMessageDeflate, negotiate
from .protocol.handshake import (
    SAME_ORIGIN,
    Accept,
    Admission,
    ConnectionLimiter,
    HTTPResponse,
    OriginPolicy,
    Refused,
    Request,
    error_response,
)
from .protocol.messages import CloseCode, encode_close_payload
from .protocol.routing import Router

__all__ = ["SAME_ORIGIN", "Accept", "HTTPResponse", "Request", "Router", "Server", "serve"]

logger = logging.getLogger("reinhardt_ws")

try:
    import aiofastnet
except ImportError:  # pragma: no cover - a hard dependency of picows 2.3
    aiofastnet = None  # type: ignore[assignment]


class _Gate:
    """The listener factory of one TCP connection (picows calls it once, with the
    parsed request; it holds no reference to the protocol, so no cycle)."""

    __slots__ = ("header_items", "peer", "raw_head", "server")

    def __init__(self, server: Server, peer: Any,
                 header_items: tuple[tuple[str, str], ...] | None = None,
                 raw_head: bytes | None = None) -> None:
        self.server = server
        self.peer = peer
        self.header_items = header_items
        self.raw_head = raw_head

    def __call__(self, upgrade: picows.WSUpgradeRequest) -> Any:
        return self.server._listener_for(upgrade, self.peer, self.header_items, self.raw_head)


class Server:
    """A running WebSocket server; create it with :func:`serve`.

    Await it (``server = await serve(...)``) or use it as an async context
    manager; leaving the context closes it with 1001 (Going Away).
    """

    def __init__(self, handler: WebSocketHandler | Router | Mapping[str, WebSocketHandler],
                 host: str | None, port: int, options: ServerOptions) -> None:
        if isinstance(handler, Mapping):
            handler = Router.from_mapping(handler)
        if isinstance(handler, Router):
            for route in handler.websocket_routes:
                if not isinstance(route.handler, WebSocketHandler):
                    raise TypeError(f"route {route.pattern!r}: handler must be a "
                                    "WebSocketHandler instance")
            from .metrics import Metrics

            for http_route in handler.http_routes:
                if isinstance(http_route.fn, Metrics) and http_route.fn.server is None:
                    http_route.fn.bind(self)
            self.router: Router | None = handler
            self.handler: WebSocketHandler | None = None
        elif isinstance(handler, WebSocketHandler):
            self.router = None
            self.handler = handler
        else:
            raise TypeError("handler must be a WebSocketHandler instance, a Router or a "
                            "{path: handler} mapping")
        self.host = host
        self.options = options
        self._origins = OriginPolicy(options.origins)
        self._limits = ConnectionLimiter(options.max_connections,
                                         options.max_connections_per_ip)
        self._http_answered = 0
        # Incremented by WebSocketConnection._deliver (read by stats()).
        self._messages_received = 0
        self._bytes_received = 0
        self._closed_codes: collections.Counter[int] = collections.Counter()
        self._limit_hits: collections.Counter[str] = collections.Counter()
        # Workers wait for a connection's next message where tasks start lazily
        # (Python 3.11; see WebSocketConnection._run_handler).
        self._lingering = Lingering() if LINGER else None
        self._admission = Admission(
            handler=self.handler, router=self.router, origins=self._origins,
            process_request=options.process_request, subprotocols=options.subprotocols,
            limits=self._limits, max_request_line=options.max_request_line,
            max_request_head=options.max_request_head)
        self._requested_port = port
        self._server: asyncio.Server | None = None
        self._connections: dict[str, WebSocketConnection] = {}
        # Idle memory: picows keeps the 101 it sent on every connection; one per
        # distinct set of extra headers is shared instead (see _upgrade_response).
        self._responses_101: dict[tuple[tuple[str, str], ...], WSUpgradeResponse] = {}
        self._closing = False
        self._closed: asyncio.Event | None = None
        periods = keepalive_periods(options)
        # One timer for the keep-alive of every connection (see _keepalive).
        self._keepalive = (Keepalive(self._connections.values, *periods)
                           if periods is not None else None)

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
        # What picows.ws_create_server does, but each connection is first read by a
        # RequestReader (plain HTTP, limits), which hands upgrades to a picows
        # protocol whose listener factory knows the peer's address.
        protocol_args = (
            None, None, False,  # host+port, path, is_client_side
            kwargs.pop("logger_name"),
            True,  # disconnect_on_exception
            opts.handshake_timeout,
            # picows' keep-alive (a task per connection) is off: ours is one timer.
            kwargs.pop("enable_auto_ping"), kwargs.pop("auto_ping_idle_timeout"),
            kwargs.pop("auto_ping_reply_timeout"), picows.WSAutoPingStrategy.PING_WHEN_IDLE,
            kwargs.pop("enable_auto_pong"), kwargs.pop("max_frame_size"),
            None,  # extra_headers
            opts.read_buffer_size,
        )

        def ws_protocol(peer: Any, header_items: tuple[tuple[str, str], ...] | None = None,
                        raw_head: bytes | None = None) -> WSProtocol:
            return WSProtocol(*protocol_args[:3], _Gate(self, peer, header_items, raw_head),
                              *protocol_args[3:])

        def protocol_factory() -> RequestReader:
            return RequestReader(self, ws_protocol)

        loop = asyncio.get_running_loop()
        if opts.use_aiofastnet:
            if aiofastnet is None:
                raise RuntimeError("use_aiofastnet=True, but aiofastnet is not installed")
            create_server: Any = partial(aiofastnet.create_server, loop)
        else:
            create_server = loop.create_server
        self._server = await create_server(protocol_factory, self.host, self._requested_port,
                                           backlog=opts.backlog, **kwargs)
        if self._keepalive is not None:
            self._keepalive.start()
        logger.info("listening on %s (fan-out %s, pid %d)", self._addresses(),
                    _fanout.IMPLEMENTATION, os.getpid())
        return self

    def _addresses(self) -> str:
        """The bound addresses as URLs (one per socket), for the logs."""
        scheme = "wss" if self.options.ssl is not None else "ws"
        urls = []
        for sock in self.sockets:
            host, port = sock.getsockname()[:2]
            urls.append(f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}/")
        return " ".join(urls) or "nothing"

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

    def stats(self) -> dict[str, Any]:
        """Counters of the handshake gate, read at call time (a fresh dict)::

            {"connections": open WebSocket connections (adopted after the 101),
             "hosts": distinct remote addresses among them,
             "refused": {reason: handshakes refused}, "refused_total": N,
             "http_responses": plain HTTP requests answered by a route,
             "messages_received": whole messages received from clients,
             "bytes_received": their payload bytes}

        Refusal reasons: ``request_too_large`` (414, 431, 413), ``bad_request``
        (400, 505, and 426 for a plain GET on a WebSocket route),
        ``unsupported_version`` (426), ``not_found`` (404), ``method_not_allowed``
        (405), ``origin`` (403), ``process_request`` (the hook's own status),
        ``shutting_down``, ``max_connections`` (503), ``max_connections_per_ip``
        (429), ``error`` (500: a hook or HTTP handler raised).  Requests picows
        refuses itself after us (an invalid ``Sec-WebSocket-Key``: 400) and
        clients that time out before finishing their request are not counted.

        And of the connections: ``"closed"``: ``{close code: connections that
        ended with it}``; ``"limits"``: ``{limit: times it was hit}``, for
        ``message_rate`` (closed 1008), ``control_budget`` (a peer that does not
        read our pongs: closed 1008), ``slow_consumer`` (closed 1013),
        ``inbox_paused`` (reading paused: the inbox reached ``max_queue`` or
        ``max_queue_bytes``), ``authenticate`` (refused by the hook),
        ``ping_timeout`` (no pong to our keep-alive ping: closed 1001).
        """
        out = self._limits.stats()
        out["http_responses"] = self._http_answered
        out["messages_received"] = self._messages_received
        out["bytes_received"] = self._bytes_received
        out["closed"] = dict(self._closed_codes)
        out["limits"] = dict(self._limit_hits)
        return out

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
        if self._keepalive is not None:
            self._keepalive.stop()
        addresses = self._addresses()
        if self._server is not None:
            self._server.close()
        conns = list(self._connections.values())
        for conn in conns:
            conn._start_close(int(code), "server shutdown", shutdown=True)
        if conns:
            waiters = [asyncio.ensure_future(c.wait_closed()) for c in conns]
            _done, pending = await asyncio.wait(waiters, timeout=timeout)
            for conn in conns:
                conn._abort()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
            await asyncio.gather(*(c._shutdown_handlers(timeout) for c in conns))
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.wait_closed(), timeout=1.0)
            except (asyncio.TimeoutError, TimeoutError):
                pass
        if self._server is not None:
            logger.info("stopped listening on %s: closed %d connection%s with %d (pid %d)",
                        addresses, len(conns), "" if len(conns) == 1 else "s", int(code),
                        os.getpid())
        if self._closed is not None:
            self._closed.set()

    # -- connections ------------------------------------------------------------
    def _listener_for(self, upgrade: picows.WSUpgradeRequest, peer: Any,
                      header_items: tuple[tuple[str, str], ...] | None = None,
                      raw_head: bytes | None = None) -> Any:
        """picows' listener factory: every decision of the opening handshake, in the
        order docs/security.md ("Admission") gives.  Synchronous, and called before
        picows validates the upgrade headers, which it may still refuse (400).
        *header_items*: the head as the request reader parsed it, to size it
        without touching the keys of picows' headers (which would cost memory
        for as long as the connection lives); *raw_head*: the head itself, which
        the connection keeps for ``conn.headers`` instead of picows' parsed
        headers (~640 bytes against ~3.4 KiB for a browser's request)."""
        headers = upgrade.headers
        request = Request(upgrade.method.decode("latin-1"), upgrade.path.decode("latin-1"),
                          headers, peer)
        verdict = self._admission.decide(request, closing=self._closing,
                                         header_items=header_items)
        if isinstance(verdict, Refused):
            if verdict.error is not None:
                logger.error("process_request failed for %r", request,
                             exc_info=verdict.error)
            return self._refuse(verdict.response, verdict.reason)
        # picows wants the whole Connection value to be "upgrade"; Firefox sends
        # "keep-alive, Upgrade".  check_upgrade() found the token: say just that
        # (after the hooks, which see what the client sent).
        headers["Connection"] = "Upgrade"
        subprotocol = verdict.subprotocol
        extra: dict[str, str] = {}
        if subprotocol is not None:
            extra["Sec-WebSocket-Protocol"] = subprotocol
        # permessage-deflate (RFC 7692): negotiated from the offers, answered in the 101.
        extension = None
        deflate = deflate_settings(self.options)
        if deflate is not None:
            params = negotiate(_joined(headers, "sec-websocket-extensions"), deflate)
            if params is not None:
                extension = PerMessageDeflate(params, deflate, is_client=False)
                extra["Sec-WebSocket-Extensions"] = extension.response_header()
        conn = WebSocketConnection(path=request.raw_path,
                                   headers=raw_head if raw_head is not None else headers,
                                   subprotocol=subprotocol, opts=self.options,
                                   is_client=False, handler=verdict.handler, server=self,
                                   extension=extension)
        conn.user = verdict.user
        conn.path_params = verdict.path_params
        conn.remote_address = peer  # the reader's tuple, not a second copy
        # Counted and registered by _adopt() once picows sends the 101 (in this same
        # call from picows, so no other handshake runs in between): picows may still
        # refuse the request (400), and then the connection never opens nor closes.
        listener = _fanout.new_listener(conn)
        return WSUpgradeResponseWithListener(self._upgrade_response(extra), listener)

    def _upgrade_response(self, extra: dict[str, str]) -> WSUpgradeResponse:
        """The 101 with *extra* headers, one object per distinct set (at most 64
        kept; beyond, a fresh one each time).  picows writes this connection's
        ``Sec-WebSocket-Accept`` into it and serializes it at once, in the same
        call, so sharing it changes no byte on the wire; what it keeps is a
        reference (``transport.response``, which we never read) instead of a
        response of ~700 bytes per open connection."""
        key = tuple(extra.items())
        response = self._responses_101.get(key)
        if response is None:
            response = WSUpgradeResponse.create_101_response(extra_headers=extra or None)
            if len(self._responses_101) < 64:
                self._responses_101[key] = response
        return response

    def _http_response(self, request: Request, has_body: bool
                       ) -> tuple[HTTPResponse | Awaitable[HTTPResponse], str | None]:
        """The answer to a plain HTTP request (no ``Upgrade: websocket``), and the
        refusal reason to count (None: answered by a route or ``http_handler``).

        An HTTP route of the request's method (HEAD where GET is) answers; a path
        whose routes take other methods gets 405 with ``Allow``; else, for GET and
        HEAD, ``http_handler`` if set; a method other than GET and HEAD gets 405
        (``Allow: GET, HEAD``); a WebSocket route's path gets 426; else 404.  The
        answer may be awaitable (a coroutine route handler).
        """
        method = request.method
        try:
            if self.router is not None:
                match = self.router.match_http(method, request.encoded_path)
                if match.route is not None:
                    if has_body:
                        return error_response(413, "Content Too Large: request bodies are "
                                                   "not supported"), "request_too_large"
                    request.path_params = dict(match.params)
                    answer = match.route.fn(request)
                    if inspect.isawaitable(answer):
                        return answer, None
                    if not isinstance(answer, HTTPResponse):
                        raise TypeError(f"HTTP route {match.route.pattern!r} returned "
                                        f"{type(answer).__name__}, not an HTTPResponse")
                    return answer, None
                if match.allowed:
                    return error_response(405, "Method Not Allowed", {
                        "Allow": ", ".join(sorted(match.allowed))}), "method_not_allowed"
            if method not in ("GET", "HEAD"):
                return error_response(405, "Method Not Allowed",
                                      {"Allow": "GET, HEAD"}), "method_not_allowed"
            if self.options.http_handler is not None:
                legacy = self.options.http_handler(request.path, request.headers)
                if legacy is not None:
                    return legacy, None
        except Exception:
            logger.exception("HTTP handler failed for %r", request)
            return error_response(500, "Internal Server Error"), "error"
        router = self.router
        if router is not None and router.match_websocket(request.encoded_path).route:
            return error_response(426, "Upgrade Required: this is a WebSocket endpoint",
                                  {"Upgrade": "websocket", "Sec-WebSocket-Version": "13"}
                                  ), "bad_request"
        return error_response(404, "Not Found"), "not_found"

    def _refuse(self, answer: HTTPResponse, reason: str) -> WSUpgradeResponseWithListener:
        self._limits.refused(reason)
        return _http_answer(answer)

    def _adopt(self, conn: WebSocketConnection) -> None:
        self._connections[conn.id] = conn
        self._limits.opened(_host_of(conn.remote_address))

    def _forget(self, conn: WebSocketConnection) -> None:
        if self._connections.pop(conn.id, None) is not None:
            self._limits.closed(_host_of(conn.remote_address))
            code = conn.close_code
            self._closed_codes[code if code is not None else 1006] += 1

    def _note(self, limit: str) -> None:
        self._limit_hits[limit] += 1


def _host_of(address: Any) -> str | None:
    if isinstance(address, (tuple, list)) and address:
        return str(address[0])
    return None if address is None else str(address)


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


def serve(handler: WebSocketHandler | Router | Mapping[str, WebSocketHandler],
          host: str | None = "127.0.0.1", port: int = 8765, *,
          options: ServerOptions | None = None, **settings: Any) -> Server:
    """Create a WebSocket server running *handler*; ``await`` it to start listening
    (or use ``async with``).

    *handler* is one :class:`~reinhardt_ws.WebSocketHandler` (every path), a
    :class:`~reinhardt_ws.Router` (WebSocket and plain-HTTP routes; an unknown
    WebSocket path gets 404 at the handshake) or ``{pattern: handler}``.

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
