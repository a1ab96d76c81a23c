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
from .extensions.base import Extension, MessageDecoder
from .messages import (
    OPCODE_BINARY,
    OPCODE_CONTINUATION,
    OPCODE_TEXT,
    CloseCode,
    Message,
    binary_message,
    text_message,
)

__all__ = ["MessageAssembler"]

RSV1 = 0x4  # the reserved bits as feed() takes them: RSV1 << 2 | RSV2 << 1 | RSV3

_utf8_decoder = codecs.getincrementaldecoder("utf-8")


class MessageAssembler:
    """Reassembles the data frames of one connection.

    ``max_message_size`` bounds the whole message, over all its fragments
    (``None``: unbounded); for a compressed message it bounds the *decompressed*
    size, enforced while inflating.  *extension* is the negotiated
    permessage-deflate codec, if any: then RSV1 on the first frame of a message
    marks it compressed; without one every reserved bit is a protocol error.
    After a :class:`ProtocolError` the assembler must not be fed again: the
    connection is closing.
    """

    __slots__ = ("_decoder", "_extension", "_inflate", "_max", "_opcode", "_parts", "_size")

    def __init__(self, max_message_size: int | None,
                 extension: Extension | None = None) -> None:
        if max_message_size is not None and max_message_size <= 0:
            raise ValueError("max_message_size must be positive or None")
        self._max = max_message_size
        self._extension = extension
        self._inflate: MessageDecoder | None = None  # of the message in progress
        self._opcode = -1  # opcode of the message in progress; -1 when none
        self._parts: list[str] | list[bytes] = []
        self._size = 0
        self._decoder: codecs.IncrementalDecoder | None = None

    def feed(self, opcode: int, fin: bool, rsv: int, payload: bytes) -> Message | None:
        """Take one data frame; return the message it completes, else ``None``.

        *rsv* is the three reserved bits, RSV1 as 4: zero, or RSV1 alone on the
        first frame of a message when permessage-deflate is negotiated.  Raises
        :class:`ProtocolError` with code 1002 for a protocol violation, 1007 for
        invalid UTF-8 or undecodable compressed data and 1009 for a message over
        the size limit.
        """
        inflate = None
        if rsv:
            if self._extension is None:
                raise ProtocolError("reserved bits set without a negotiated extension")
            if rsv != RSV1 or opcode == OPCODE_CONTINUATION:
                raise ProtocolError("reserved bits other than RSV1 on the first frame")
        if opcode == OPCODE_CONTINUATION:
            if self._opcode == -1:
                raise ProtocolError("continuation frame without a message to continue")
            return self._append(payload, fin, inflated=False)
        if opcode != OPCODE_TEXT and opcode != OPCODE_BINARY:
            raise ProtocolError(f"unexpected opcode {opcode:#x} for a data frame")
        if self._opcode != -1:
            raise ProtocolError("new data frame before the previous message ended")
        if rsv:
            assert self._extension is not None
            inflate = self._extension.decoder()
            payload = inflate.decode(payload, fin, self._max)
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
                return text_message(text, payload)
            return binary_message(payload)
        self._opcode = opcode
        self._size = 0
        self._inflate = inflate
        if opcode == OPCODE_TEXT:
            self._decoder = _utf8_decoder("strict")
            self._parts = []
        else:
            self._decoder = None
            self._parts = []
        return self._append(payload, False)

    def _append(self, payload: bytes, fin: bool, inflated: bool = True) -> Message | None:
        inflate = self._inflate
        if inflate is not None and not inflated:
            limit = None if self._max is None else self._max - self._size
            payload = inflate.decode(payload, fin, limit)
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
        self._inflate = None
        if decoder is not None:
            text = "".join(parts)  # type: ignore[arg-type]
            return text_message(text, text.encode("utf-8"))
        return binary_message(b"".join(parts))  # type: ignore[arg-type]
