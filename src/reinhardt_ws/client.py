"""The client: :func:`connect`, on picows."""

from __future__ import annotations

import asyncio
import logging
import ssl as ssl_module
from collections.abc import Generator, Iterable, Mapping
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import picows

from .connection import ConnectionListener, ConnectionOptions, WebSocketConnection
from .errors import HandshakeError
from .server import MiB

__all__ = ["connect"]


class _Connect:
    """What :func:`connect` returns: awaitable, and an async context manager."""

    def __init__(self, url: str, *, subprotocols: tuple[str, ...],
                 max_message_size: int | None, ssl: ssl_module.SSLContext | None,
                 open_timeout: float | None, close_timeout: float, max_queue: int,
                 ping_interval: float | None, ping_timeout: float | None,
                 extra_headers: Mapping[str, str] | None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss"):
            raise ValueError(f"not a ws:// or wss:// URL: {url!r}")
        self.url = url
        self._subprotocols = subprotocols
        self._ssl = ssl
        self._open_timeout = open_timeout
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._extra_headers = dict(extra_headers or {})
        self._options = ConnectionOptions(
            max_message_size=max_message_size, max_queue=max_queue,
            max_write_buffer=1 * MiB, drop_slow=False, close_timeout=close_timeout)
        self._conn: WebSocketConnection | None = None

    async def _connect(self) -> WebSocketConnection:
        parts = urlsplit(self.url)
        # The request target, as the server's conn.path shows it: query included.
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        headers = dict(self._extra_headers)
        if self._subprotocols:
            headers["Sec-WebSocket-Protocol"] = ", ".join(self._subprotocols)
        opts = self._options

        def factory(request: Any, response: Any) -> ConnectionListener:
            offered = response.headers.get("sec-websocket-protocol")
            if offered is not None and offered not in self._subprotocols:
                raise HandshakeError(f"server chose a subprotocol we did not offer: {offered!r}",
                                     int(response.status))
            conn = WebSocketConnection(path=path, headers=response.headers,
                                       subprotocol=offered, opts=opts, is_client=True)
            return ConnectionListener(conn)

        ping = self._ping_interval is not None and self._ping_interval > 0
        try:
            _transport, listener = await asyncio.wait_for(
                picows.ws_connect(
                    factory,
                    self.url,
                    ssl_context=self._ssl,
                    websocket_handshake_timeout=self._open_timeout,
                    enable_auto_pong=False,
                    enable_auto_ping=ping,
                    auto_ping_idle_timeout=float(self._ping_interval or 20),
                    auto_ping_reply_timeout=float(self._ping_timeout or self._ping_interval or 20),
                    max_frame_size=opts.max_message_size or (1 << 62),
                    extra_headers=headers or None,
                    logger_name=logging.LoggerAdapter(logging.getLogger("reinhardt_ws.picows.client")),
                ),
                self._open_timeout,
            )
        except picows.WSHandshakeError as exc:
            status = int(exc.response.status) if exc.response is not None else None
            raise HandshakeError(str(exc), status, exc.raw_body or b"") from exc
        except (asyncio.TimeoutError, TimeoutError) as exc:
            raise HandshakeError(f"opening handshake with {self.url} timed out") from exc
        if not isinstance(listener, ConnectionListener):
            # picows returns without a listener when the peer hung up mid-handshake.
            raise HandshakeError(f"{self.url} closed the connection during the opening handshake")
        return listener.conn

    def __await__(self) -> Generator[Any, None, WebSocketConnection]:
        return self._connect().__await__()

    async def __aenter__(self) -> WebSocketConnection:
        self._conn = await self._connect()
        return self._conn

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._conn is not None:
            await self._conn.close()


def connect(
    url: str,
    *,
    subprotocols: Iterable[str] = (),
    max_message_size: int | None = 1 * MiB,
    ssl: ssl_module.SSLContext | None = None,
    open_timeout: float | None = 10.0,
    close_timeout: float = 5.0,
    max_queue: int = 16,
    ping_interval: float | None = None,
    ping_timeout: float | None = None,
    extra_headers: Mapping[str, str] | None = None,
) -> _Connect:
    """Open a client connection to a ``ws://`` or ``wss://`` URL.

    Use ``conn = await connect(url)`` or ``async with connect(url) as conn``
    (leaving the block closes it with 1000).  Raises
    :class:`~reinhardt_ws.HandshakeError` (with the HTTP ``status``) when the
    server refuses the upgrade, hangs up during it or lets it time out, and
    ``OSError`` when the TCP connection (or the TLS handshake) fails.  ``ssl``
    overrides the default context for ``wss://``.  Received messages queue up
    to ``max_queue``; past that the client stops reading the socket until
    ``recv()`` catches up.
    """
    return _Connect(url, subprotocols=tuple(subprotocols), max_message_size=max_message_size,
                    ssl=ssl, open_timeout=open_timeout, close_timeout=close_timeout,
                    max_queue=max_queue, ping_interval=ping_interval,
                    ping_timeout=ping_timeout, extra_headers=extra_headers)
