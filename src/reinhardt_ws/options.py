"""One validated, frozen options object per server (:class:`ServerOptions`) and per
client connection (:class:`ClientOptions`).

``serve(**options)`` and ``connect(**options)`` build one of these once; nothing
below re-validates.  Both share :class:`ConnectionOptions`, the settings every
connection reads, and :func:`picows_options` turns either into the keyword
arguments picows takes, written once for both sides.
"""

from __future__ import annotations

import logging
import ssl as ssl_module
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._logging import PicowsLogAdapter
from .protocol.extensions.permessage_deflate import DeflateSettings

if TYPE_CHECKING:
    from .connection import WebSocketConnection
    from .protocol.handshake import Accept, HTTPResponse, Request

__all__ = ["Authenticate", "ClientOptions", "ConnectionOptions", "DeflateSettings",
           "HTTPHandler", "ProcessRequest", "ServerOptions"]

MiB = 1024 * 1024

HTTPHandler = Callable[[str, Mapping[str, str]], "HTTPResponse | None"]
"""``http_handler(path, headers)`` answers plain HTTP requests (GET and HEAD), or
returns None (then the request gets 404)."""

ProcessRequest = Callable[["Request"], "HTTPResponse | Accept | None"]
"""``process_request(request)``, the handshake hook (named after python-websockets'):
called for every WebSocket upgrade that passed the HTTP checks, the route and the
Origin policy, synchronously, on the event loop, before the 101 and before any
connection object exists.  *request* is a :class:`~reinhardt_ws.Request`
(``method``, ``path``, ``query_string``, ``query``, ``headers``, ``remote_address``,
``path_params``).  Return None to admit; an :class:`~reinhardt_ws.HTTPResponse` with
a 4xx/5xx status (and headers such as ``WWW-Authenticate``) to refuse with exactly
that response; or :class:`~reinhardt_ws.Accept` to admit with ``conn.user`` set to
its ``user`` and, optionally, its ``subprotocol`` (one the client offered) answered.
A hook that raises, or returns anything else (a 1xx-3xx response, another type, a
subprotocol the client did not offer), refuses with 500 and is logged. It cannot
await (picows' handshake callback is synchronous): checks needing I/O belong in
``authenticate``, which runs after the 101."""

#: picows drops (without an answer) a request head of 16 KiB or more; our own
#: limits stay below, so that the client gets 414 / 431 instead.
_PICOWS_HEAD_CAP = 16 * 1024 - 1

Authenticate = Callable[["WebSocketConnection"], Awaitable[object]]
"""``await authenticate(conn)`` runs after the 101 and before ``on_connect``: it
returns the connection's identity (stored as ``conn.user``) or raises
:class:`~reinhardt_ws.AuthenticationFailed` / :class:`~reinhardt_ws.PermissionDenied`."""


@dataclass(frozen=True)
class ConnectionOptions:
    """What every connection reads: limits, timeouts and the slow-consumer policy.

    - ``max_message_size``: limit of a whole message, over all its fragments;
      bigger gets close 1009.  ``None``: no limit.
    - ``max_queue`` / ``max_queue_bytes``: messages, and bytes of messages, received
      and not yet handled, per connection, before the connection stops reading its
      socket (TCP backpressure).  One message is always taken, however large (up
      to ``max_message_size``); ``max_queue_bytes`` defaults to
      ``max_message_size`` (1 MiB when that is None).
    - ``max_write_buffer``: bytes a connection may have buffered (queued plus in
      the transport) before it counts as a slow consumer.  A connection with
      nothing buffered always takes one broadcast frame, however large.
    - ``slow_consumer``: what then happens to room broadcasts: ``"close"`` closes it
      with 1013 (Try Again Later), ``"drop"`` skips messages for it while it is over
      the limit.  A connection's own ``send()`` waits instead (backpressure).
    - ``close_timeout``: seconds to wait for the peer's close frame.
    - ``ping_interval`` / ``ping_timeout``: ping a connection from which no frame
      came for ``ping_interval`` seconds, and close it with 1001 (dropping TCP at
      once) when the pong does not come within ``ping_timeout``
      (``ping_timeout <= ping_interval``; ``None``: ``ping_interval``).
      ``ping_interval=None`` sends no pings.  One timer per server sweeps all its
      connections every ``min(ping_interval, ping_timeout) / 8``, so the ping
      goes out after ``ping_interval`` to ``1.25 * ping_interval`` of silence.
    """

    max_message_size: int | None = 1 * MiB
    max_queue: int = 16
    max_queue_bytes: int | None = None
    max_write_buffer: int = 1 * MiB
    slow_consumer: str = "close"
    close_timeout: float = 5.0
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0

    def __post_init__(self) -> None:
        if self.max_message_size is not None and self.max_message_size <= 0:
            raise ValueError("max_message_size must be positive or None")
        if self.max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        if self.max_queue_bytes is None:
            object.__setattr__(self, "max_queue_bytes", self.max_message_size or MiB)
        elif self.max_queue_bytes < 1:
            raise ValueError("max_queue_bytes must be positive")
        if self.max_write_buffer < 1:
            raise ValueError("max_write_buffer must be positive")
        if self.slow_consumer not in ("close", "drop"):
            raise ValueError("slow_consumer must be 'close' or 'drop'")
        if self.close_timeout < 0:
            raise ValueError("close_timeout must not be negative")
        for name in ("ping_interval", "ping_timeout"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive or None")
        if (self.ping_interval is not None and self.ping_timeout is not None
                and self.ping_timeout > self.ping_interval):
            raise ValueError("ping_timeout must not exceed ping_interval")

    @property
    def drop_slow(self) -> bool:
        return self.slow_consumer == "drop"


@dataclass(frozen=True)
class ServerOptions(ConnectionOptions):
    """Everything :func:`~reinhardt_ws.serve` takes besides the handler, host and port.

    - ``handshake_timeout``: seconds a client has to complete the opening handshake.
    - ``ssl``: a server-side ``SSLContext`` for ``wss://``.
    - ``subprotocols``: the server's subprotocols, in its order of preference.
    - ``reuse_port``: bind with ``SO_REUSEPORT``.
    - ``http_handler(path, headers)``: answers plain HTTP requests on the same port
      (kept for compatibility; a :class:`~reinhardt_ws.Router` with ``.http()``
      routes is the better way).  Returning None means "not handled": 404.
    - ``origins``: the ``Origin`` headers admitted (see
      :class:`~reinhardt_ws.protocol.handshake.OriginPolicy`): exact origins,
      ``"https://*.example.com"`` patterns, ``SAME_ORIGIN``, and ``None`` for "no
      Origin header".  Others get 403 before any connection object exists.
      ``origins=None`` (the default) admits every origin.
    - ``process_request(request)``: a synchronous handshake hook
      (:data:`ProcessRequest`), run after the route and Origin checks.
    - ``max_connections`` / ``max_connections_per_ip``: open WebSocket connections
      allowed in total (over: 503) and from one remote address (over: 429), counted
      from the 101 to the end of the connection.  ``None``: unlimited.
    - ``max_request_line``: bytes of request target allowed (over: 414);
      ``max_request_head``: bytes of request line plus headers (over: 431).  Both
      below 16 KiB: picows, which reads upgrades after us, drops heads that big.
    - ``backlog``: the listening socket's accept queue.
    - ``read_buffer_size``: initial read buffer per connection (it grows as needed);
      small keeps idle connections cheap.
    - ``message_rate`` / ``message_burst``: a token bucket per connection: at most
      ``message_rate`` messages a second on average, ``message_burst`` (default:
      ``max(1, message_rate)``) at once.  A client over it is closed with 1008
      (Policy Violation).  ``None`` (the default): no limit.
    - ``authenticate``: an async hook run for each connection after the opening
      handshake and before ``on_connect``; messages the client sends meanwhile are
      held, and dropped if it refuses (see :data:`Authenticate`).
    - ``compression``: ``"deflate"`` (the default) negotiates permessage-deflate
      (RFC 7692) with clients that offer it, with :class:`DeflateSettings`' server
      defaults: no context takeover on our side (so that a room broadcast is
      compressed once for every member), a 12-bit window, zlib memLevel 5,
      messages under 128 bytes sent plain; a :class:`DeflateSettings` tunes it;
      ``None`` declines every extension.
    - ``use_aiofastnet``: run the connections on picows' aiofastnet transports
      instead of the event loop's own.  They read faster and keep a reference
      instead of a copy when a backlogged client must buffer a frame, but cost
      about 5 KiB more per connection; room broadcasts write to the sockets
      directly either way.  Off by default: idle connections stay cheap.
    """

    handshake_timeout: float | None = 5.0
    ssl: ssl_module.SSLContext | None = None
    subprotocols: tuple[str, ...] = ()
    reuse_port: bool = False
    http_handler: HTTPHandler | None = None
    backlog: int = 1024
    read_buffer_size: int = 2048
    use_aiofastnet: bool = False
    authenticate: Authenticate | None = None
    message_rate: float | None = None
    message_burst: float | None = None
    origins: Sequence[str | None] | None = None
    process_request: ProcessRequest | None = None
    max_connections: int | None = None
    max_connections_per_ip: int | None = None
    max_request_line: int = 4096
    max_request_head: int = 8192
    compression: str | DeflateSettings | None = "deflate"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "subprotocols", tuple(self.subprotocols))
        if self.message_rate is not None:
            if self.message_rate <= 0:
                raise ValueError("message_rate must be positive or None")
            if self.message_burst is None:
                object.__setattr__(self, "message_burst", max(1.0, float(self.message_rate)))
            elif self.message_burst < 1:
                raise ValueError("message_burst must be at least 1")
        if self.origins is not None:
            if isinstance(self.origins, str):
                raise TypeError("origins must be a list of origins, not one string")
            object.__setattr__(self, "origins", tuple(self.origins))
            from .protocol.handshake import OriginPolicy

            OriginPolicy(self.origins)  # raises on a malformed entry
        for name in ("max_connections", "max_connections_per_ip"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, or None")
        if not 64 <= self.max_request_line <= self.max_request_head:
            raise ValueError("max_request_line must be at least 64 and at most "
                             "max_request_head")
        if self.max_request_head > _PICOWS_HEAD_CAP:
            raise ValueError(f"max_request_head must be at most {_PICOWS_HEAD_CAP}: "
                             "picows drops larger requests without an answer")
        _check_compression(self.compression)
        if self.backlog < 1:
            raise ValueError("backlog must be at least 1")
        if self.read_buffer_size < 1:
            raise ValueError("read_buffer_size must be positive")


@dataclass(frozen=True)
class ClientOptions(ConnectionOptions):
    """Everything :func:`~reinhardt_ws.connect` takes besides the URL.

    Clients do not ping unless asked (``ping_interval=None``) and never drop their
    own sends (``slow_consumer`` does not apply: a client has no rooms).
    ``compression``: ``"deflate"`` (the default) offers permessage-deflate as
    python-websockets does (``permessage-deflate; client_max_window_bits``), a
    :class:`DeflateSettings` tunes the offer, ``None`` offers nothing.
    """

    ping_interval: float | None = None
    ping_timeout: float | None = None
    subprotocols: tuple[str, ...] = ()
    ssl: ssl_module.SSLContext | None = None
    open_timeout: float | None = 10.0
    extra_headers: Mapping[str, str] = field(default_factory=dict)
    compression: str | DeflateSettings | None = "deflate"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "subprotocols", tuple(self.subprotocols))
        object.__setattr__(self, "extra_headers", dict(self.extra_headers or {}))
        _check_compression(self.compression)


def _check_compression(value: object) -> None:
    if value is not None and value != "deflate" and not isinstance(value, DeflateSettings):
        raise ValueError("compression must be 'deflate', a DeflateSettings or None")


def deflate_settings(opts: ServerOptions | ClientOptions) -> DeflateSettings | None:
    """The permessage-deflate settings *opts* ask for (None: no compression)."""
    value = opts.compression
    if value is None or isinstance(value, DeflateSettings):
        return value
    return DeflateSettings() if isinstance(opts, ServerOptions) else DeflateSettings.client()


def keepalive_periods(opts: ConnectionOptions) -> tuple[float, float] | None:
    """``(interval, timeout)`` of the keep-alive *opts* ask for, or None (no pings).
    ``ping_timeout=None`` waits ``ping_interval`` for the pong."""
    interval = opts.ping_interval
    if interval is None or interval <= 0:
        return None
    return float(interval), float(opts.ping_timeout or interval)


def picows_options(opts: ConnectionOptions, logger_name: str) -> dict[str, Any]:
    """The picows keyword arguments both ``ws_create_server`` and ``ws_connect`` take."""
    return {
        # We answer pings ourselves, through the write budget (docs/security.md),
        # and send ours from one timer per server (_keepalive), not from picows'
        # task per connection.
        "enable_auto_pong": False,
        "enable_auto_ping": False,
        "auto_ping_idle_timeout": 20.0,
        "auto_ping_reply_timeout": 20.0,
        "max_frame_size": opts.max_message_size or (1 << 62),
        # A Logger, not a name: picows would prefix a name with "picows.".
        "logger_name": PicowsLogAdapter(logging.getLogger(logger_name), {}),
    }
