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
    without a trip through the loop.  On Python 3.11 the task that handled a
    message waits for the connection's next one (up to one to two seconds of
    silence) instead of ending, so a conversation does not pay for a new task
    per message; which task runs a callback is not part of the contract.

    Context variables (Python 3.11+): all the callbacks of one connection run in
    that connection's own context, so a value set in ``on_connect`` (a request
    id for the logs, say) is seen by its ``on_message`` and ``on_disconnect``,
    and never by another connection's callbacks.  On 3.10 each task runs in a
    copy of the context it was created in, as asyncio's tasks do.
    """

    async def on_connect(self, conn: WebSocketConnection) -> None:
        """A client finished the opening handshake."""

    async def on_message(self, conn: WebSocketConnection, message: Message) -> None:
        """A whole text or binary message arrived (control frames are handled for you)."""

    async def on_disconnect(self, conn: WebSocketConnection) -> None:
        """The connection is gone; ``conn.close_code`` says how it ended."""
