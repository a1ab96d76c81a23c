"""The picows listener of one connection: thin glue from picows' frame callbacks
to :class:`~reinhardt_ws.WebSocketConnection` and its sans-I/O protocol state."""

from __future__ import annotations

import picows
from picows import WSListener, WSMsgType

from .connection import WebSocketConnection
from .errors import ProtocolError
from .protocol.messages import OPCODE_PONG, CloseCode

__all__ = ["ConnectionListener"]

_KEEPALIVE = b"rws-keepalive"

_TEXT, _BINARY, _CLOSE = WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CLOSE
_PING, _PONG, _CONT = WSMsgType.PING, WSMsgType.PONG, WSMsgType.CONTINUATION


class ConnectionListener(WSListener):
    """picows listener of one connection: frames in, RFC 6455 duties, events out."""

    def __init__(self, conn: WebSocketConnection) -> None:
        super().__init__()
        self.conn = conn

    def on_ws_connected(self, transport: picows.WSTransport) -> None:
        self.conn._on_connected(transport)

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        conn = self.conn
        if conn._close_received:
            return  # nothing may follow a close frame; picows rejects a second one
        if transport.is_close_frame_sent and not conn._close_sent:
            conn._on_picows_close()
        op = frame.msg_type
        rsv = frame.rsv1 << 2 | frame.rsv2 << 1 | frame.rsv3  # RSV1 = 4: permessage-deflate
        if op is _TEXT or op is _BINARY or op is _CONT:
            if conn._close_sent:
                return  # closing: data is discarded (RFC 6455 section 1.4)
            try:
                message = conn._assembler.feed(op.value, frame.fin, rsv,
                                               frame.get_payload_as_bytes())
            except ProtocolError as exc:
                conn._fail(exc.code, str(exc))
                return
            if message is not None:
                conn._deliver(message)
            return
        if rsv:
            conn._fail(CloseCode.PROTOCOL_ERROR, "reserved bits set on a control frame")
            return
        if op is _PING:
            if not conn.is_closed:
                conn._send_frame(OPCODE_PONG, frame.get_payload_as_bytes())
        elif op is _PONG:
            conn._on_pong(frame.get_payload_as_bytes())
        elif op is _CLOSE:
            if frame.payload_size >= 2:
                conn._on_close_frame(frame.get_close_code().value, frame.get_close_reason() or "")
            else:
                conn._on_close_frame(None, "")

    def on_ws_disconnected(self, transport: picows.WSTransport) -> None:
        self.conn._on_lost()

    def send_user_specific_ping(self, transport: picows.WSTransport) -> None:
        transport.send_ping(_KEEPALIVE)

    def is_user_specific_pong(self, frame: picows.WSFrame) -> bool:
        return bool(frame.msg_type is _PONG and frame.get_payload_as_bytes() == _KEEPALIVE)

    def pause_writing(self) -> None:
        conn = self.conn
        conn._write_paused = True
        if conn._peer is not None:
            conn._peer.pause_writing()

    def resume_writing(self) -> None:
        conn = self.conn
        conn._write_paused = False
        if conn._peer is not None:
            conn._peer.resume_writing()
        conn._wake_drain_waiters()
