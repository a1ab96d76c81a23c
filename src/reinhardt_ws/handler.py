"""The application's side of a server: subclass :class:`WebSocketHandler`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .connection import WebSocketConnection
    from .protocol.messages import Message

__all__ = ["WebSocketHandler"]


class WebSocketHandler:
    """Callbacks of a server; override the ones you need (the defaults do nothing).

    Promises, for one connection: ``on_connect`` completes before its first
    ``on_message``; ``on_message`` calls run one at a time, in arrival order;
    ``on_disconnect`` runs exactly once, after the last ``on_message``, whatever
    ended the connection (close frame, TCP reset, timeout, server shutdown).
    Different connections run concurrently.  An exception raised by a callback is
    logged and closes that connection with 1011 (Internal Error); no other
    connection notices.  While ``on_message`` is slow, the connection's inbound
    queue fills up to the server's ``max_queue`` and the server stops reading
    that socket (TCP backpressure) until it drains.

    A message with nothing ahead of it (no callback of that connection running,
    nothing queued) is handed to ``on_message`` at once, in the read callback;
    only a call that suspends (awaits something not yet done) continues in a
    task.  Each call runs in its own copy of the context, as in a task; but
    until its first suspension ``asyncio.current_task()`` is None there, so
    code that needs a current task (``asyncio.timeout()``, and on Python 3.12+
    ``asyncio.wait_for``) must come after an ``await`` that suspends, or run
    in a task of its own.
    """

    async def on_connect(self, conn: WebSocketConnection) -> None:
        """A client finished the opening handshake."""

    async def on_message(self, conn: WebSocketConnection, message: Message) -> None:
        """A whole text or binary message arrived (control frames are handled for you)."""

    async def on_disconnect(self, conn: WebSocketConnection) -> None:
        """The connection is gone; ``conn.close_code`` says how it ended."""
