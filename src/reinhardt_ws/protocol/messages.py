"""Messages: :class:`Message` (one WebSocket message) and :class:`WebSocketMessage`
(the structured JSON envelope shared with the Rust reinhardt-websockets crate)."""

from __future__ import annotations

import enum
import time
from typing import Any

import orjson

from ..errors import ProtocolError, SendTypeError

__all__ = ["CloseCode", "Message", "MessageType", "WebSocketMessage"]


class MessageType(enum.Enum):
    """Kind of a message; the values are the wire names of ``WebSocketMessage``."""

    TEXT = "text"
    BINARY = "binary"
    PING = "ping"
    PONG = "pong"
    CLOSE = "close"


class CloseCode(enum.IntEnum):
    """Close codes of RFC 6455 section 7.4.1 and the IANA registry."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS_RCVD = 1005  # reserved: never sent in a close frame
    ABNORMAL_CLOSURE = 1006  # reserved: never sent in a close frame
    INVALID_PAYLOAD = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014
    TLS_HANDSHAKE = 1015  # reserved: never sent in a close frame


#: Codes an endpoint may put in a close frame, besides 3000-4999.
_SENDABLE_CODES = frozenset(
    {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})

OPCODE_CONTINUATION = 0x0
OPCODE_TEXT = 0x1
OPCODE_BINARY = 0x2
OPCODE_CLOSE = 0x8
OPCODE_PING = 0x9
OPCODE_PONG = 0xA


def is_valid_close_code(code: int) -> bool:
    """Whether *code* may appear in a close frame on the wire."""
    return code in _SENDABLE_CODES or 3000 <= code <= 4999


def encode_close_payload(code: int, reason: str) -> bytes:
    """The payload of a close frame; ``ValueError`` for a code or reason not allowed."""
    if not is_valid_close_code(code):
        raise ValueError(f"close code {code} may not be sent (RFC 6455 section 7.4)")
    raw = reason.encode("utf-8")
    if len(raw) > 123:
        raise ValueError(f"close reason is {len(raw)} bytes; at most 123 fit a control frame")
    return int(code).to_bytes(2, "big") + raw


def _as_bytes(data: bytes | bytearray | memoryview, what: str) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"{what} takes bytes, bytearray or memoryview, not {type(data).__name__}")


class Message:
    """One WebSocket message; immutable.

    ``type`` is a :class:`MessageType`; ``data`` is ``str`` for text and ``bytes``
    otherwise; ``code`` and ``reason`` are set for close messages.  Build one with
    the constructors :meth:`text`, :meth:`binary`, :meth:`json`, :meth:`ping`,
    :meth:`pong` and :meth:`close`.
    """

    __slots__ = ("_payload", "code", "data", "reason", "type")

    type: MessageType
    data: str | bytes
    code: int | None
    reason: str
    _payload: bytes

    def __init__(
        self,
        type: MessageType,
        data: str | bytes,
        code: int | None = None,
        reason: str = "",
        *,
        _payload: bytes | None = None,
    ) -> None:
        if not isinstance(type, MessageType):
            raise TypeError(f"type must be a MessageType, not {type!r}")
        if type is MessageType.TEXT:
            if not isinstance(data, str):
                raise TypeError("a text message carries str data")
            payload = _payload if _payload is not None else data.encode("utf-8")
        elif type is MessageType.CLOSE:
            if code is None:
                payload = b""
            else:
                payload = encode_close_payload(int(code), reason)
                if isinstance(code, int) and not isinstance(code, CloseCode):
                    try:
                        code = CloseCode(code)
                    except ValueError:
                        pass
            data = payload
        else:
            payload = _as_bytes(data, "a binary or control message")  # type: ignore[arg-type]
            data = payload
            if type is not MessageType.BINARY and len(payload) > 125:
                raise ValueError(f"{type.value} payload is {len(payload)} bytes; at most 125")
        for name, value in (("type", type), ("data", data), ("code", code), ("reason", reason),
                            ("_payload", payload)):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Message is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Message is immutable")

    # -- constructors -------------------------------------------------------
    @classmethod
    def text(cls, data: str) -> Message:
        """A text message."""
        return cls(MessageType.TEXT, data)

    @classmethod
    def binary(cls, data: bytes | bytearray | memoryview) -> Message:
        """A binary message."""
        return cls(MessageType.BINARY, _as_bytes(data, "Message.binary"))

    @classmethod
    def json(cls, obj: Any) -> Message:
        """A text message holding *obj* encoded with orjson.

        Raises ``TypeError`` (orjson's ``JSONEncodeError``) for what JSON cannot hold.
        """
        raw = orjson.dumps(obj)
        if cls is Message:
            return text_message(raw.decode("utf-8"), raw)
        return cls(MessageType.TEXT, raw.decode("utf-8"), _payload=raw)

    @classmethod
    def ping(cls, data: bytes = b"") -> Message:
        """A ping; ``ValueError`` above 125 bytes."""
        return cls(MessageType.PING, data)

    @classmethod
    def pong(cls, data: bytes = b"") -> Message:
        """A pong; ``ValueError`` above 125 bytes."""
        return cls(MessageType.PONG, data)

    @classmethod
    def close(cls, code: int = CloseCode.NORMAL, reason: str = "") -> Message:
        """A close message; ``ValueError`` for a code that may not be sent or a reason
        longer than 123 UTF-8 bytes."""
        return cls(MessageType.CLOSE, b"", code, reason)

    # -- accessors ----------------------------------------------------------
    @property
    def opcode(self) -> int:
        """The WebSocket opcode of this message."""
        return _OPCODES[self.type]

    @property
    def payload(self) -> bytes:
        """The frame payload: UTF-8 for text, the close code and reason for close."""
        return self._payload

    def parse_json(self) -> Any:
        """Decode the JSON of a text message; ``ProtocolError`` otherwise."""
        if self.type is not MessageType.TEXT:
            raise ProtocolError(f"parse_json needs a text message, not {self.type.value}")
        try:
            return orjson.loads(self._payload)
        except orjson.JSONDecodeError as exc:
            raise ProtocolError(f"invalid JSON: {exc}", code=CloseCode.UNSUPPORTED_DATA) from exc

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return (self.type, self._payload) == (other.type, other._payload)

    def __hash__(self) -> int:
        return hash((self.type, self._payload))

    def __repr__(self) -> str:
        if self.type is MessageType.CLOSE:
            return f"Message.close(code={self.code!r}, reason={self.reason!r})"
        data = self.data
        if isinstance(data, str):
            shown: str | bytes = data if len(data) <= 60 else data[:57] + "..."
        else:
            shown = data if len(data) <= 60 else data[:57] + b"..."
        return f"Message.{self.type.value}({shown!r})"


# The receive path builds a Message per incoming message: the assembler and
# Message.json() already know the type, the data and the payload are consistent,
# so they skip the constructor's checks and its loop of object.__setattr__ calls
# (the slots' own descriptors are about three times cheaper).
_new_message = object.__new__
_set_type: Any = vars(Message)["type"].__set__
_set_data: Any = vars(Message)["data"].__set__
_set_code: Any = vars(Message)["code"].__set__
_set_reason: Any = vars(Message)["reason"].__set__
_set_payload: Any = vars(Message)["_payload"].__set__
_TEXT = MessageType.TEXT
_BINARY = MessageType.BINARY


def text_message(text: str, payload: bytes) -> Message:
    """A text :class:`Message` whose *payload* is already known to be the UTF-8 of
    *text* (package-internal: nothing is checked)."""
    message: Message = _new_message(Message)
    _set_type(message, _TEXT)
    _set_data(message, text)
    _set_code(message, None)
    _set_reason(message, "")
    _set_payload(message, payload)
    return message


def binary_message(payload: bytes) -> Message:
    """A binary :class:`Message` of *payload*, which must be ``bytes``
    (package-internal: nothing is checked)."""
    message: Message = _new_message(Message)
    _set_type(message, _BINARY)
    _set_data(message, payload)
    _set_code(message, None)
    _set_reason(message, "")
    _set_payload(message, payload)
    return message


_OPCODES = {
    MessageType.TEXT: OPCODE_TEXT,
    MessageType.BINARY: OPCODE_BINARY,
    MessageType.PING: OPCODE_PING,
    MessageType.PONG: OPCODE_PONG,
    MessageType.CLOSE: OPCODE_CLOSE,
}

_TYPE_NAMES = {t.value: t for t in MessageType}


class WebSocketMessage:
    """The structured envelope: ``{"message_type": ..., "data": ..., "timestamp": ...}``.

    The wire format of the Rust reinhardt-websockets crate: ``message_type`` is a
    lowercase :class:`MessageType` name, ``data`` any JSON value and ``timestamp``
    Unix seconds (an integer) or null.  Immutable; ``with_timestamp()`` returns a copy.
    """

    __slots__ = ("data", "message_type", "timestamp")

    message_type: MessageType
    data: Any
    timestamp: int | None

    def __init__(self, message_type: MessageType | str, data: Any,
                 timestamp: int | None = None) -> None:
        if isinstance(message_type, str):
            try:
                message_type = _TYPE_NAMES[message_type]
            except KeyError:
                raise ValueError(f"unknown message_type {message_type!r}") from None
        if not isinstance(message_type, MessageType):
            raise TypeError("message_type must be a MessageType or its lowercase name")
        if timestamp is not None and (
                isinstance(timestamp, bool) or not isinstance(timestamp, int)):
            raise TypeError("timestamp must be an int (Unix seconds) or None")
        object.__setattr__(self, "message_type", message_type)
        object.__setattr__(self, "data", data)
        object.__setattr__(self, "timestamp", timestamp)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("WebSocketMessage is immutable")

    @classmethod
    def text(cls, data: Any) -> WebSocketMessage:
        """A ``text`` envelope around any JSON value."""
        return cls(MessageType.TEXT, data)

    @classmethod
    def binary(cls, data: bytes | bytearray | memoryview) -> WebSocketMessage:
        """A ``binary`` envelope; the bytes travel as a JSON array of integers (serde's
        encoding of ``Vec<u8>``)."""
        return cls(MessageType.BINARY, list(_as_bytes(data, "WebSocketMessage.binary")))

    def with_timestamp(self, timestamp: int | None = None) -> WebSocketMessage:
        """A copy stamped with *timestamp*, or now (Unix seconds)."""
        stamp = int(time.time()) if timestamp is None else timestamp
        return WebSocketMessage(self.message_type, self.data, stamp)

    def to_json(self) -> bytes:
        """The JSON encoding (UTF-8 bytes)."""
        return orjson.dumps(
            {"message_type": self.message_type.value, "data": self.data,
             "timestamp": self.timestamp}
        )

    @classmethod
    def from_json(cls, raw: bytes | bytearray | memoryview | str) -> WebSocketMessage:
        """Parse the wire format; ``ProtocolError`` saying what is wrong otherwise.

        Unknown fields are ignored, as serde does on the Rust side."""
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ProtocolError(f"WebSocketMessage: invalid JSON: {exc}") from exc
        if not isinstance(obj, dict):
            raise ProtocolError(
                f"WebSocketMessage: expected a JSON object, got {type(obj).__name__}")
        if "message_type" not in obj:
            raise ProtocolError("WebSocketMessage: missing field 'message_type'")
        name = obj["message_type"]
        if not isinstance(name, str) or name not in _TYPE_NAMES:
            raise ProtocolError(
                f"WebSocketMessage: message_type must be one of {sorted(_TYPE_NAMES)}, "
                f"got {name!r}")
        if "data" not in obj:
            raise ProtocolError("WebSocketMessage: missing field 'data'")
        stamp = obj.get("timestamp")
        if stamp is not None and (isinstance(stamp, bool) or not isinstance(stamp, int)):
            raise ProtocolError(
                f"WebSocketMessage: timestamp must be an integer or null, got {stamp!r}")
        return cls(_TYPE_NAMES[name], obj["data"], stamp)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, WebSocketMessage):
            return NotImplemented
        return (self.message_type, self.data, self.timestamp) == (
            other.message_type, other.data, other.timestamp)

    __hash__ = None  # type: ignore[assignment]  # data may be unhashable

    def __repr__(self) -> str:
        return (f"WebSocketMessage({self.message_type.value!r}, {self.data!r}, "
                f"timestamp={self.timestamp!r})")


def frame_parts(message: Message | WebSocketMessage | str | bytes | bytearray | memoryview
                ) -> tuple[int, bytes]:
    """The (opcode, payload) a message goes out as: the one conversion every send
    and every broadcast uses.  A ``str`` is text, bytes-like is binary, a
    :class:`WebSocketMessage` is its JSON as text.  Raises
    :class:`~reinhardt_ws.SendTypeError` (a ``SendError`` and a ``TypeError``)
    for anything else."""
    if isinstance(message, str):
        return OPCODE_TEXT, message.encode("utf-8")
    if isinstance(message, bytes):
        return OPCODE_BINARY, message
    if isinstance(message, (bytearray, memoryview)):
        return OPCODE_BINARY, bytes(message)
    if isinstance(message, Message):
        return message.opcode, message.payload
    if isinstance(message, WebSocketMessage):
        return OPCODE_TEXT, message.to_json()
    raise SendTypeError(f"cannot send {type(message).__name__}")
