"""The wire envelope every distributed backend shares: one framed message, its
origin process and the connection ids it concerns.

Layout (network byte order), version 1::

    version:u8  kind:u8  origin:8 bytes  count:u16  count x (len:u16, utf-8 id)  frame

``ids`` are the excluded connection ids of a broadcast, or the target of a direct
message.  ``frame`` is a complete WebSocket frame, carried as it is: a receiver
slices it out and hands it to its fan-out without decoding it.  The offsets
below are derived from the header's struct format, field by field.

Version 2 carries a broadcast compressed once for the whole cluster
(permessage-deflate, without context): three more header fields describe it and
the body is the raw deflate payload (trailing ``00 00 ff ff`` removed) instead of
a frame::

    version:u8=2  kind:u8  origin:8  count:u16  opcode:u8  window_bits:u8  size:u32
    ids  deflate payload

``opcode`` is the message's (1 text, 2 binary), ``window_bits`` the window it was
compressed with (8..15), ``size`` the plain payload's length (at most
:data:`MAX_DEFLATED_SIZE`).  The receiver inflates it once, which both checks it
and rebuilds the plain frame (see :func:`reinhardt_ws.rooms._compression.inflate_carried`).
A process that predates version 2 rejects such an envelope as a bad message
(counted and logged, never delivered); version 1 stays what it was.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import NamedTuple

__all__ = [
    "ENVELOPE_VERSION",
    "ENVELOPE_VERSION_DEFLATE",
    "HEAD_SIZE",
    "HEAD_SIZE_DEFLATE",
    "KIND_ALL",
    "KIND_DIRECT",
    "KIND_HISTORY",
    "KIND_ROOM",
    "MAX_DEFLATED_SIZE",
    "OFFSET",
    "ORIGIN_SIZE",
    "Deflated",
    "Envelope",
    "origin_of",
    "pack_envelope",
    "unpack_envelope",
]

ENVELOPE_VERSION = 1
#: An envelope whose body is a message compressed once for the cluster.
ENVELOPE_VERSION_DEFLATE = 2
#: The largest plain payload a version-2 envelope may describe (what inflating
#: one may allocate); longer messages travel as version 1.
MAX_DEFLATED_SIZE = 16 * 1024 * 1024
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
#: Version 2's extra header fields, right after version 1's.
_DEFLATE = struct.Struct("!BBI")
HEAD_SIZE_DEFLATE = HEAD_SIZE + _DEFLATE.size
#: Byte offset of each header field.
OFFSET = {name: struct.calcsize("!" + "".join(code for _n, code in _FIELDS[:i]))
          for i, (name, _code) in enumerate(_FIELDS)}
_ORIGIN = slice(OFFSET["origin"], OFFSET["origin"] + ORIGIN_SIZE)


class Deflated(NamedTuple):
    """What a version-2 envelope says of its compressed body."""

    opcode: int       # 1 text, 2 binary
    window_bits: int  # the window it was compressed with, 8..15
    size: int         # the plain payload's length


class Envelope(NamedTuple):
    kind: int
    origin: bytes
    ids: tuple[str, ...]
    #: the frame (version 1), or the deflate payload (version 2; for
    #: ``KIND_HISTORY`` after the ``b"<offset> <epoch> <nonce> "`` prefix)
    frame: bytes
    deflate: Deflated | None = None


def _check_deflated(deflate: Deflated) -> None:
    opcode, bits, size = deflate
    if opcode != 0x1 and opcode != 0x2:
        raise ValueError(f"a compressed envelope of opcode {opcode:#x}")
    if not 8 <= bits <= 15:
        raise ValueError(f"a compressed envelope with window_bits={bits}")
    if not 0 < size <= MAX_DEFLATED_SIZE:
        raise ValueError(f"a compressed envelope of {size} plain bytes")


def pack_envelope(kind: int, origin: bytes, ids: Iterable[str], frame: bytes | memoryview,
                  deflate: Deflated | None = None) -> bytes:
    """The published form of one framed message (version 1), or with *deflate*
    of one compressed payload *frame* (version 2).  *origin* is 8 bytes; each id
    at most 65,535 bytes of UTF-8; *deflate* within the limits the module
    docstring gives (``ValueError`` otherwise)."""
    if len(origin) != ORIGIN_SIZE:
        raise ValueError(f"origin must be {ORIGIN_SIZE} bytes")
    encoded = [i.encode("utf-8") for i in ids]
    try:
        if deflate is None:
            head = _HEAD.pack(ENVELOPE_VERSION, kind, origin, len(encoded))
        else:
            _check_deflated(deflate)
            head = _HEAD.pack(ENVELOPE_VERSION_DEFLATE, kind, origin, len(encoded)) \
                + _DEFLATE.pack(*deflate)
        lengths = [_LEN.pack(len(raw)) for raw in encoded]
    except struct.error as exc:
        raise ValueError(f"cannot pack envelope: {exc}") from None
    if not encoded:
        return head + frame
    parts: list[bytes | memoryview] = [head]
    for length, raw in zip(lengths, encoded, strict=True):
        parts.append(length)
        parts.append(raw)
    parts.append(frame)
    return b"".join(parts)


def origin_of(data: bytes) -> bytes:
    """The origin of an envelope, without unpacking the rest: the cheap test a
    receiver makes to skip its own publications.  ``ValueError`` if *data* is not
    an envelope of a version this module reads."""
    if len(data) < HEAD_SIZE or (data[OFFSET["version"]] != ENVELOPE_VERSION
                                 and data[OFFSET["version"]] != ENVELOPE_VERSION_DEFLATE):
        raise ValueError(f"not a reinhardt-ws envelope of version {ENVELOPE_VERSION} "
                         f"or {ENVELOPE_VERSION_DEFLATE}")
    return data[_ORIGIN]


def unpack_envelope(data: bytes) -> Envelope:
    """Inverse of :func:`pack_envelope`.  Any other input raises ``ValueError``
    (``UnicodeDecodeError``, a ``ValueError``, for an id that is not UTF-8).  A
    version-2 description is checked against its limits here; its payload is
    checked when it is inflated."""
    if len(data) < HEAD_SIZE:
        raise ValueError("envelope too short")
    version, kind, origin, count = _HEAD.unpack_from(data)
    deflate: Deflated | None = None
    if version == ENVELOPE_VERSION:
        offset = HEAD_SIZE
    elif version == ENVELOPE_VERSION_DEFLATE:
        if len(data) < HEAD_SIZE_DEFLATE:
            raise ValueError("envelope too short")
        deflate = Deflated(*_DEFLATE.unpack_from(data, HEAD_SIZE))
        _check_deflated(deflate)
        offset = HEAD_SIZE_DEFLATE
    else:
        raise ValueError(f"unknown envelope version {version}")
    if not count:
        return Envelope(kind, origin, (), data[offset:], deflate)
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
    return Envelope(kind, origin, tuple(ids), data[offset:], deflate)
