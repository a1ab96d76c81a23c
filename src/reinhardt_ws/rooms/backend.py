"""The seam between a :class:`~reinhardt_ws.rooms.RoomManager` and what lies beyond
this process: the :class:`Backend` protocol, and :class:`InMemoryBackend`, the
default (this process only)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .manager import RoomManager

__all__ = ["Backend", "InMemoryBackend"]


class Backend(Protocol):
    """What a :class:`RoomManager` needs from a backend.

    The manager keeps this process's members itself and fans every broadcast out
    to them; a backend adds the other processes, if any.  Every call is made on
    the loop that owns the manager (the one its connections run on), after
    :meth:`bind`.

    - ``distributed``: True when the backend reaches other processes; the manager
      then reports membership changes even when a connection closes abruptly.
    - ``bind(manager, loop)``: attach to *manager* on *loop*; called once per loop
      the manager is bound to (again if that loop closed and a new one took over).
    - ``joined`` / ``left``: one membership of this process changed; return once
      the change is visible to the other processes (or at once if they cannot be
      reached).
    - ``publish(room, frame, exclude)``: hand a ready frame to the other processes'
      members of *room* (None: to every connection in a room), except the
      connection ids in *exclude*.  It has already been delivered here.  Should
      not wait for the network.  What arrives from elsewhere is handed to
      ``manager.deliver_local(room, frame, exclude)`` and
      ``manager.deliver_to_local(conn_id, frame)``.
    - optional, ``cluster_compressor``: a backend that has this attribute (a
      ``SharedCompressor``, not None) is given each compressible broadcast
      compressed once, as a fourth argument of ``publish`` (a
      ``rooms._compression.Carried``), and hands what it receives compressed to
      ``deliver_local(..., compressed)`` (``RedisBackend`` does; see
      ``docs/redis.md``).  Backends without it are called as above.
    - ``send_to(conn_id, frame)``: the connection is not in this process; True if
      another process took the frame for it.
    - ``room_size`` / ``list_rooms``: the answer over every process (this one
      included: ``manager.local_room_size`` and ``manager.local_rooms``).
    - ``close``: release everything; idempotent.
    """

    distributed: bool

    def bind(self, manager: RoomManager, loop: asyncio.AbstractEventLoop) -> None: ...
    async def joined(self, room: str, conn_id: str) -> None: ...
    async def left(self, room: str, conn_id: str) -> None: ...
    async def publish(self, room: str | None, frame: bytes, exclude: frozenset[str]) -> None: ...
    async def send_to(self, conn_id: str, frame: bytes) -> bool: ...
    async def room_size(self, room: str) -> int: ...
    async def list_rooms(self) -> list[str]: ...
    async def close(self) -> None: ...


class InMemoryBackend:
    """This process only: the manager's own registry is the whole truth."""

    distributed = False

    def __init__(self) -> None:
        self._manager: RoomManager | None = None

    def bind(self, manager: RoomManager, loop: asyncio.AbstractEventLoop) -> None:
        self._manager = manager

    async def joined(self, room: str, conn_id: str) -> None:
        pass

    async def left(self, room: str, conn_id: str) -> None:
        pass

    async def publish(self, room: str | None, frame: bytes, exclude: frozenset[str]) -> None:
        pass

    async def send_to(self, conn_id: str, frame: bytes) -> bool:
        return False  # not here, so nowhere

    async def room_size(self, room: str) -> int:
        manager = self._manager
        return 0 if manager is None else manager.local_room_size(room)

    async def list_rooms(self) -> list[str]:
        manager = self._manager
        return [] if manager is None else manager.local_rooms()

    async def close(self) -> None:
        pass
