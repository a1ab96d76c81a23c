"""Frames to messages, without I/O: RFC 6455 sections 5.4 (fragmentation), 5.2
(reserved bits) and 8.1 (UTF-8), plus the whole-message size limit.

picows hands us frames; :class:`MessageAssembler` turns the data frames of one
connection into :class:`~reinhardt_ws.Message` objects and raises
:class:`~reinhardt_ws.ProtocolError` (carrying the close code to answer with) for
anything the peer may not send.  Control frames never reach it.
"""

from __future__ import annotations

import codecs

from ..errors import ProtocolError
from .messages import (
    OPCODE_BINARY,
    OPCODE_CONTINUATION,
    OPCODE_TEXT,
    CloseCode,
    Message,
    MessageType,
)

__all__ = ["MessageAssembler"]


_utf8_decoder = codecs.getincrementaldecoder("utf-8")


class MessageAssembler:
    """Reassembles the data frames of one connection.

    ``max_message_size`` bounds the whole message, over all its fragments
    (``None``: unbounded).  After a :class:`ProtocolError` the assembler must not
    be fed again: the connection is closing.
    """

    __slots__ = ("_decoder", "_max", "_opcode", "_parts", "_size")

    def __init__(self, max_message_size: int | None) -> None:
        if max_message_size is not None and max_message_size <= 0:
            raise ValueError("max_message_size must be positive or None")
        self._max = max_message_size
        self._opcode = -1  # opcode of the message in progress; -1 when none
        self._parts: list[str] | list[bytes] = []
        self._size = 0
        self._decoder: codecs.IncrementalDecoder | None = None

    def feed(self, opcode: int, fin: bool, rsv: int, payload: bytes) -> Message | None:
        """Take one data frame; return the message it completes, else ``None``.

        *rsv* is the three reserved bits (no extension is negotiated, so they
        must be zero).  Raises :class:`ProtocolError` with code 1002 for a
        protocol violation, 1007 for invalid UTF-8 and 1009 for a message over
        the size limit.
        """
        if rsv:
            raise ProtocolError("reserved bits set without a negotiated extension")
        if opcode == OPCODE_CONTINUATION:
            if self._opcode == -1:
                raise ProtocolError("continuation frame without a message to continue")
            return self._append(payload, fin)
        if opcode != OPCODE_TEXT and opcode != OPCODE_BINARY:
            raise ProtocolError(f"unexpected opcode {opcode:#x} for a data frame")
        if self._opcode != -1:
            raise ProtocolError("new data frame before the previous message ended")
        size = len(payload)
        if self._max is not None and size > self._max:
            raise ProtocolError(
                f"message of {size} bytes exceeds the limit of {self._max}",
                CloseCode.MESSAGE_TOO_BIG)
        if fin:  # the common case: a whole message in one frame
            if opcode == OPCODE_TEXT:
                try:
                    text = payload.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise ProtocolError(f"invalid UTF-8 in text message: {exc.reason}",
                                        CloseCode.INVALID_PAYLOAD) from None
                return Message(MessageType.TEXT, text, _payload=payload)
            return Message(MessageType.BINARY, payload)
        self._opcode = opcode
        self._size = 0
        if opcode == OPCODE_TEXT:
            self._decoder = _utf8_decoder("strict")
            self._parts = []
        else:
            self._decoder = None
            self._parts = []
        return self._append(payload, False)

    def _append(self, payload: bytes, fin: bool) -> Message | None:
        self._size += len(payload)
        if self._max is not None and self._size > self._max:
            raise ProtocolError(
                f"message of at least {self._size} bytes exceeds the limit of {self._max}",
                CloseCode.MESSAGE_TOO_BIG)
        decoder = self._decoder
        if decoder is not None:
            # Decode as the fragments arrive: invalid UTF-8 fails on the fragment
            # that carries it, not at the end of the message.
            try:
                chunk = decoder.decode(payload, fin)
            except UnicodeDecodeError as exc:
                raise ProtocolError(f"invalid UTF-8 in text message: {exc.reason}",
                                    CloseCode.INVALID_PAYLOAD) from None
            if chunk:
                self._parts.append(chunk)  # type: ignore[arg-type]
        elif payload:
            self._parts.append(payload)  # type: ignore[arg-type]
        if not fin:
            return None
        parts = self._parts
        self._parts = []
        self._opcode = -1
        self._decoder = None
        if decoder is not None:
            return Message(MessageType.TEXT, "".join(parts))  # type: ignore[arg-type]
        return Message(MessageType.BINARY, b"".join(parts))  # type: ignore[arg-type]
