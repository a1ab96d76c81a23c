"""reinhardt_ws: a WebSocket server for Python whose room broadcasts run at C speed.

Everything public is importable from here; ``reinhardt_ws._fastbroadcast`` (the
compiled fan-out) and the other underscore modules are private.
``IMPLEMENTATION`` tells which fan-out runs: ``"cython"`` or ``"python"``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import _fanout
from .client import connect
from .connection import WebSocketConnection
from .errors import (
    AuthenticationFailed,
    ConnectionClosed,
    HandshakeError,
    PermissionDenied,
    ProtocolError,
    ReceiveError,
    RoomLimitError,
    SendError,
    SendTypeError,
    WebSocketError,
)
from .handler import WebSocketHandler
from .options import (
    Authenticate,
    ClientOptions,
    ConnectionOptions,
    DeflateSettings,
    HTTPHandler,
    ProcessRequest,
    ServerOptions,
)
from .policy import AllowAll, ClaimsPolicy, Policy, authorize
from .protocol.auth import (
    TOKEN_SUBPROTOCOL_PREFIX,
    BearerTokenAuth,
    SignedTokenAuth,
    TokenSigner,
    bearer_subprotocol,
    extract_token,
    parse_query,
)
from .protocol.messages import CloseCode, Message, MessageType, WebSocketMessage
from .reconnect import Backoff
from .rooms import (
    BroadcastResult,
    HistoryPolicy,
    HistoryResult,
    InMemoryBackend,
    JoinResult,
    Position,
    Publication,
    RoomManager,
)
from .runner import run, serve_until_signal
from .server import SAME_ORIGIN, Accept, HTTPResponse, Request, Router, Server, serve

__all__ = [
    "IMPLEMENTATION",
    "SAME_ORIGIN",
    "TOKEN_SUBPROTOCOL_PREFIX",
    "Accept",
    "AllowAll",
    "Authenticate",
    "AuthenticationFailed",
    "Backoff",
    "BearerTokenAuth",
    "BroadcastResult",
    "ClaimsPolicy",
    "ClientOptions",
    "CloseCode",
    "ConnectionClosed",
    "ConnectionOptions",
    "DeflateSettings",
    "HTTPHandler",
    "HTTPResponse",
    "HandshakeError",
    "HistoryPolicy",
    "HistoryResult",
    "InMemoryBackend",
    "JoinResult",
    "Message",
    "MessageType",
    "PermissionDenied",
    "Policy",
    "Position",
    "ProcessRequest",
    "ProtocolError",
    "Publication",
    "ReceiveError",
    "Request",
    "RoomLimitError",
    "RoomManager",
    "Router",
    "SendError",
    "SendTypeError",
    "Server",
    "ServerOptions",
    "SignedTokenAuth",
    "TokenSigner",
    "WebSocketConnection",
    "WebSocketError",
    "WebSocketHandler",
    "WebSocketMessage",
    "__version__",
    "authorize",
    "bearer_subprotocol",
    "connect",
    "extract_token",
    "parse_query",
    "run",
    "serve",
    "serve_until_signal",
]

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .rooms.redis import RedisBackend as RedisBackend

    IMPLEMENTATION: str
    """Which fan-out new hubs use: ``"cython"`` (the compiled extension) or
    ``"python"`` (the twin); read at access time."""


def __getattr__(name: str) -> object:
    # Read at access time, so it always names the fan-out that new hubs use.
    if name == "IMPLEMENTATION":
        return _fanout.IMPLEMENTATION
    # Imported on first use: the package must not need the `redis` extra.
    if name == "RedisBackend":
        try:
            from .rooms.redis import RedisBackend
        except ImportError as exc:
            raise ImportError("reinhardt_ws.RedisBackend needs the redis extra: "
                              "pip install 'reinhardt-ws[redis]'") from exc
        return RedisBackend
    raise AttributeError(f"module 'reinhardt_ws' has no attribute {name!r}")
