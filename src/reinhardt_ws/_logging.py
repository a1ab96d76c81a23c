"""Logs that a client cannot turn into an attack.

What a client does wrong (malformed frames, oversized requests, handshake
timeouts, protocol errors) is logged at INFO, without tracebacks, and through one
process-wide rate limit: past it, lines are counted and summarised ("N more
suppressed") instead of written.  Our own failures stay at ERROR with tracebacks.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from .protocol.limits import TokenBucket

__all__ = ["LEVELS", "JsonFormatter", "PicowsLogAdapter", "client_fault", "logger"]

logger = logging.getLogger("reinhardt_ws")

#: Lines about misbehaving clients: this many a second on average, bursts of BURST.
RATE = 10.0
BURST = 50.0


class _FaultLimiter:
    """One token bucket for every client-fault line of the process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bucket = TokenBucket(RATE, BURST, time.monotonic())
        self._suppressed = 0

    def admit(self) -> tuple[bool, int]:
        """(whether to write this line, lines suppressed since the last written)."""
        with self._lock:
            if self._bucket.take(time.monotonic()):
                suppressed, self._suppressed = self._suppressed, 0
                return True, suppressed
            self._suppressed += 1
            return False, 0


_limiter = _FaultLimiter()


def client_fault(target: logging.Logger | logging.LoggerAdapter[Any], msg: str,
                 *args: object) -> None:
    """Log a client's misbehaviour: INFO, rate-limited, no traceback."""
    if not target.isEnabledFor(logging.INFO):
        return
    admitted, suppressed = _limiter.admit()
    if not admitted:
        return
    if suppressed:
        target.info("(%d similar lines about misbehaving clients suppressed)", suppressed)
    target.info(msg, *args)


#: picows' messages that describe the peer's fault, not ours (picows.pyx 2.3).
_CLIENT_FAULTS = (
    "WS parser error",
    "WS parser failure",
    "on_ws_frame raised WSProtocolError",
    "Disconnect because HTTP request",
    "Handshake timeout",
)
#: Per-connection chatter: DEBUG.
_CHATTER = (
    "New connection accepted",
    "WS connection established",
    "Disconnected",
    "Protocol writing",
    "Ignore attempt to send",
)


class PicowsLogAdapter(logging.LoggerAdapter):  # type: ignore[type-arg]
    """The logger picows writes to: a client's faults become rate-limited INFO
    lines, per-connection chatter becomes DEBUG, the rest passes unchanged.

    An adapter, not a Logger: picows then creates no child Logger per connection
    (about 1 KiB each, kept for the connection's life)."""

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        text = str(msg)
        if text.startswith(_CLIENT_FAULTS):
            if self.logger.isEnabledFor(logging.DEBUG) and kwargs.get("exc_info"):
                self.logger.debug(text, *args, exc_info=kwargs["exc_info"])
            client_fault(self.logger, text, *args)
            return
        if text.startswith(_CHATTER):
            level = logging.DEBUG
        super().log(level, msg, *args, **kwargs)


#: The level names the command line accepts.
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (ISO 8601, UTC, milliseconds), ``level``,
    ``logger``, ``message`` (arguments merged in), ``pid``, and ``exc_info`` (the
    formatted traceback) when the record carries one.  A newline inside the message
    or traceback is escaped by JSON, so a record is always exactly one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                    + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc_info"] = record.exc_text
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)
