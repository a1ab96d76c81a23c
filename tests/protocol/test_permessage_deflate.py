"""permessage-deflate (RFC 7692) without I/O: negotiation from headers, the
per-connection codec, the shared compressor, and the assembler with RSV1."""

from __future__ import annotations

import os
import tracemalloc
import zlib
from pathlib import Path

import pytest

from reinhardt_ws import CloseCode, Message, ProtocolError
from reinhardt_ws.protocol.assembler import MessageAssembler
from reinhardt_ws.protocol.extensions.base import (
    InvalidExtensionHeader,
    format_extension,
    parse_extensions,
)
from reinhardt_ws.protocol.extensions.permessage_deflate import (
    DeflateParameters,
    DeflateSettings,
    NegotiationError,
    PerMessageDeflate,
    SharedCompressor,
    build_compressed_frame,
    check_response,
    client_offer,
    negotiate,
    shared_compressor,
    split_frame,
)

TEXT, BINARY, CONT = 0x1, 0x2, 0x0
RSV1 = 4
SERVER = DeflateSettings()
CLIENT = DeflateSettings.client()


def deflate_raw(data: bytes, wbits: int = 15) -> bytes:
    """What a peer puts on the wire: raw deflate, sync flush, tail removed."""
    c = zlib.compressobj(6, zlib.DEFLATED, -wbits)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def inflate_raw(data: bytes, wbits: int = 15) -> bytes:
    return zlib.decompressobj(-wbits).decompress(data + b"\x00\x00\xff\xff")


# -- header grammar -------------------------------------------------------------

def test_parse_several_offers_and_quoted_values() -> None:
    offers = parse_extensions(
        'permessage-deflate; client_max_window_bits; server_max_window_bits="10", '
        "x-webkit-deflate-frame,permessage-deflate")
    assert [o.name for o in offers] == ["permessage-deflate", "x-webkit-deflate-frame",
                                        "permessage-deflate"]
    assert offers[0].params == (("client_max_window_bits", None),
                                ("server_max_window_bits", "10"))
    assert offers[2].params == ()
    assert format_extension("permessage-deflate", offers[0].params) == (
        "permessage-deflate; client_max_window_bits; server_max_window_bits=10")


@pytest.mark.parametrize("header", ["permessage-deflate; =1", ";x", "a b", 'a; b="c d"',
                                    "a; b=", "a;; b"])
def test_parse_rejects_malformed(header: str) -> None:
    with pytest.raises(InvalidExtensionHeader):
        parse_extensions(header)


# -- server negotiation ------------------------------------------------------------

@pytest.mark.parametrize(("offer", "answer"), [
    # The server always answers server_no_context_takeover (broadcasts share).
    ("permessage-deflate", "permessage-deflate; server_no_context_takeover"),
    ("permessage-deflate; client_max_window_bits",
     "permessage-deflate; server_no_context_takeover; client_max_window_bits=12"),
    ("permessage-deflate; client_max_window_bits=10",
     "permessage-deflate; server_no_context_takeover; client_max_window_bits=10"),
    ("permessage-deflate; client_max_window_bits=15",
     "permessage-deflate; server_no_context_takeover; client_max_window_bits=12"),
    ("permessage-deflate; server_max_window_bits=10",
     "permessage-deflate; server_no_context_takeover; server_max_window_bits=10"),
    ("permessage-deflate; server_max_window_bits=15",
     "permessage-deflate; server_no_context_takeover; server_max_window_bits=12"),
    ("permessage-deflate; server_max_window_bits=8",
     "permessage-deflate; server_no_context_takeover; server_max_window_bits=8"),
    ("permessage-deflate; client_no_context_takeover; server_no_context_takeover",
     "permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
    ('permessage-deflate; client_max_window_bits="9"',
     "permessage-deflate; server_no_context_takeover; client_max_window_bits=9"),
])
def test_server_answers(offer: str, answer: str) -> None:
    params = negotiate(offer, SERVER)
    assert params is not None
    assert params.response_header() == answer


@pytest.mark.parametrize("offer", [
    None, "", "x-webkit-deflate-frame",
    "permessage-deflate; unknown=1",
    "permessage-deflate; server_max_window_bits=7",
    "permessage-deflate; server_max_window_bits=16",
    "permessage-deflate; server_max_window_bits",  # a value is required
    "permessage-deflate; client_max_window_bits=abc",
    "permessage-deflate; server_no_context_takeover=1",
    "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
    "permessage-deflate; =broken",
])
def test_server_declines(offer: str | None) -> None:
    assert negotiate(offer, SERVER) is None


def test_first_acceptable_offer_wins() -> None:
    header = ("permessage-deflate; bogus, "
              "permessage-deflate; server_max_window_bits=10; client_max_window_bits, "
              "permessage-deflate")
    params = negotiate(header, SERVER)
    assert params == DeflateParameters(True, False, 10, 12)


def test_server_settings_change_the_answer() -> None:
    settings = DeflateSettings(server_no_context_takeover=False, client_no_context_takeover=True,
                               server_max_window_bits=15, client_max_window_bits=None)
    params = negotiate("permessage-deflate; client_max_window_bits=11", settings)
    assert params is not None
    assert params.response_header() == (
        "permessage-deflate; client_no_context_takeover; client_max_window_bits=11")


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="window_bits"):
        DeflateSettings(server_max_window_bits=16)
    with pytest.raises(ValueError, match="mem_level"):
        DeflateSettings(mem_level=0)
    with pytest.raises(ValueError, match="threshold"):
        DeflateSettings(threshold=-1)


# -- client offer and response check -----------------------------------------------

def test_client_offer() -> None:
    assert client_offer(CLIENT) == "permessage-deflate; client_max_window_bits"
    assert client_offer(DeflateSettings(server_max_window_bits=10, client_max_window_bits=9,
                                        client_no_context_takeover=True)) == (
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
        "server_max_window_bits=10; client_max_window_bits=9")


def test_client_accepts_what_the_server_may_answer() -> None:
    assert check_response(None, CLIENT) is None
    assert check_response("permessage-deflate", CLIENT) == DeflateParameters()
    assert check_response(
        "permessage-deflate; server_no_context_takeover; client_max_window_bits=12; "
        "server_max_window_bits=10", CLIENT) == DeflateParameters(True, False, 10, 12)
    # Our own server's answer to our own offer.
    ours = negotiate(client_offer(CLIENT), SERVER)
    assert ours is not None
    assert check_response(ours.response_header(), CLIENT) == ours


@pytest.mark.parametrize("answer", [
    "x-other",
    "permessage-deflate, permessage-deflate",
    "permessage-deflate; client_max_window_bits",  # a value is required in answers
    "permessage-deflate; wat",
    "permessage-deflate; server_max_window_bits=16",
    "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
])
def test_client_rejects_bad_answers(answer: str) -> None:
    with pytest.raises(NegotiationError):
        check_response(answer, CLIENT)


def test_client_rejects_a_window_above_what_it_asked() -> None:
    asked = DeflateSettings(server_max_window_bits=10, client_max_window_bits=11)
    with pytest.raises(NegotiationError):
        check_response("permessage-deflate; server_max_window_bits=12", asked)
    with pytest.raises(NegotiationError):
        check_response("permessage-deflate", asked)  # the server must limit itself
    with pytest.raises(NegotiationError):
        check_response("permessage-deflate; server_max_window_bits=10; "
                       "client_max_window_bits=12", asked)
    wants_no_context = DeflateSettings(server_no_context_takeover=True,
                                       server_max_window_bits=None)
    with pytest.raises(NegotiationError, match="server_no_context_takeover"):
        check_response("permessage-deflate", wants_no_context)
    assert check_response("permessage-deflate; server_no_context_takeover",
                          wants_no_context) == DeflateParameters(True, False, None, None)


# -- the codec ------------------------------------------------------------------------

def server_codec(offer: str = "permessage-deflate; client_max_window_bits",
                 settings: DeflateSettings = SERVER) -> PerMessageDeflate:
    params = negotiate(offer, settings)
    assert params is not None
    return PerMessageDeflate(params, settings, is_client=False)


def test_small_and_incompressible_messages_go_plain() -> None:
    codec = server_codec()
    assert codec.encode(b"a" * 127) is None  # under the 128 B threshold
    assert codec.encode(os.urandom(4096)) is None  # does not shrink
    text = b'{"type":"chat","text":"hello"}' * 40
    wire = codec.encode(text)
    assert wire is not None and len(wire) < len(text) // 5
    assert not wire.endswith(b"\x00\x00\xff\xff")
    assert inflate_raw(wire, 12) == text


def test_shared_compressor_output_is_context_free() -> None:
    shared = SharedCompressor(12, 5, 6, 128)
    first = b"the same message, twice over. " * 20
    a = shared.compress(first)
    b = shared.compress(first)
    # No back-reference to the previous message: the same bytes every time,
    # each decodable by a fresh inflater.
    assert a == b and a is not None
    assert inflate_raw(a, 12) == first
    assert shared_compressor(12, SERVER) is shared_compressor(12, SERVER)
    assert shared_compressor(12, SERVER) is not shared_compressor(10, SERVER)


def test_server_own_sends_share_the_broadcast_compressor() -> None:
    a, b = server_codec(), server_codec("permessage-deflate")
    assert a.shared is not None and a.shared is b.shared
    narrow = server_codec("permessage-deflate; server_max_window_bits=10")
    assert narrow.shared is not a.shared and narrow.shared is not None
    assert narrow.shared.window_bits == 10


def test_eight_bit_window_compresses_only_short_messages() -> None:
    codec = server_codec("permessage-deflate; server_max_window_bits=8")
    short = b"abcdefgh" * 32  # 256 bytes
    wire = codec.encode(short)
    assert wire is not None
    assert zlib.decompressobj(-8).decompress(wire + b"\x00\x00\xff\xff") == short
    assert codec.encode(b"abcdefgh" * 33) is None


def test_context_takeover_compressor_keeps_history() -> None:
    settings = DeflateSettings(server_no_context_takeover=False)
    codec = server_codec("permessage-deflate", settings)
    assert codec.shared is None
    text = b"0123456789abcdef" * 16
    first, second = codec.encode(text), codec.encode(text)
    assert first is not None and second is not None
    assert len(second) < len(first)  # refers back to the first message
    d = zlib.decompressobj(-12)
    assert d.decompress(first + b"\x00\x00\xff\xff") == text
    assert d.decompress(second + b"\x00\x00\xff\xff") == text


def test_frames() -> None:
    for size in (0, 125, 126, 65535, 65536):
        payload = b"x" * size
        frame = build_compressed_frame(TEXT, payload)
        assert frame[0] == 0xC1
        opcode, body = split_frame(frame)
        assert opcode == TEXT and body.tobytes() == payload
    with pytest.raises(ValueError):
        build_compressed_frame(0x9, b"")
    with pytest.raises(ValueError):
        split_frame(b"\x81\x05ab")


# -- receiving: the assembler with RSV1 -------------------------------------------------

def test_rsv1_without_the_extension_is_1002() -> None:
    with pytest.raises(ProtocolError) as info:
        MessageAssembler(None).feed(TEXT, True, RSV1, deflate_raw(b"hi"))
    assert info.value.code == CloseCode.PROTOCOL_ERROR


def test_compressed_single_frame_and_fragments() -> None:
    assembler = MessageAssembler(1 << 20, server_codec())
    assert assembler.feed(TEXT, True, RSV1, deflate_raw("héllo".encode())) == Message.text("héllo")
    assert assembler.feed(BINARY, True, 0, b"plain") == Message.binary(b"plain")
    data = os.urandom(1000) + b"z" * 5000
    wire = deflate_raw(data)
    pieces = [wire[i:i + 97] for i in range(0, len(wire), 97)]
    results = [assembler.feed(BINARY, False, RSV1, pieces[0])]
    results += [assembler.feed(CONT, False, 0, p) for p in pieces[1:]]
    results.append(assembler.feed(CONT, True, 0, b""))
    assert results[:-1] == [None] * len(pieces)
    assert results[-1] == Message.binary(data)


def test_client_context_takeover_across_messages() -> None:
    # The client keeps its context (no client_no_context_takeover negotiated).
    codec = server_codec("permessage-deflate; client_max_window_bits=15")
    c = zlib.compressobj(6, zlib.DEFLATED, -12)
    assembler = MessageAssembler(1 << 20, codec)
    for _ in range(3):
        wire = (c.compress(b"repeat me " * 30) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]
        assert assembler.feed(TEXT, True, RSV1, wire) == Message.text("repeat me " * 30)


@pytest.mark.parametrize(("opcode", "rsv"), [(CONT, RSV1), (TEXT, 2), (TEXT, RSV1 | 1)])
def test_rsv_misuse_is_1002(opcode: int, rsv: int) -> None:
    assembler = MessageAssembler(None, server_codec())
    if opcode == CONT:
        assembler.feed(TEXT, False, RSV1, deflate_raw(b"abc"))
    with pytest.raises(ProtocolError) as info:
        assembler.feed(opcode, True, rsv, b"")
    assert info.value.code == CloseCode.PROTOCOL_ERROR


def test_corrupt_data_is_1007() -> None:
    assembler = MessageAssembler(None, server_codec())
    with pytest.raises(ProtocolError) as info:
        assembler.feed(BINARY, True, RSV1, b"\xff\xff\xff\xff garbage")
    assert info.value.code == CloseCode.INVALID_PAYLOAD


def test_invalid_utf8_after_inflate_is_1007() -> None:
    assembler = MessageAssembler(None, server_codec())
    with pytest.raises(ProtocolError) as info:
        assembler.feed(TEXT, True, RSV1, deflate_raw(b"\xff\xfe" * 100))
    assert info.value.code == CloseCode.INVALID_PAYLOAD


def test_data_after_the_final_block_is_1007() -> None:
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    ended = c.compress(b"abc") + c.flush(zlib.Z_FINISH)
    assembler = MessageAssembler(None, server_codec())
    assert assembler.feed(TEXT, True, RSV1, ended) == Message.text("abc")
    with pytest.raises(ProtocolError) as info:
        MessageAssembler(None, server_codec()).feed(TEXT, True, RSV1, ended + b"\x01\x02")
    assert info.value.code == CloseCode.INVALID_PAYLOAD


def test_decompression_bomb_stops_at_the_limit() -> None:
    """64 MiB of zeros compress to about 64 KiB; a 64 KiB limit must stop them after at
    most 64 KiB + 1 bytes of output, in one frame or in 1 KiB fragments, and the
    output never exists in full (peak of traced allocations, zlib's included)."""
    limit = 64 * 1024
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = bytes(1 << 20)
    bomb = b"".join(c.compress(chunk) for _ in range(64)) + c.flush(zlib.Z_SYNC_FLUSH)
    bomb = bomb[:-4]
    del chunk
    assert len(bomb) < 100_000
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError) as info:
            MessageAssembler(limit, server_codec()).feed(BINARY, True, RSV1, bomb)
        assert info.value.code == CloseCode.MESSAGE_TOO_BIG
        assert tracemalloc.get_traced_memory()[1] < 2 * 1024 * 1024
        tracemalloc.reset_peak()
        assembler = MessageAssembler(limit, server_codec())
        with pytest.raises(ProtocolError) as info:
            assembler.feed(BINARY, False, RSV1, bomb[:1024])
            for i in range(1024, len(bomb), 1024):
                assembler.feed(CONT, False, 0, bomb[i:i + 1024])
        assert info.value.code == CloseCode.MESSAGE_TOO_BIG
        assert tracemalloc.get_traced_memory()[1] < 2 * 1024 * 1024
    finally:
        tracemalloc.stop()


def test_limit_is_exact_on_the_decompressed_size() -> None:
    data = b"a" * 1000
    assert MessageAssembler(1000, server_codec()).feed(
        BINARY, True, RSV1, deflate_raw(data)) == Message.binary(data)
    with pytest.raises(ProtocolError) as info:
        MessageAssembler(999, server_codec()).feed(BINARY, True, RSV1, deflate_raw(data))
    assert info.value.code == CloseCode.MESSAGE_TOO_BIG


def test_decoder_frees_its_window_without_client_context() -> None:
    codec = server_codec("permessage-deflate; client_no_context_takeover")
    assembler = MessageAssembler(None, codec)
    assembler.feed(TEXT, True, RSV1, deflate_raw(b"x" * 500))
    assert not codec.decoder().holds_state  # type: ignore[attr-defined]
    kept = server_codec("permessage-deflate")
    MessageAssembler(None, kept).feed(TEXT, True, RSV1, deflate_raw(b"x" * 500))
    assert kept.decoder().holds_state  # type: ignore[attr-defined]


def test_extensions_are_sans_io() -> None:
    """No module of the extensions package imports asyncio, picows or sockets
    (the package root imports the whole library, so the sources are checked)."""
    folder = Path(__file__).resolve().parents[2] / "src/reinhardt_ws/protocol/extensions"
    sources = sorted(folder.glob("*.py"))
    assert len(sources) >= 3
    for path in sources:
        imports = [line for line in path.read_text(encoding="utf-8").splitlines()
                   if line.startswith(("import ", "from "))]
        for line in imports:
            assert not any(name in line for name in ("asyncio", "picows", "socket")), line
