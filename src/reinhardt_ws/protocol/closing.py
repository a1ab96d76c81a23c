"""The closing handshake of one connection as one state machine (RFC 6455 section 7),
without I/O.

The connection feeds it events (we decide to close, picows closed by itself, the
peer's close frame arrived, the socket is gone) and it answers what to do: send a
close frame or not, echo the peer's code, drop TCP.  It alone decides the state
(OPEN, CLOSING, CLOSED) and which close code and reason the connection reports.
"""

from __future__ import annotations

import enum

from .messages import CloseCode, is_valid_close_code

__all__ = ["CloseState", "ClosingHandshake", "PeerClose", "fit_reason"]


def fit_reason(reason: str) -> str:
    """*reason* cut to what a close frame holds (123 UTF-8 bytes), on a character
    boundary."""
    raw = reason.encode("utf-8")
    return reason if len(raw) <= 123 else raw[:123].decode("utf-8", "ignore")


class CloseState(enum.IntEnum):
    OPEN = 0
    CLOSING = 1
    CLOSED = 2


class PeerClose(enum.Enum):
    """What to do when the peer's close frame arrives."""

    #: Echo its code (our close frame goes out now), then drop TCP.
    ECHO = "echo"
    #: We had sent ours: both have crossed, drop TCP.
    FINISH = "finish"
    #: Its close code may not appear on the wire: answer 1002, then drop TCP.
    FAIL = "fail"


class ClosingHandshake:
    """State, close code and reason of one connection.

    ``code``/``reason`` is what the connection reports: the code of the first
    close frame that crossed (ours, or the peer's when it spoke first), or what
    :meth:`lost` was told when none did.  ``initiated`` is True when *we* decided
    to close before the peer did: from then on nothing it sent is dispatched.
    """

    __slots__ = ("code", "initiated", "reason", "received", "sent", "state")

    def __init__(self) -> None:
        self.state = CloseState.OPEN
        self.sent = False
        self.received = False
        self.initiated = False
        self.code: int | None = None
        self.reason = ""

    @property
    def is_open(self) -> bool:
        return self.state is CloseState.OPEN

    def _record(self, code: int, reason: str) -> None:
        if self.code is None:
            self.code, self.reason = code, reason

    def send(self, code: int, reason: str) -> bool:
        """We close with *code*: True when our close frame must go out now (it
        goes out once; never after the socket is gone)."""
        if self.sent or self.state is CloseState.CLOSED:
            return False
        self.sent = True
        if not self.received:
            self.initiated = True
            self._record(code, reason)
        self.state = CloseState.CLOSING
        return True

    def sent_by_transport(self, code: int, reason: str) -> bool:
        """picows sent a close frame by itself (a frame it could not parse).
        True when this is news (the state changed)."""
        if self.sent:
            return False
        self.sent = True
        self.initiated = not self.received
        self._record(code, reason)
        if self.state is CloseState.OPEN:
            self.state = CloseState.CLOSING
        return True

    def receive(self, code: int | None, reason: str) -> tuple[PeerClose, int, str]:
        """The peer's close frame (``code`` None: it carried no status).

        Returns the action and, for ECHO and FAIL, the code and reason of the
        close frame to send.
        """
        self.received = True
        if code is not None and not is_valid_close_code(code):
            reason = f"invalid close code {code}"
            self._record(CloseCode.PROTOCOL_ERROR, reason)
            return PeerClose.FAIL, CloseCode.PROTOCOL_ERROR, reason
        if self.state is CloseState.OPEN:
            self.state = CloseState.CLOSING
        if self.sent:
            return PeerClose.FINISH, 0, ""
        self._record(code if code is not None else CloseCode.NO_STATUS_RCVD, reason)
        # Echo the peer's code (RFC 6455 section 5.5.1); 1000 for an empty close.
        return PeerClose.ECHO, code if code is not None else CloseCode.NORMAL, fit_reason(reason)

    def lost(self, code: int, reason: str) -> bool:
        """The socket is gone; *code* is what to report if no close frame crossed.
        True the first time."""
        if self.state is CloseState.CLOSED:
            return False
        self.state = CloseState.CLOSED
        self._record(code, reason)
        return True
