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

    Every callback runs inside an asyncio task, so ``asyncio.current_task()``,
    ``asyncio.timeout()`` and cancellation work from its first line.  On Python
    3.12+ a message with nothing ahead of it (no callback of that connection
    running, nothing queued) starts ``on_message`` in an eager task, in the read
    callback: a call that never suspends (an echo, a broadcast) completes there,
    without a trip through the loop.
    """

    async def on_connect(self, conn: WebSocketConnection) -> None:
        """A client finished the opening handshake."""

    async def on_message(self, conn: WebSocketConnection, message: Message) -> None:
        """A whole text or binary message arrived (control frames are handled for you)."""

    async def on_disconnect(self, conn: WebSocketConnection) -> None:
        """The connection is gone; ``conn.close_code`` says how it ended."""
