"""Room broadcasts with permessage-deflate: members grouped by the shared
compressor their negotiated parameters allow, so that a broadcast is compressed
once per group (normally one) and the fan-out hands that one compressed frame to
every member of the group, and the plain frame to everyone else.

A member qualifies when its connection negotiated permessage-deflate and our side
has no context takeover (the server's default): then a message compressed
without context is valid for it whatever it received before.  Connections that
keep our context get the plain frame (an uncompressed message does not touch
their inflater's window), as do connections without the extension.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..protocol.extensions.permessage_deflate import (
    SharedCompressor,
    build_compressed_frame,
    split_frame,
)

if TYPE_CHECKING:
    from .._fastbroadcast_py import Peer
    from ..connection import WebSocketConnection

__all__ = ["CompressionGroups", "compressed_frame", "stats"]

#: [payload bytes in, bytes out] of compressed_frame, process-wide (read by
#: reinhardt_ws.metrics at scrape time; two integer additions per broadcast).
_counts = [0, 0]


def stats() -> dict[str, int]:
    """``bytes_in``: payload bytes given to the shared room compressors;
    ``bytes_out``: what went on the wire for them (the payload itself when
    compression did not pay), since the process started."""
    return {"bytes_in": _counts[0], "bytes_out": _counts[1]}

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
