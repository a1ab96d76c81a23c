"""The wire envelope every distributed backend shares: one framed message, its
origin process and the connection ids it concerns.

Layout (network byte order)::

    version:u8  kind:u8  origin:8 bytes  count:u16  count x (len:u16, utf-8 id)  frame

``ids`` are the excluded connection ids of a broadcast, or the target of a direct
message.  ``frame`` is a complete WebSocket frame, carried as it is: a receiver
slices it out and hands it to its fan-out without decoding it.  The offsets
below are derived from the header's struct format, field by field.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import NamedTuple

__all__ = [
    "ENVELOPE_VERSION",
    "HEAD_SIZE",
    "KIND_ALL",
    "KIND_DIRECT",
    "KIND_HISTORY",
    "KIND_ROOM",
    "OFFSET",
    "ORIGIN_SIZE",
    "Envelope",
    "origin_of",
    "pack_envelope",
    "unpack_envelope",
]

ENVELOPE_VERSION = 1
KIND_ROOM = 0    # a room's broadcast; the room is the channel it came on
KIND_ALL = 1     # broadcast_all
KIND_DIRECT = 2  # send_to: ids holds the one target
#: A room's stored publication (written by the history script): its frame is
#: preceded by ``b"<offset> <epoch> <nonce> "`` (ASCII), and its origin's own
#: subscriber delivers it too, so every process delivers in the stored order.
KIND_HISTORY = 3

ORIGIN_SIZE = 8
#: The header, one (name, struct code) pair per field, in order.
_FIELDS = (("version", "B"), ("kind", "B"), ("origin", f"{ORIGIN_SIZE}s"), ("count", "H"))
_HEAD = struct.Struct("!" + "".join(code for _name, code in _FIELDS))
_LEN = struct.Struct("!H")
HEAD_SIZE = _HEAD.size
#: Byte offset of each header field.
OFFSET = {name: struct.calcsize("!" + "".join(code for _n, code in _FIELDS[:i]))
          for i, (name, _code) in enumerate(_FIELDS)}
_ORIGIN = slice(OFFSET["origin"], OFFSET["origin"] + ORIGIN_SIZE)


class Envelope(NamedTuple):
    kind: int
    origin: bytes
    ids: tuple[str, ...]
    frame: bytes


def pack_envelope(kind: int, origin: bytes, ids: Iterable[str], frame: bytes) -> bytes:
    """The published form of one framed message.  *origin* is 8 bytes; each id
    at most 65,535 bytes of UTF-8 (``ValueError`` otherwise)."""
    if len(origin) != ORIGIN_SIZE:
        raise ValueError(f"origin must be {ORIGIN_SIZE} bytes")
    encoded = [i.encode("utf-8") for i in ids]
    try:
        head = _HEAD.pack(ENVELOPE_VERSION, kind, origin, len(encoded))
        lengths = [_LEN.pack(len(raw)) for raw in encoded]
    except struct.error as exc:
        raise ValueError(f"cannot pack envelope: {exc}") from None
    if not encoded:
        return head + frame
    parts = [head]
    for length, raw in zip(lengths, encoded, strict=True):
        parts.append(length)
        parts.append(raw)
    parts.append(frame)
    return b"".join(parts)


def origin_of(data: bytes) -> bytes:
    """The origin of an envelope, without unpacking the rest: the cheap test a
    receiver makes to skip its own publications.  ``ValueError`` if *data* is not
    an envelope of this version."""
    if len(data) < HEAD_SIZE or data[OFFSET["version"]] != ENVELOPE_VERSION:
        raise ValueError(f"not a reinhardt-ws envelope of version {ENVELOPE_VERSION}")
    return data[_ORIGIN]


def unpack_envelope(data: bytes) -> Envelope:
    """Inverse of :func:`pack_envelope`.  Any other input raises ``ValueError``
    (``UnicodeDecodeError``, a ``ValueError``, for an id that is not UTF-8)."""
    if len(data) < HEAD_SIZE:
        raise ValueError("envelope too short")
    version, kind, origin, count = _HEAD.unpack_from(data)
    if version != ENVELOPE_VERSION:
        raise ValueError(f"unknown envelope version {version}")
    offset = HEAD_SIZE
    if not count:
        return Envelope(kind, origin, (), data[offset:])
    ids = []
    end = len(data)
    for _ in range(count):
        if offset + _LEN.size > end:
            raise ValueError("truncated envelope")
        (size,) = _LEN.unpack_from(data, offset)
        offset += _LEN.size
        if offset + size > end:
            raise ValueError("truncated envelope")
        ids.append(data[offset:offset + size].decode("utf-8"))
        offset += size
    return Envelope(kind, origin, tuple(ids), data[offset:])
