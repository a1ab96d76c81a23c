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
    HTTPHandler,
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
from .server import HTTPResponse, Server, serve

__all__ = [
    "IMPLEMENTATION",
    "TOKEN_SUBPROTOCOL_PREFIX",
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
    "ProtocolError",
    "Publication",
    "ReceiveError",
    "RoomLimitError",
    "RoomManager",
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
    "serve",
]

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .rooms.redis import RedisBackend as RedisBackend

    IMPLEMENTATION: str


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
