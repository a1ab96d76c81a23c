"""The echo server behind ``python -m reinhardt_ws echo`` (and the Autobahn runs)."""

from __future__ import annotations

from ..connection import WebSocketConnection
from ..handler import WebSocketHandler
from ..protocol.messages import Message

__all__ = ["EchoHandler"]


class EchoHandler(WebSocketHandler):
    """Sends every message back, text as text and binary as binary."""

    async def on_message(self, conn: WebSocketConnection, message: Message) -> None:
        await conn.send(message)
