"""``MessageAssembler`` driven directly: fragmentation, UTF-8 and the size limit."""

from __future__ import annotations

import pytest

from reinhardt_ws import CloseCode, Message, ProtocolError
from reinhardt_ws.protocol.assembler import MessageAssembler

TEXT, BINARY, CONT = 0x1, 0x2, 0x0


def feed_all(assembler: MessageAssembler,
             frames: list[tuple[int, bool, bytes]]) -> list[Message | None]:
    return [assembler.feed(opcode, fin, 0, payload) for opcode, fin, payload in frames]


def assert_idle(assembler: MessageAssembler) -> None:
    """No message is in progress: a continuation frame has nothing to continue."""
    with pytest.raises(ProtocolError, match="continuation frame without a message"):
        assembler.feed(CONT, True, 0, b"")


def test_single_frame_messages() -> None:
    assembler = MessageAssembler(None)
    assert assembler.feed(TEXT, True, 0, "héllo".encode()) == Message.text("héllo")
    assert assembler.feed(BINARY, True, 0, b"\x00\xff") == Message.binary(b"\x00\xff")
    assert assembler.feed(TEXT, True, 0, b"") == Message.text("")
    assert assembler.feed(BINARY, True, 0, b"") == Message.binary(b"")
    assert_idle(assembler)


def test_fragmented_text() -> None:
    assembler = MessageAssembler(None)
    results = feed_all(assembler, [(TEXT, False, b"he"), (CONT, False, b""),
                                   (CONT, False, b"ll"), (CONT, True, b"o")])
    assert results[:3] == [None, None, None]
    assert results[3] == Message.text("hello")
    assert_idle(assembler)


def test_fragmented_binary() -> None:
    assembler = MessageAssembler(None)
    assert assembler.feed(BINARY, False, 0, b"\x01") is None
    assert assembler.feed(CONT, True, 0, b"\x02\x03") == Message.binary(b"\x01\x02\x03")
    assert_idle(assembler)
    # While a message is in progress, a new data frame is an error.
    busy = MessageAssembler(None)
    assert busy.feed(BINARY, False, 0, b"\x01") is None
    with pytest.raises(ProtocolError, match="before the previous message ended"):
        busy.feed(TEXT, True, 0, b"x")


def test_multibyte_character_split_across_fragments() -> None:
    raw = "€uro".encode()  # the euro sign is three bytes
    assembler = MessageAssembler(None)
    assert assembler.feed(TEXT, False, 0, raw[:1]) is None
    assert assembler.feed(CONT, False, 0, raw[1:2]) is None
    assert assembler.feed(CONT, True, 0, raw[2:]) == Message.text("€uro")


def test_assembler_is_reusable_after_a_fragmented_message() -> None:
    assembler = MessageAssembler(None)
    feed_all(assembler, [(TEXT, False, b"a"), (CONT, True, b"b")])
    assert assembler.feed(BINARY, False, 0, b"c") is None
    assert assembler.feed(CONT, True, 0, b"d") == Message.binary(b"cd")
    assert assembler.feed(TEXT, True, 0, b"e") == Message.text("e")


def test_continuation_without_a_message_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="continuation") as info:
        MessageAssembler(None).feed(CONT, True, 0, b"x")
    assert info.value.code == CloseCode.PROTOCOL_ERROR


@pytest.mark.parametrize("opcode", [TEXT, BINARY])
def test_new_message_inside_a_fragmented_one_is_a_protocol_error(opcode: int) -> None:
    assembler = MessageAssembler(None)
    assembler.feed(TEXT, False, 0, b"a")
    with pytest.raises(ProtocolError) as info:
        assembler.feed(opcode, True, 0, b"b")
    assert info.value.code == 1002


@pytest.mark.parametrize("rsv", [1, 2, 4, 7])
def test_reserved_bits_are_a_protocol_error(rsv: int) -> None:
    with pytest.raises(ProtocolError, match="reserved") as info:
        MessageAssembler(None).feed(TEXT, True, rsv, b"x")
    assert info.value.code == 1002


@pytest.mark.parametrize("opcode", [0x3, 0x7, 0x8, 0x9, 0xB, 0xF])
def test_non_data_opcodes_are_a_protocol_error(opcode: int) -> None:
    with pytest.raises(ProtocolError) as info:
        MessageAssembler(None).feed(opcode, True, 0, b"")
    assert info.value.code == 1002


@pytest.mark.parametrize("bad", [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80"])
def test_invalid_utf8_in_a_single_frame(bad: bytes) -> None:
    with pytest.raises(ProtocolError, match="UTF-8") as info:
        MessageAssembler(None).feed(TEXT, True, 0, b"ok" + bad)
    assert info.value.code == CloseCode.INVALID_PAYLOAD


def test_binary_is_not_checked_for_utf8() -> None:
    assert MessageAssembler(None).feed(BINARY, True, 0, b"\xff") == Message.binary(b"\xff")


def test_invalid_utf8_fails_on_the_fragment_that_carries_it() -> None:
    assembler = MessageAssembler(None)
    assert assembler.feed(TEXT, False, 0, b"good") is None
    assert assembler.feed(CONT, False, 0, b"still good") is None
    with pytest.raises(ProtocolError) as info:
        assembler.feed(CONT, False, 0, b"bad \xff here")  # not final: must fail now
    assert info.value.code == 1007


def test_invalid_utf8_fails_on_the_first_fragment() -> None:
    with pytest.raises(ProtocolError) as info:
        MessageAssembler(None).feed(TEXT, False, 0, b"\xc0\xaf")  # overlong encoding
    assert info.value.code == 1007


def test_truncated_character_passes_until_the_last_fragment() -> None:
    assembler = MessageAssembler(None)
    # A lone lead byte may still be completed by the next fragment...
    assert assembler.feed(TEXT, False, 0, b"ab\xe2\x82") is None
    # ...but a final fragment that does not complete it is invalid.
    with pytest.raises(ProtocolError) as info:
        assembler.feed(CONT, True, 0, b"")
    assert info.value.code == 1007


def test_bad_continuation_byte_fails_on_its_own_fragment() -> None:
    assembler = MessageAssembler(None)
    assert assembler.feed(TEXT, False, 0, b"\xe2") is None
    with pytest.raises(ProtocolError) as info:
        assembler.feed(CONT, False, 0, b"A")  # 'A' cannot continue a 3-byte sequence
    assert info.value.code == 1007


def test_size_limit_on_a_single_frame() -> None:
    assembler = MessageAssembler(4)
    assert assembler.feed(BINARY, True, 0, b"1234") == Message.binary(b"1234")
    with pytest.raises(ProtocolError) as info:
        assembler.feed(BINARY, True, 0, b"12345")
    assert info.value.code == CloseCode.MESSAGE_TOO_BIG


def test_size_limit_counts_every_fragment() -> None:
    assembler = MessageAssembler(10)
    assert assembler.feed(TEXT, False, 0, b"abcd") is None
    assert assembler.feed(CONT, False, 0, b"efgh") is None
    with pytest.raises(ProtocolError) as info:
        assembler.feed(CONT, False, 0, b"ijk")  # 11 bytes so far: fails before the end
    assert info.value.code == 1009


def test_size_limit_exactly_reached_over_fragments() -> None:
    assembler = MessageAssembler(6)
    assert assembler.feed(BINARY, False, 0, b"abc") is None
    assert assembler.feed(CONT, True, 0, b"def") == Message.binary(b"abcdef")
    # The count starts again with each message.
    assert assembler.feed(BINARY, False, 0, b"abc") is None
    assert assembler.feed(CONT, True, 0, b"def") == Message.binary(b"abcdef")


def test_size_limit_must_be_positive() -> None:
    with pytest.raises(ValueError):
        MessageAssembler(0)
    with pytest.raises(ValueError):
        MessageAssembler(-1)
