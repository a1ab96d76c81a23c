"""Room history: which rooms keep it (:class:`HistoryPolicy`), where a publication
stands in it (:class:`Position`), what a read or a recovering join reports
(:class:`HistoryResult`, :class:`JoinResult`), and the in-memory store
(:class:`MemoryHistory`, a bounded ring per room).

History sits next to the fan-out, not inside it: the manager appends a
broadcast's frame here and then hands the same frame to the fan-out, which never
learns about offsets.  See ``docs/recovery.md`` for the guarantees.
"""

from __future__ import annotations

import collections
import fnmatch
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = [
    "EPOCH_MARK",
    "OFFSET_MARK",
    "HistoryPolicy",
    "HistoryResult",
    "JoinResult",
    "MemoryHistory",
    "Position",
    "Publication",
    "new_epoch",
]


class Position(NamedTuple):
    """Where a room's history stands: ``offset`` counts the room's publications
    (the first is 1; 0 before any), ``epoch`` names the history they belong to and
    changes whenever that history is lost, so offsets of two epochs never compare."""

    epoch: str
    offset: int

    def as_dict(self) -> dict[str, str | int]:
        return {"epoch": self.epoch, "offset": self.offset}


class Publication(NamedTuple):
    """One stored publication: its offset and the frame the fan-out sent."""

    offset: int
    frame: bytes


def new_epoch() -> str:
    """A fresh epoch: 8 random hex digits."""
    return os.urandom(4).hex()


#: Placeholders a ``positioned`` broadcast's text carries, so that each member and
#: each replay sees the publication's own position: the first occurrence of each
#: is replaced, in the frame, by the offset (right-aligned in 20 characters:
#: leading spaces are valid JSON whitespace) and by the 8-character epoch.  Put
#: them before any text a user controls (``{"offset": 18446744073709551615,
#: "epoch": "ffffffff", ...}``).  Without a position (Redis unreachable) they
#: read 0 and ``00000000``.
OFFSET_MARK = "18446744073709551615"
EPOCH_MARK = "ffffffff"
_NO_EPOCH = "00000000"


def find_marks(frame: bytes) -> tuple[int, int]:
    """Byte indexes of the two marks in *frame*; ``ValueError`` if one is missing."""
    at_offset = frame.find(OFFSET_MARK.encode())
    at_epoch = frame.find(EPOCH_MARK.encode())
    if at_offset < 0 or at_epoch < 0:
        raise ValueError("a positioned broadcast needs OFFSET_MARK and EPOCH_MARK in its text")
    return at_offset, at_epoch


def stamp(frame: bytes, marks: tuple[int, int], position: Position | None) -> bytes:
    """*frame* with its marks replaced by *position* (same length: the frame's
    header stays valid)."""
    offset, epoch = (position.offset, position.epoch) if position is not None else (0, _NO_EPOCH)
    if len(epoch) != len(EPOCH_MARK):
        epoch = _NO_EPOCH
    at_offset, at_epoch = marks
    out = bytearray(frame)
    out[at_offset:at_offset + len(OFFSET_MARK)] = f"{offset:>20}".encode()
    out[at_epoch:at_epoch + len(EPOCH_MARK)] = epoch.encode()
    return bytes(out)


@dataclass(frozen=True)
class HistoryPolicy:
    """Which rooms keep a history, and how much of it.

    - ``size``: publications kept per room (older ones are trimmed).
    - ``ttl``: seconds a publication is kept; with Redis, also how long an idle
      room's stream lives.  The room's position (epoch, offset) outlives its
      publications (``meta_ttl``, default ten times ``ttl`` and at least an hour).
    - ``rooms``: a room name or a shell pattern (``"chat:*"``), or several; a room
      matching any of them keeps a history.  Default: every room.
    - ``max_recovery``: at most this many publications are replayed by one
      recovering join; a gap larger than that reports ``recovered=False``.

    ``ValueError`` for a size, ttl or cap that is not positive.
    """

    size: int
    ttl: float
    rooms: str | tuple[str, ...] = "*"
    max_recovery: int = 300
    meta_ttl: float | None = None
    _patterns: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _every: bool = field(init=False, repr=False, compare=False)
    _answers: dict[str, bool] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise ValueError("history size must be a positive integer")
        if not self.ttl > 0:
            raise ValueError("history ttl must be positive")
        if isinstance(self.max_recovery, bool) or self.max_recovery < 1:
            raise ValueError("max_recovery must be a positive integer")
        if self.meta_ttl is not None and self.meta_ttl < self.ttl:
            raise ValueError("meta_ttl must be at least ttl")
        rooms: Iterable[str] = (self.rooms,) if isinstance(self.rooms, str) else self.rooms
        patterns = tuple(rooms)
        if not patterns or not all(isinstance(p, str) and p for p in patterns):
            raise ValueError("rooms must be a non-empty name or pattern, or several")
        object.__setattr__(self, "rooms", patterns[0] if len(patterns) == 1 else patterns)
        object.__setattr__(self, "_patterns", patterns)
        object.__setattr__(self, "_every", "*" in patterns)
        object.__setattr__(self, "_answers", {})

    @property
    def position_ttl(self) -> float:
        """Seconds a room's position is kept after its last publication."""
        return self.meta_ttl if self.meta_ttl is not None else max(10 * self.ttl, 3600.0)

    def applies(self, room: str | None) -> bool:
        """Whether *room* keeps a history (``broadcast_all`` never does)."""
        if room is None:
            return False
        if self._every:
            return True
        answer = self._answers.get(room)
        if answer is None:
            answer = any(p == room or fnmatch.fnmatchcase(room, p) for p in self._patterns)
            if len(self._answers) >= 4096:  # bounded: many rooms just cost a match each
                self._answers.clear()
            self._answers[room] = answer
        return answer


@dataclass(frozen=True)
class HistoryResult:
    """What :meth:`RoomManager.history` read: ``publications`` (oldest first,
    after ``since`` when given), ``position`` (the room's current one) and
    ``complete``: False when ``since`` was given and history does not reach back
    to it or belongs to another epoch (``publications`` is then empty: never a
    partial answer)."""

    publications: tuple[Publication, ...]
    position: Position
    complete: bool = True


@dataclass(frozen=True)
class JoinResult:
    """What a recovering :meth:`RoomManager.join` did.

    - ``joined``: the connection was added (False: already a member, or closed).
    - ``recovered``: the publications after the given position were replayed to
      it, in order, before any live one (also True when there were none).
      False: history did not reach back, the epoch changed, or the gap was over
      ``max_recovery``; nothing was replayed and the application should refetch
      its state.
    - ``position``: the room's position when live delivery to it began.
    - ``replayed``: how many publications were replayed.

    Its truth value is ``joined``, as the plain ``join`` returns.
    """

    joined: bool
    recovered: bool
    position: Position | None
    replayed: int = 0

    def __bool__(self) -> bool:
        return self.joined


class _Ring:
    __slots__ = ("entries", "top")

    def __init__(self, size: int) -> None:
        self.entries: collections.deque[tuple[int, float, bytes]] = collections.deque(maxlen=size)
        self.top = 0


class MemoryHistory:
    """Every history room's recent publications in this process: a ring of
    ``policy.size`` (offset, expiry, frame) per room, and one epoch per store
    (random: a restart loses the history, and so changes the epoch).  A room's
    offset is kept for ``policy.position_ttl`` after its last publication; an
    idle room's ring empties as its publications pass their ``ttl``.  Synchronous
    and never suspends; call it on the owning loop."""

    def __init__(self, policy: HistoryPolicy, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self.epoch = new_epoch()
        self._rooms: dict[str, _Ring] = {}
        self._last_use: dict[str, float] = {}
        self._clock = clock
        self._next_sweep = 0.0

    def position(self, room: str) -> Position:
        ring = self._rooms.get(room)
        return Position(self.epoch, ring.top if ring is not None else 0)

    def append(self, room: str, frame: bytes,
               marks: tuple[int, int] | None = None) -> tuple[Position, bytes]:
        """Store *frame* (stamped at *marks*, see :func:`stamp`): its position and
        the frame as stored."""
        now = self._clock()
        ring = self._rooms.get(room)
        if ring is None:
            ring = self._rooms[room] = _Ring(self.policy.size)
        ring.top += 1
        position = Position(self.epoch, ring.top)
        if marks is not None:
            frame = stamp(frame, marks, position)
        ring.entries.append((ring.top, now + self.policy.ttl, frame))
        self._last_use[room] = now
        if now >= self._next_sweep:
            self._sweep(now)
        return position, frame

    def _sweep(self, now: float) -> None:
        """Forget rooms idle past ``position_ttl`` (bounded memory for many rooms)."""
        self._next_sweep = now + min(60.0, self.policy.ttl)
        horizon = now - self.policy.position_ttl
        for room in [r for r, t in self._last_use.items() if t < horizon]:
            del self._last_use[room]
            del self._rooms[room]

    def read(self, room: str, since: Position | None = None,
             limit: int | None = None) -> HistoryResult:
        """Publications of *room* after *since* (all kept ones without it), oldest
        first, at most *limit* (the newest *limit* without *since*).  With *since*,
        ``complete`` is False (and nothing is returned) when the epoch differs,
        history no longer reaches back to it, or more than *limit* are missing."""
        now = self._clock()
        ring = self._rooms.get(room)
        top = ring.top if ring is not None else 0
        position = Position(self.epoch, top)
        live = [e for e in ring.entries if e[1] > now] if ring is not None else []
        if since is None:
            if limit is not None:
                live = live[-limit:] if limit > 0 else []
            return HistoryResult(tuple(Publication(o, f) for o, _t, f in live), position)
        if since.epoch != self.epoch or since.offset > top or since.offset < 0:
            return HistoryResult((), position, complete=False)
        missing = top - since.offset
        if missing == 0:
            return HistoryResult((), position)
        if limit is not None and missing > limit:
            return HistoryResult((), position, complete=False)
        wanted = [e for e in live if e[0] > since.offset]
        if len(wanted) != missing:  # trimmed or expired: the gap is not all here
            return HistoryResult((), position, complete=False)
        return HistoryResult(tuple(Publication(o, f) for o, _t, f in wanted), position)
