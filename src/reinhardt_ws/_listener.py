"""The picows listener of one connection: thin glue from picows' frame callbacks
to :class:`~reinhardt_ws.WebSocketConnection` and its sans-I/O protocol state.

This is the Python twin; the C extension's ``Listener`` makes the same calls and
builds a whole single-frame message itself.  ``_fanout.new_listener`` chooses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import picows
from picows import WSListener, WSMsgType

from .protocol.messages import CloseCode

if TYPE_CHECKING:
    from .connection import WebSocketConnection

__all__ = ["ConnectionListener"]

_TEXT, _BINARY, _CLOSE = WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CLOSE
_PING, _PONG, _CONT = WSMsgType.PING, WSMsgType.PONG, WSMsgType.CONTINUATION
#: Data frames' opcodes as plain ints (an enum's ``.value`` is a property lookup).
_DATA_OPCODES: dict[WSMsgType, int] = {_TEXT: _TEXT.value, _BINARY: _BINARY.value,
                                      _CONT: _CONT.value}


class ConnectionListener(WSListener):
    """picows listener of one connection: frames in, events out.

    It calls only the connection's ``_on_*`` event methods (its package-internal
    interface); every decision is the connection's.
    """

    __slots__ = ("conn",)

    def __init__(self, conn: WebSocketConnection) -> None:
        super().__init__()
        self.conn = conn

    def on_ws_connected(self, transport: picows.WSTransport) -> None:
        self.conn._on_connected(transport)

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        conn = self.conn
        conn._rx_seen = True  # keep-alive: not silent (see _keepalive)
        closing = conn._closing
        if closing.received:
            return  # nothing may follow a close frame (picows still delivers it)
        if transport.is_close_frame_sent and not closing.sent:
            conn._on_transport_close()
        op = frame.msg_type
        rsv = frame.rsv1 << 2 | frame.rsv2 << 1 | frame.rsv3  # RSV1 = 4: permessage-deflate
        opcode = _DATA_OPCODES.get(op)
        if opcode is not None:
            conn._on_data_frame(opcode, frame.fin, rsv, frame.get_payload_as_bytes())
        elif rsv:
            conn._fail(CloseCode.PROTOCOL_ERROR, "reserved bits set on a control frame")
        elif op is _PING:
            conn._on_ping(frame.get_payload_as_bytes())
        elif op is _PONG:
            conn._on_pong(frame.get_payload_as_bytes())
        elif op is _CLOSE:
            if frame.payload_size >= 2:
                conn._on_close_frame(frame.get_close_code().value, frame.get_close_reason() or "")
            else:
                conn._on_close_frame(None, "")

    def on_ws_disconnected(self, transport: picows.WSTransport) -> None:
        self.conn._on_lost()

    def pause_writing(self) -> None:
        self.conn._on_pause_writing()

    def resume_writing(self) -> None:
        self.conn._on_resume_writing()
