"""Property tests (hypothesis) of the layers that parse what a peer sends.

No input makes them raise anything but the library's own errors
(:class:`~reinhardt_ws.WebSocketError` subclasses), and what they accept they
reproduce exactly:

- the MessageAssembler, fed arbitrary (opcode, fin, rsv, payload) sequences,
  against a small model of RFC 6455 sections 5.4 and 8.1;
- WebSocketMessage.from_json and Message.parse_json on arbitrary bytes and JSON;
- the close payload: encode_close_payload / Message.close, and a real server
  answering arbitrary close frames with the code RFC 6455 asks for;
- the Redis envelope (pack_envelope / unpack_envelope);
- the chat protocol, through a real server: arbitrary JSON and bytes never make
  the chat handler fail (no 1011, no traceback), and the connection stays usable.

Each property keeps ``max_examples`` modest so the suite stays fast.
"""

from __future__ import annotations

import codecs
import contextlib

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reinhardt_ws.errors import ProtocolError, WebSocketError
from reinhardt_ws.protocol.assembler import MessageAssembler
from reinhardt_ws.protocol.messages import (
    Message,
    MessageType,
    WebSocketMessage,
    encode_close_payload,
    frame_parts,
    is_valid_close_code,
)
from tests.hostile.harness import BINARY, TEXT

try:  # where a helper is moving it
    from reinhardt_ws.rooms.envelope import (  # type: ignore[import-not-found]
        pack_envelope,
        unpack_envelope,
    )
except ImportError:
    from reinhardt_ws.rooms.redis.backend import pack_envelope, unpack_envelope

FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
#: JSON strategies are slow to draw: fewer examples.
FUZZ_JSON = settings(max_examples=100, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture,
                                            HealthCheck.too_slow])
FUZZ_IO = settings(max_examples=120, deadline=None,
                   suppress_health_check=[HealthCheck.function_scoped_fixture,
                                          HealthCheck.too_slow])

# -- the assembler --------------------------------------------------------------------

utf8_chunks = st.one_of(
    st.binary(max_size=40),
    st.text(max_size=20).map(lambda t: t.encode("utf-8", "surrogatepass")),
    # Valid UTF-8 cut at arbitrary byte boundaries (sequences split over frames).
    st.tuples(st.text(min_size=1, max_size=10), st.integers(0, 40)).map(
        lambda p: p[0].encode("utf-8")[p[1]:]),
)
Frame = tuple[int, bool, int, bytes]


def _fragments(opcode: int, chunks: list[bytes]) -> list[Frame]:
    last = len(chunks) - 1
    return [(opcode if i == 0 else 0, i == last, 0, c) for i, c in enumerate(chunks)]


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


#: One well-formed message in 1-4 fragments (its content may still be illegal).
whole_messages = st.one_of(
    st.tuples(st.sampled_from([1, 2]), st.lists(utf8_chunks, min_size=1, max_size=4)).map(
        lambda p: _fragments(p[0], p[1])),
    # Valid UTF-8 split at arbitrary byte offsets, sequences cut across frames.
    st.tuples(st.text(min_size=1, max_size=20), st.lists(st.integers(0, 80), max_size=3)).map(
        lambda p: _fragments(1, _split(p[0].encode("utf-8"), p[1]))),
)
#: Any frame at all: any opcode, fin, reserved bits.
any_frame = st.tuples(st.sampled_from([0, 1, 2, 3, 7, 8, 0xF]), st.booleans(),
                      st.integers(0, 7), utf8_chunks).map(lambda f: [f])
frames_strategy = st.lists(st.one_of(whole_messages, whole_messages, any_frame),
                           max_size=5).map(lambda groups: [f for g in groups for f in g])


def valid_utf8_prefix(data: bytes, final: bool) -> bool:
    try:
        codecs.getincrementaldecoder("utf-8")("strict").decode(data, final)
    except UnicodeDecodeError:
        return False
    return True


@FUZZ
@given(frames=frames_strategy, limit=st.one_of(st.none(), st.integers(1, 80)))
def test_assembler_only_raises_protocol_errors(frames: list[Frame],
                                               limit: int | None) -> None:
    assembler = MessageAssembler(limit)
    opcode: int | None = None  # the model: the message in progress
    parts: list[bytes] = []
    for op, fin, rsv, payload in frames:
        # What RFC 6455 allows for this frame, given the model's state.
        allowed: set[int] = set()
        if rsv:
            allowed.add(1002)
        if op not in (0, 1, 2) or (op == 0 and opcode is None) or (op != 0 and opcode is not None):
            allowed.add(1002)
        kind = opcode if op == 0 else op
        pending = [*(parts if op == 0 else []), payload]
        data = b"".join(pending)
        if limit is not None and len(data) > limit:
            allowed.add(1009)
        if kind == 1 and not valid_utf8_prefix(data, fin):
            allowed.add(1007)
        try:
            message = assembler.feed(op, fin, rsv, payload)
        except ProtocolError as exc:
            assert allowed, f"refused a valid frame: {exc} ({exc.code})"
            assert exc.code in allowed, (exc.code, allowed, str(exc))
            return  # the connection is closing: the assembler is not fed again
        assert not allowed, f"accepted a frame that needs close code(s) {allowed}"
        if not fin:
            opcode, parts = kind, pending
            assert message is None  # the model says a message is in progress
            continue
        opcode, parts = None, []
        assert message is not None  # and the next continuation is refused, as modelled
        if kind == 1:
            assert message.type is MessageType.TEXT
            assert message.data == data.decode("utf-8")
            assert message.payload == data
        else:
            assert message.type is MessageType.BINARY
            assert message.data == data
        assert limit is None or len(message.payload) <= limit


# -- JSON messages ----------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)

envelope_like = st.dictionaries(
    st.sampled_from(["message_type", "data", "timestamp", "extra"]),
    st.one_of(json_values, st.sampled_from(["text", "binary", "ping", "pong", "close",
                                            "TEXT", ""])),
    max_size=4)

raw_inputs = st.one_of(
    st.binary(max_size=80),
    st.text(max_size=40),
    envelope_like.map(lambda d: orjson.dumps(d)),
    json_values.map(lambda v: orjson.dumps(v)),
    # Nesting around orjson's depth limit (1024).
    st.integers(1000, 1100).map(lambda n: b"[" * n + b"]" * n),
)


@FUZZ_JSON
@given(raw=raw_inputs)
def test_websocket_message_from_json_only_raises_protocol_errors(raw: bytes | str) -> None:
    try:
        message = WebSocketMessage.from_json(raw)
    except ProtocolError:
        return
    # What it accepts survives the trip back to the wire and again.
    again = WebSocketMessage.from_json(message.to_json())
    assert again == message
    assert WebSocketMessage.from_json(frame_parts(message)[1]) == message


@FUZZ_JSON
@given(raw=raw_inputs)
def test_parse_json_only_raises_protocol_errors(raw: bytes | str) -> None:
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return  # never a text message: the assembler refuses it first (1007)
    else:
        try:
            raw.encode("utf-8")
        except UnicodeEncodeError:
            return  # a lone surrogate is no text a peer can send
        text = raw
    with contextlib.suppress(ProtocolError):
        Message.text(text).parse_json()


# -- close payloads ---------------------------------------------------------------------

@FUZZ
@given(code=st.integers(-10, 70000), reason=st.text(max_size=130))
def test_close_payload_encoding(code: int, reason: str) -> None:
    """Local API: ``ValueError`` (documented) for what may not be sent, else the
    exact payload, within a control frame."""
    try:
        payload = encode_close_payload(code, reason)
    except (ValueError, UnicodeEncodeError):
        with pytest.raises(ValueError):
            Message.close(code, reason)
        return
    assert is_valid_close_code(code)
    assert len(payload) <= 125
    assert int.from_bytes(payload[:2], "big") == code
    assert payload[2:].decode("utf-8") == reason
    assert Message.close(code, reason).payload == payload


@FUZZ
@given(kind=st.integers(0, 255), origin=st.binary(min_size=8, max_size=8),
       ids=st.lists(st.text(max_size=40), max_size=5), payload=st.binary(max_size=64))
def test_envelope_round_trip(kind: int, origin: bytes, ids: list[str], payload: bytes) -> None:
    envelope = unpack_envelope(pack_envelope(kind, origin, ids, payload))
    assert (envelope.kind, envelope.origin, list(envelope.ids), envelope.frame) == (
        kind, origin, ids, payload)


@FUZZ
@given(data=st.one_of(
    st.binary(max_size=64),
    # A valid head (version 1) with an arbitrary count and body.
    st.tuples(st.integers(0, 255), st.binary(min_size=8, max_size=8), st.integers(0, 65535),
              st.binary(max_size=40)).map(
        lambda p: bytes((1, p[0])) + p[1] + p[2].to_bytes(2, "big") + p[3])))
def test_unpack_envelope_only_raises_its_documented_error(data: bytes) -> None:
    """Whatever arrives on a channel: ``ValueError`` (the documented error; a
    ProtocolError would do as well), never ``struct.error`` or anything else."""
    try:
        unpack_envelope(data)
    except (ValueError, WebSocketError):
        pass


# -- the chat protocol, through a real server ------------------------------------------

INT64 = st.integers(-(2**63), 2**63 - 1)  # what JSON (orjson) can carry
room_names = st.one_of(st.sampled_from(["lobby", "r", ""]), st.text(max_size=12),
                       INT64, st.none(), st.lists(INT64, max_size=2),
                       st.text(min_size=199, max_size=202))
chat_requests = st.one_of(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["join", "leave", "message"])},
        optional={"room": room_names, "data": json_values, "extra": json_values}),
    st.dictionaries(st.text(max_size=6), json_values, max_size=4),
    json_values,
).map(lambda v: (TEXT, orjson.dumps(v)))
chat_inputs = st.one_of(
    chat_requests,
    st.binary(max_size=60).map(lambda b: (BINARY, b)),
    st.text(max_size=40).map(lambda t: (TEXT, t.encode("utf-8", "replace"))),
)
