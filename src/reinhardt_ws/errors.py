"""The exceptions of reinhardt_ws; every one derives from :class:`WebSocketError`."""

from __future__ import annotations

__all__ = [
    "AuthenticationFailed",
    "ConnectionClosed",
    "HandshakeError",
    "PermissionDenied",
    "ProtocolError",
    "ReceiveError",
    "RoomLimitError",
    "SendError",
    "SendTypeError",
    "WebSocketError",
]


class WebSocketError(Exception):
    """Base class of every error this library raises on purpose."""


class SendError(WebSocketError):
    """A message could not be sent (invalid message, or the connection is gone)."""


class SendTypeError(SendError, TypeError):
    """What was given is not a message (a ``str``, bytes, :class:`Message` or
    :class:`WebSocketMessage`): raised by sends and broadcasts alike."""


class ReceiveError(WebSocketError):
    """A message could not be received."""


class ConnectionClosed(SendError, ReceiveError):
    """The connection is closed: raised by any send or receive on it.

    ``code`` is the close code that ended it (1006 when it ended without a close
    frame) and ``reason`` the close reason.  It is a :class:`SendError` and a
    :class:`ReceiveError`, so code written against either catches it.
    """

    def __init__(self, code: int = 1006, reason: str = "") -> None:
        self.code = int(code)
        self.reason = reason
        super().__init__(f"connection closed: code={self.code} reason={reason!r}")


class ProtocolError(WebSocketError):
    """Input broke the WebSocket protocol or a message format.

    ``code`` is the close code the connection answers it with (1002 by default,
    1007 for invalid UTF-8, 1009 for an oversized message).
    """

    def __init__(self, message: str, code: int = 1002) -> None:
        self.code = int(code)
        super().__init__(message)


class HandshakeError(WebSocketError):
    """A client's opening handshake failed; ``status`` is the HTTP status, if any."""

    def __init__(self, message: str, status: int | None = None, body: bytes = b"") -> None:
        self.status = status
        self.body = body
        super().__init__(message)


class AuthenticationFailed(WebSocketError):
    """Raised by an ``authenticate`` hook: the client did not prove who it is.

    The connection is closed with ``code`` (3000, "Unauthorized" in the IANA
    WebSocket close-code registry) and ``reason`` (cut to the 123 UTF-8 bytes a
    close frame holds); nothing it sent is dispatched.  ``code`` may be any code
    a close frame may carry (4401 for clients that expect graphql-ws' codes, say);
    ``ValueError`` for one it may not (1005, 1006, 2999...).
    """

    default_code = 3000

    def __init__(self, reason: str = "unauthorized", code: int | None = None) -> None:
        from .protocol.messages import is_valid_close_code  # here: messages imports us

        self.code = int(code if code is not None else self.default_code)
        if not is_valid_close_code(self.code):
            raise ValueError(f"close code {self.code} may not be sent (RFC 6455 section 7.4)")
        self.reason = reason
        super().__init__(reason)


class PermissionDenied(AuthenticationFailed):
    """The client is known but may not do this (IANA close code 3003, "Forbidden")."""

    default_code = 3003

    def __init__(self, reason: str = "forbidden", code: int | None = None) -> None:
        super().__init__(reason, code)


class RoomLimitError(WebSocketError):
    """A connection asked to join one room more than the manager's
    ``max_rooms_per_connection`` allows (``limit``); its rooms are unchanged."""

    def __init__(self, limit: int) -> None:
        self.limit = int(limit)
        super().__init__(f"a connection may be in at most {self.limit} rooms")
