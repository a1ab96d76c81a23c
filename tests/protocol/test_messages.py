"""Messages without I/O: ``Message``, ``CloseCode``, ``WebSocketMessage`` and the errors."""

from __future__ import annotations

import json

import pytest

import reinhardt_ws as rw
from reinhardt_ws import CloseCode, Message, MessageType, WebSocketMessage
from reinhardt_ws.protocol.messages import binary_message, frame_parts, text_message

# -- Message -------------------------------------------------------------------


def test_text_message() -> None:
    message = Message.text("héllo")
    assert message.type is MessageType.TEXT
    assert message.data == "héllo"
    assert message.payload == "héllo".encode()
    assert message.opcode == 0x1
    assert message.code is None
    assert message.reason == ""


@pytest.mark.parametrize("data", [b"\x00\xff", bytearray(b"\x00\xff"), memoryview(b"\x00\xff")])
def test_binary_message_takes_any_bytes_like(data: bytes | bytearray | memoryview) -> None:
    message = Message.binary(data)
    assert message.type is MessageType.BINARY
    assert message.data == b"\x00\xff"
    assert type(message.data) is bytes
    assert message.payload == b"\x00\xff"
    assert message.opcode == 0x2


def test_json_message_is_text() -> None:
    message = Message.json({"a": [1, 2, None], "b": "é"})
    assert message.type is MessageType.TEXT
    assert isinstance(message.data, str)
    assert json.loads(message.data) == {"a": [1, 2, None], "b": "é"}
    assert message.parse_json() == {"a": [1, 2, None], "b": "é"}


def test_json_message_rejects_what_json_cannot_hold() -> None:
    with pytest.raises(TypeError):
        Message.json(object())


def test_ping_and_pong() -> None:
    assert Message.ping().type is MessageType.PING
    assert Message.ping(b"x").data == b"x"
    assert Message.ping(b"x").opcode == 0x9
    assert Message.pong(b"y").type is MessageType.PONG
    assert Message.pong(b"y").opcode == 0xA
    Message.ping(b"x" * 125)
    with pytest.raises(ValueError):
        Message.ping(b"x" * 126)
    with pytest.raises(ValueError):
        Message.pong(b"x" * 126)


def test_close_message() -> None:
    message = Message.close()
    assert message.type is MessageType.CLOSE
    assert message.code == 1000
    assert message.code is CloseCode.NORMAL
    assert message.reason == ""
    assert message.payload == b"\x03\xe8"
    assert message.opcode == 0x8
    custom = Message.close(4001, "bye")
    assert custom.code == 4001
    assert custom.reason == "bye"
    assert custom.payload == (4001).to_bytes(2, "big") + b"bye"
    assert Message.close(1001).code is CloseCode.GOING_AWAY


@pytest.mark.parametrize("code", [999, 1004, 1005, 1006, 1015, 2000, 2999, 5000])
def test_close_message_rejects_codes_that_may_not_be_sent(code: int) -> None:
    with pytest.raises(ValueError):
        Message.close(code)


def test_close_reason_limit_is_in_utf8_bytes() -> None:
    Message.close(1000, "x" * 123)
    with pytest.raises(ValueError):
        Message.close(1000, "x" * 124)
    with pytest.raises(ValueError):
        Message.close(1000, "é" * 62)  # 124 bytes, 62 characters


def test_constructors_check_their_types() -> None:
    with pytest.raises(TypeError):
        Message.text(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Message.binary("str")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Message("text", "x")  # type: ignore[arg-type]


def test_message_is_immutable() -> None:
    message = Message.text("a")
    with pytest.raises(AttributeError):
        message.data = "b"
    with pytest.raises(AttributeError):
        message.type = MessageType.BINARY
    with pytest.raises(AttributeError):
        del message.data
    with pytest.raises(AttributeError):
        message.extra = 1
    assert message.data == "a"


def test_message_equality_and_hash() -> None:
    assert Message.text("a") == Message.text("a")
    assert Message.text("a") != Message.text("b")
    assert Message.text("a") != Message.binary(b"a")
    assert hash(Message.binary(b"a")) == hash(Message.binary(bytearray(b"a")))
    assert len({Message.text("a"), Message.text("a"), Message.binary(b"a")}) == 2


def test_message_repr() -> None:
    assert repr(Message.text("a")) == "Message.text('a')"
    assert "close" in repr(Message.close(1000, "x"))
    assert len(repr(Message.text("x" * 1000))) < 100


def test_parse_json_on_binary_is_a_protocol_error() -> None:
    with pytest.raises(rw.ProtocolError, match="text"):
        Message.binary(b"{}").parse_json()


@pytest.mark.parametrize("text", ["", "{", "[1,]", "nope", "{'a': 1}"])
def test_parse_json_on_invalid_json_is_a_protocol_error(text: str) -> None:
    with pytest.raises(rw.ProtocolError, match="JSON"):
        Message.text(text).parse_json()


# -- CloseCode -----------------------------------------------------------------


def test_close_code_values() -> None:
    expected = {
        "NORMAL": 1000, "GOING_AWAY": 1001, "PROTOCOL_ERROR": 1002,
        "UNSUPPORTED_DATA": 1003, "NO_STATUS_RCVD": 1005, "ABNORMAL_CLOSURE": 1006,
        "INVALID_PAYLOAD": 1007, "POLICY_VIOLATION": 1008, "MESSAGE_TOO_BIG": 1009,
        "MANDATORY_EXTENSION": 1010, "INTERNAL_ERROR": 1011, "SERVICE_RESTART": 1012,
        "TRY_AGAIN_LATER": 1013, "BAD_GATEWAY": 1014, "TLS_HANDSHAKE": 1015,
    }
    assert {code.name: code.value for code in CloseCode} == expected
    assert CloseCode.NORMAL == 1000  # an IntEnum: compares with plain ints
    assert CloseCode(1009) is CloseCode.MESSAGE_TOO_BIG


def test_message_type_values_are_the_wire_names() -> None:
    assert [t.value for t in MessageType] == ["text", "binary", "ping", "pong", "close"]


# -- WebSocketMessage ----------------------------------------------------------


def test_envelope_text() -> None:
    envelope = WebSocketMessage.text({"hello": "world"})
    assert envelope.message_type is MessageType.TEXT
    assert envelope.data == {"hello": "world"}
    assert envelope.timestamp is None
    assert json.loads(envelope.to_json()) == {
        "message_type": "text", "data": {"hello": "world"}, "timestamp": None}


def test_envelope_binary_travels_as_a_list_of_ints() -> None:
    envelope = WebSocketMessage.binary(b"\x00\x7f\xff")
    assert envelope.message_type is MessageType.BINARY
    assert json.loads(envelope.to_json()) == {
        "message_type": "binary", "data": [0, 127, 255], "timestamp": None}


def test_envelope_with_timestamp_returns_a_stamped_copy() -> None:
    envelope = WebSocketMessage.text("x")
    stamped = envelope.with_timestamp(1_700_000_000)
    assert stamped.timestamp == 1_700_000_000
    assert envelope.timestamp is None
    assert stamped.data == "x"
    assert json.loads(stamped.to_json())["timestamp"] == 1_700_000_000
    now = envelope.with_timestamp()
    assert isinstance(now.timestamp, int)
    assert now.timestamp > 1_700_000_000


def test_envelope_round_trip() -> None:
    for envelope in (WebSocketMessage.text("plain"),
                     WebSocketMessage.text([1, {"a": None}]).with_timestamp(42),
                     WebSocketMessage.binary(b"\x01\x02"),
                     WebSocketMessage("ping", None),
                     WebSocketMessage(MessageType.CLOSE, {"code": 1000})):
        raw = envelope.to_json()
        assert isinstance(raw, bytes)
        assert WebSocketMessage.from_json(raw) == envelope
        assert WebSocketMessage.from_json(raw.decode()) == envelope
        assert WebSocketMessage.from_json(bytearray(raw)) == envelope


def test_envelope_goes_out_as_its_json_text() -> None:
    envelope = WebSocketMessage.text({"n": 1}).with_timestamp(7)
    opcode, payload = frame_parts(envelope)
    assert opcode == 0x1
    message = Message(MessageType.TEXT, payload.decode("utf-8"))
    assert message.parse_json() == {"message_type": "text", "data": {"n": 1}, "timestamp": 7}
    assert WebSocketMessage.from_json(message.data) == envelope


def test_envelope_from_json_ignores_unknown_fields() -> None:
    raw = b'{"message_type": "text", "data": 1, "timestamp": null, "extra": true}'
    assert WebSocketMessage.from_json(raw) == WebSocketMessage.text(1)


def test_envelope_from_json_without_timestamp() -> None:
    assert WebSocketMessage.from_json(b'{"message_type":"text","data":"x"}').timestamp is None


@pytest.mark.parametrize(("raw", "what"), [
    (b"not json", "invalid JSON"),
    (b"", "invalid JSON"),
    (b'{"message_type": "text", "data": "\xff"}', "invalid JSON"),
    (b"[1, 2]", "expected a JSON object"),
    (b'"text"', "expected a JSON object"),
    (b'{"data": 1}', "message_type"),
    (b'{"message_type": "shout", "data": 1}', "message_type"),
    (b'{"message_type": 1, "data": 1}', "message_type"),
    (b'{"message_type": "TEXT", "data": 1}', "message_type"),
    (b'{"message_type": "text"}', "data"),
    (b'{"message_type": "text", "data": 1, "timestamp": "now"}', "timestamp"),
    (b'{"message_type": "text", "data": 1, "timestamp": 1.5}', "timestamp"),
    (b'{"message_type": "text", "data": 1, "timestamp": true}', "timestamp"),
])
def test_envelope_from_json_says_what_is_wrong(raw: bytes, what: str) -> None:
    with pytest.raises(rw.ProtocolError, match=what):
        WebSocketMessage.from_json(raw)


def test_envelope_constructor_checks() -> None:
    with pytest.raises(ValueError):
        WebSocketMessage("shout", 1)
    with pytest.raises(TypeError):
        WebSocketMessage(MessageType.TEXT, 1, timestamp="now")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        WebSocketMessage(MessageType.TEXT, 1, timestamp=True)


def test_envelope_is_immutable() -> None:
    envelope = WebSocketMessage.text("x")
    with pytest.raises(AttributeError):
        envelope.data = "y"
    with pytest.raises(AttributeError):
        envelope.timestamp = 1
    assert envelope.data == "x"


# -- errors ----------------------------------------------------------------------


def test_error_hierarchy() -> None:
    for cls in (rw.SendError, rw.ReceiveError, rw.ConnectionClosed, rw.ProtocolError,
                rw.HandshakeError):
        assert issubclass(cls, rw.WebSocketError)
    assert issubclass(rw.WebSocketError, Exception)
    assert issubclass(rw.ConnectionClosed, rw.SendError)
    assert issubclass(rw.ConnectionClosed, rw.ReceiveError)


def test_error_attributes() -> None:
    closed = rw.ConnectionClosed(1001, "going")
    assert (closed.code, closed.reason) == (1001, "going")
    assert "1001" in str(closed)
    assert rw.ConnectionClosed().code == 1006
    assert rw.ProtocolError("x").code == 1002
    assert rw.ProtocolError("x", CloseCode.MESSAGE_TOO_BIG).code == 1009
    refused = rw.HandshakeError("no", 403, b"body")
    assert (refused.status, refused.body) == (403, b"body")
    assert rw.HandshakeError("timeout").status is None


# The receive path's unchecked constructors build what the checked one builds.
@pytest.mark.parametrize("text", ["", "hé", "x" * 300])
def test_text_message_of_the_receive_path_equals_the_checked_one(text: str) -> None:
    fast = text_message(text, text.encode("utf-8"))
    checked = Message.text(text)
    assert fast == checked and hash(fast) == hash(checked)
    assert (fast.type, fast.data, fast.code, fast.reason, fast.payload, fast.opcode) == (
        checked.type, checked.data, checked.code, checked.reason, checked.payload,
        checked.opcode)
    with pytest.raises(AttributeError):
        fast.data = "changed"  # type: ignore[misc]


@pytest.mark.parametrize("data", [b"", b"\x00\xff", b"y" * 300])
def test_binary_message_of_the_receive_path_equals_the_checked_one(data: bytes) -> None:
    fast = binary_message(data)
    checked = Message.binary(data)
    assert fast == checked and repr(fast) == repr(checked)
    assert (fast.type, fast.data, fast.code, fast.reason, fast.payload, fast.opcode) == (
        checked.type, checked.data, checked.code, checked.reason, checked.payload,
        checked.opcode)
    with pytest.raises(AttributeError):
        del fast.data
