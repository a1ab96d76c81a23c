"""The client: :func:`connect`, on picows."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Generator
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import picows

from . import _fanout
from .connection import WebSocketConnection
from .errors import HandshakeError
from .options import ClientOptions, deflate_settings, picows_options
from .protocol.extensions.permessage_deflate import (
    NegotiationError,
    PerMessageDeflate,
    check_response,
    client_offer,
)
from .reconnect import Backoff, reconnecting

__all__ = ["connect"]


class _Connect:
    """What :func:`connect` returns: awaitable, and an async context manager."""

    def __init__(self, url: str, options: ClientOptions, backoff: Backoff) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss"):
            raise ValueError(f"not a ws:// or wss:// URL: {url!r}")
        self.url = url
        self.options = options
        self.backoff = backoff
        self._conn: WebSocketConnection | None = None

    def __aiter__(self) -> AsyncIterator[WebSocketConnection]:
        return reconnecting(self._connect, self.backoff)

    async def _connect(self) -> WebSocketConnection:
        parts = urlsplit(self.url)
        # The request target, as the server's conn.path shows it: query included.
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        opts = self.options
        headers = dict(opts.extra_headers)
        if opts.subprotocols:
            headers["Sec-WebSocket-Protocol"] = ", ".join(opts.subprotocols)
        deflate = deflate_settings(opts)
        if deflate is not None:
            headers["Sec-WebSocket-Extensions"] = client_offer(deflate)

        def factory(request: Any, response: Any) -> Any:
            offered = response.headers.get("sec-websocket-protocol")
            if offered is not None and offered not in opts.subprotocols:
                raise HandshakeError(f"server chose a subprotocol we did not offer: {offered!r}",
                                     int(response.status))
            answer = response.headers.get("sec-websocket-extensions")
            extension = None
            if deflate is None:
                if answer:
                    raise HandshakeError(f"server accepted extensions we did not offer: "
                                         f"{answer!r}", int(response.status))
            else:
                try:
                    params = check_response(answer, deflate)
                except NegotiationError as exc:
                    raise HandshakeError(f"invalid permessage-deflate answer: {exc}",
                                         int(response.status)) from None
                if params is not None:
                    extension = PerMessageDeflate(params, deflate, is_client=True)
            conn = WebSocketConnection(path=path, headers=response.headers,
                                       subprotocol=offered, opts=opts, is_client=True,
                                       extension=extension)
            return _fanout.new_listener(conn)

        try:
            _transport, listener = await asyncio.wait_for(
                picows.ws_connect(
                    factory,
                    self.url,
                    ssl_context=opts.ssl,
                    websocket_handshake_timeout=opts.open_timeout,
                    extra_headers=headers or None,
                    **picows_options(opts, "reinhardt_ws.picows.client"),
                ),
                opts.open_timeout,
            )
        except picows.WSHandshakeError as exc:
            status = int(exc.response.status) if exc.response is not None else None
            raise HandshakeError(str(exc), status, exc.raw_body or b"") from exc
        except (asyncio.TimeoutError, TimeoutError) as exc:
            raise HandshakeError(f"opening handshake with {self.url} timed out") from exc
        conn = getattr(listener, "conn", None)
        if not isinstance(conn, WebSocketConnection):
            # picows returns without a listener when the peer hung up mid-handshake.
            raise HandshakeError(f"{self.url} closed the connection during the opening handshake")
        return conn

    def __await__(self) -> Generator[Any, None, WebSocketConnection]:
        return self._connect().__await__()

    async def __aenter__(self) -> WebSocketConnection:
        self._conn = await self._connect()
        return self._conn

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._conn is not None:
            await self._conn.close()


def connect(url: str, *, options: ClientOptions | None = None, backoff: Backoff | None = None,
            **settings: Any) -> _Connect:
    """Open a client connection to a ``ws://`` or ``wss://`` URL.

    Use ``conn = await connect(url)`` or ``async with connect(url) as conn``
    (leaving the block closes it with 1000).  The settings are the fields of
    :class:`~reinhardt_ws.ClientOptions` as keyword arguments (``subprotocols``,
    ``max_message_size`` (1 MiB), ``ssl``, ``open_timeout`` (10 s),
    ``close_timeout``, ``max_queue``, ``ping_interval``, ``ping_timeout``,
    ``extra_headers``), or a ready *options* object.  Raises
    :class:`~reinhardt_ws.HandshakeError` (with the HTTP ``status``) when the
    server refuses the upgrade, hangs up during it or lets it time out, and
    ``OSError`` when the TCP connection (or the TLS handshake) fails.  ``ssl``
    overrides the default context for ``wss://``.  Received messages queue up
    to ``max_queue``; past that the client stops reading the socket until
    ``recv()`` catches up.

    **Reconnecting:** ``async for conn in connect(url): ...`` yields a
    connection, and each time the loop comes round again (typically after
    ``ConnectionClosed`` ended the body: ``continue``), a new one; a previous
    connection still open is closed first.  Attempts are spaced by *backoff*
    (:class:`~reinhardt_ws.Backoff`: 1 s, doubling, capped at 30 s, 10 %
    jitter, unlimited attempts by default); network failures, timeouts and HTTP
    5xx/429 refusals are retried, other refusals raise at once.  What to restore
    on the new connection (the rooms it was in and their positions, for a
    recovering join) is the application's: the iterator knows no protocol.
    """
    if options is None:
        opts = ClientOptions(**settings)
    else:
        opts = dataclasses.replace(options, **settings) if settings else options
    return _Connect(url, opts, backoff if backoff is not None else Backoff())
