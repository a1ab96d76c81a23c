"""Room broadcasts with permessage-deflate: members grouped by the shared
compressor their negotiated parameters allow, so that a broadcast is compressed
once per group (normally one) and the fan-out hands that one compressed frame to
every member of the group, and the plain frame to everyone else.

A member qualifies when its connection negotiated permessage-deflate and our side
has no context takeover (the server's default): then a message compressed
without context is valid for it whatever it received before.  Connections that
keep our context get the plain frame (an uncompressed message does not touch
their inflater's window), as do connections without the extension.

Across processes (Redis), a broadcast is compressed once for the whole cluster:
the publishing process compresses it with the backend's compressor
(:func:`compress_for_cluster`), delivers that one frame to each of its groups it
fits (:func:`fits`) and publishes the deflate payload alone; a receiving process
inflates it once (:func:`inflate_carried`: the check that it is sound, and the
plain frame for the members that take plain frames) and hands the very bytes it
received to every group they fit.  Only groups they do not fit (a narrower
window) are compressed again, locally.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING, NamedTuple

from .. import _fanout
from ..protocol.extensions.permessage_deflate import (
    SharedCompressor,
    build_compressed_frame,
    split_frame,
)
from .envelope import MAX_DEFLATED_SIZE, Deflated

if TYPE_CHECKING:
    from .._fastbroadcast_py import Peer
    from ..connection import WebSocketConnection

__all__ = [
    "Carried",
    "CompressionGroups",
    "compress_for_cluster",
    "compressed_frame",
    "fits",
    "inflate_carried",
    "stats",
]

#: [payload bytes in, bytes out, frames reused] process-wide (read by
#: reinhardt_ws.metrics at scrape time; integer additions per broadcast).
_counts = [0, 0, 0]

_TAIL = b"\x00\x00\xff\xff"


def stats() -> dict[str, int]:
    """``bytes_in``: payload bytes given to the shared room compressors;
    ``bytes_out``: what went on the wire for them (the payload itself when
    compression did not pay); ``reused``: group fan-outs served with a frame
    compressed once for the cluster (here or in another process) instead of
    compressing for that group; all since the process started."""
    return {"bytes_in": _counts[0], "bytes_out": _counts[1], "reused": _counts[2]}


class Carried(NamedTuple):
    """A broadcast compressed once for the cluster."""

    frame: bytes          # the compressed frame (RSV1), as the fan-out sends it
    payload: memoryview   # its deflate payload: what the envelope carries
    deflate: Deflated     # opcode, window bits, plain size

#: A room's members by group: ``None`` holds the members that get plain frames.
Groups = dict["SharedCompressor | None", dict[str, "Peer"]]


class CompressionGroups:
    """For each room (``None``: the everyone-set) the members grouped by shared
    compressor.  Rooms whose members all take plain frames are not listed, so
    that their broadcasts keep the single fan-out call they had."""

    __slots__ = ("_compressed", "_rooms")

    def __init__(self) -> None:
        self._rooms: dict[str | None, Groups] = {}
        self._compressed: dict[str | None, int] = {}  # members in compressed groups

    def clear(self) -> None:
        self._rooms.clear()
        self._compressed.clear()

    def add(self, room: str | None, conn: WebSocketConnection, peer: Peer) -> None:
        extension = conn.extension
        key = extension.shared if extension is not None else None
        groups = self._rooms.get(room)
        if groups is None:
            groups = self._rooms[room] = {}
        members = groups.get(key)
        if members is None:
            members = groups[key] = {}
        if conn.id not in members:
            members[conn.id] = peer
            if key is not None:
                self._compressed[room] = self._compressed.get(room, 0) + 1

    def remove(self, room: str | None, conn_id: str) -> None:
        groups = self._rooms.get(room)
        if groups is None:
            return
        for key, members in groups.items():
            if members.pop(conn_id, None) is not None:
                if not members:
                    del groups[key]
                if key is not None:
                    self._compressed[room] -= 1
                break
        if not groups:
            del self._rooms[room]
            self._compressed.pop(room, None)

    def of(self, room: str | None) -> Groups | None:
        """The groups of *room*, or None when none of its members takes
        compressed frames (then the plain fan-out to every member is all)."""
        if not self._compressed.get(room):
            return None
        return self._rooms.get(room)


def compressed_frame(frame: bytes, compressor: SharedCompressor) -> bytes:
    """The compressed twin of a plain data *frame* (RSV1 set), compressed once by
    *compressor*; *frame* itself when compression does not pay (too short, does
    not shrink) or it is not a data frame."""
    opcode, payload = split_frame(frame)
    if opcode != 0x1 and opcode != 0x2:
        return frame
    wire = compressor.compress(payload)
    counts = _counts
    counts[0] += len(payload)
    if wire is None:
        counts[1] += len(payload)
        return frame
    counts[1] += len(wire)
    return build_compressed_frame(opcode, wire)


def compress_for_cluster(frame: bytes, compressor: SharedCompressor) -> Carried | None:
    """*frame* compressed once by *compressor* (the backend's, normally the
    server's default parameters), under the rules of local broadcasts: None for
    a frame that is not data, under the threshold, that does not shrink, or
    longer than :data:`~.envelope.MAX_DEFLATED_SIZE`."""
    opcode, payload = split_frame(frame)
    if (opcode != 0x1 and opcode != 0x2) or len(payload) > MAX_DEFLATED_SIZE:
        return None
    out = compressed_frame(frame, compressor)
    if out is frame:
        return None
    start = len(out) - _payload_length(out)
    return Carried(out, memoryview(out)[start:],
                   Deflated(opcode, compressor.window_bits, len(payload)))


def _payload_length(frame: bytes) -> int:
    n = frame[1] & 0x7F
    if n == 126:
        return int.from_bytes(frame[2:4], "big")
    if n == 127:
        return int.from_bytes(frame[2:10], "big")
    return n


def fits(carried: Carried, compressor: SharedCompressor) -> bool:
    """Whether *carried* is valid, and sent, for the members of *compressor*'s
    group: deflate output made with a window of W bits is valid for any member
    whose own window (the group's, with no context kept on our side) has at
    least W bits, or is at least as long as the message (no back-reference
    reaches farther than that); and the group's threshold holds."""
    _opcode, bits, size = carried.deflate
    have = compressor.window_bits
    return size >= compressor.threshold and (have >= bits or size <= 1 << have)


def inflate_carried(deflate: Deflated, payload: bytes | memoryview) -> tuple[bytes, Carried]:
    """The plain frame and the compressed frame of a broadcast that arrived
    compressed from another process: *payload* is inflated once, with the
    window it claims, and must give exactly ``deflate.size`` bytes, every input
    byte used, no end of stream (a message compressed without context ends
    flushed, not finished) and no reference beyond the window.  ``ValueError``
    otherwise: nothing of it is to be sent.  At most ``size`` bytes are
    allocated, whatever *payload* holds."""
    opcode, bits, size = deflate
    if opcode != 0x1 and opcode != 0x2:
        raise ValueError(f"compressed payload of opcode {opcode:#x}")
    if not 8 <= bits <= 15 or not 0 < size <= MAX_DEFLATED_SIZE:
        raise ValueError("compressed payload outside the envelope's limits")
    if bits == 8 and size > 256:  # what an 8-bit compressor never makes (see permessage_deflate)
        raise ValueError("compressed payload too long for an 8-bit window")
    if not 0 < len(payload) < size:
        raise ValueError("compressed payload that did not shrink")
    try:
        z = zlib.decompressobj(-bits)
        plain = z.decompress(payload, size + 1)
        if len(plain) != size or z.unconsumed_tail or z.eof:
            raise ValueError(f"compressed payload does not inflate to its {size} bytes")
        if z.decompress(_TAIL, 1) or z.eof or z.unused_data:
            raise ValueError("compressed payload is not a flushed message")
    except zlib.error as exc:
        raise ValueError(f"compressed payload is not valid deflate: {exc}") from None
    frame = build_compressed_frame(opcode, payload)  # type: ignore[arg-type]
    start = len(frame) - len(payload)
    return _fanout.build_frame(opcode, plain), Carried(frame, memoryview(frame)[start:], deflate)
