"""The wire envelope of the distributed backends: layout, round trip, and no
input that makes it raise anything but ValueError."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reinhardt_ws.rooms.envelope import (
    ENVELOPE_VERSION,
    ENVELOPE_VERSION_DEFLATE,
    HEAD_SIZE,
    HEAD_SIZE_DEFLATE,
    KIND_ALL,
    KIND_DIRECT,
    KIND_HISTORY,
    KIND_ROOM,
    MAX_DEFLATED_SIZE,
    OFFSET,
    Deflated,
    Envelope,
    origin_of,
    pack_envelope,
    unpack_envelope,
)

ORIGIN = bytes(range(8))


def test_layout_is_derived_from_the_struct_format() -> None:
    assert OFFSET == {"version": 0, "kind": 1, "origin": 2, "count": 10}
    assert HEAD_SIZE == 12
    packed = pack_envelope(KIND_ALL, ORIGIN, ("ab",), b"F")
    assert packed[OFFSET["version"]] == ENVELOPE_VERSION
    assert packed[OFFSET["kind"]] == KIND_ALL
    assert origin_of(packed) == ORIGIN
    assert struct.unpack_from("!H", packed, OFFSET["count"]) == (1,)
    assert packed[HEAD_SIZE:] == b"\x00\x02abF"


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="origin"):
        pack_envelope(KIND_ROOM, b"short", (), b"")
    with pytest.raises(ValueError):
        pack_envelope(KIND_DIRECT, ORIGIN, ("x" * 70_000,), b"")
    with pytest.raises(ValueError):
        pack_envelope(300, ORIGIN, (), b"")
    plain = pack_envelope(KIND_ROOM, ORIGIN, (), b"frame")
    unknown = bytes([ENVELOPE_VERSION_DEFLATE + 1]) + plain[1:]
    for bad in (b"", plain[:HEAD_SIZE - 1], unknown, bytes([0]) + plain[1:]):
        with pytest.raises(ValueError):
            origin_of(bad)
        with pytest.raises(ValueError):
            unpack_envelope(bad)
    with_id = pack_envelope(KIND_DIRECT, ORIGIN, ("abc",), b"")
    for cut in range(HEAD_SIZE, HEAD_SIZE + 5):  # inside the id's length or bytes
        with pytest.raises(ValueError, match="truncated"):
            unpack_envelope(with_id[:cut])
    not_utf8 = with_id[:HEAD_SIZE + 2] + b"\xff\xfe\xfd"
    with pytest.raises(ValueError):
        unpack_envelope(not_utf8)


@given(kind=st.sampled_from([KIND_ROOM, KIND_ALL, KIND_DIRECT]),
       origin=st.binary(min_size=8, max_size=8),
       ids=st.lists(st.text(max_size=40), max_size=5).map(tuple),
       frame=st.binary(max_size=200))
def test_round_trip(kind: int, origin: bytes, ids: tuple[str, ...], frame: bytes) -> None:
    packed = pack_envelope(kind, origin, ids, frame)
    assert origin_of(packed) == origin
    assert unpack_envelope(packed) == Envelope(kind, origin, ids, frame)


def test_compressed_envelope_layout_and_limits() -> None:
    """Version 2: the deflate description after version 1's header, then the
    ids, then the payload; every field outside its limits is refused on both
    sides."""
    deflate = Deflated(0x1, 12, 300)
    packed = pack_envelope(KIND_ROOM, ORIGIN, ("ab",), b"DEFLATE", deflate)
    assert packed[OFFSET["version"]] == ENVELOPE_VERSION_DEFLATE
    assert origin_of(packed) == ORIGIN
    assert HEAD_SIZE_DEFLATE == HEAD_SIZE + 6
    assert struct.unpack_from("!BBI", packed, HEAD_SIZE) == (1, 12, 300)
    assert packed[HEAD_SIZE_DEFLATE:] == b"\x00\x02abDEFLATE"
    assert unpack_envelope(packed) == Envelope(KIND_ROOM, ORIGIN, ("ab",), b"DEFLATE", deflate)
    bare = pack_envelope(KIND_HISTORY, ORIGIN, (), memoryview(b"P"), deflate)
    assert unpack_envelope(bare) == Envelope(KIND_HISTORY, ORIGIN, (), b"P", deflate)
    bad_fields = [Deflated(0x0, 12, 300), Deflated(0x8, 12, 300), Deflated(0x41, 12, 300),
                  Deflated(0x1, 7, 300), Deflated(0x1, 16, 300), Deflated(0x2, 12, 0),
                  Deflated(0x2, 12, MAX_DEFLATED_SIZE + 1)]
    for bad in bad_fields:
        with pytest.raises(ValueError, match="compressed envelope"):
            pack_envelope(KIND_ROOM, ORIGIN, (), b"x", bad)
        forged = packed[:HEAD_SIZE] + struct.pack("!BBI", *bad) + packed[HEAD_SIZE_DEFLATE:]
        with pytest.raises(ValueError, match="compressed envelope"):
            unpack_envelope(forged)
    with pytest.raises(ValueError, match="too short"):
        unpack_envelope(packed[:HEAD_SIZE_DEFLATE - 1])


@given(st.binary(max_size=64))
def test_any_bytes_unpack_or_raise_value_error(data: bytes) -> None:
    for candidate in (data, bytes([ENVELOPE_VERSION]) + data,
                      bytes([ENVELOPE_VERSION_DEFLATE]) + data):
        try:
            envelope = unpack_envelope(candidate)
        except ValueError:
            continue
        assert envelope.origin == origin_of(candidate)
