"""Rooms: :class:`RoomManager`, :class:`BroadcastResult` and the backend seam.

Membership is a plain registry of dicts (room -> {connection id -> Peer}); a
broadcast encodes its message once, builds one frame, and hands that one ``bytes``
object to the fan-out (:mod:`reinhardt_ws._fastbroadcast` or its Python twin),
which queues it on every member and writes each member once per event-loop
iteration.  See ``docs/rooms.md`` for the delivery and slow-consumer guarantees.

A backend decides what lies beyond this process.  :class:`InMemoryBackend` (the
default) is this process only; ``RedisBackend`` (``reinhardt_ws.redis``, the
``redis`` extra) spans processes and machines.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from .. import _fanout
from ..connection import WebSocketConnection
from ..protocol.messages import (
    OPCODE_BINARY,
    OPCODE_TEXT,
    Message,
    MessageType,
    WebSocketMessage,
)
from ._compression import CompressionGroups, compressed_frame

if TYPE_CHECKING:
    from .._fastbroadcast_py import Hub, Peer

__all__ = ["Backend", "BroadcastResult", "InMemoryBackend", "RoomManager"]

logger = logging.getLogger("reinhardt_ws.rooms")

T = TypeVar("T")

Broadcastable = Message | WebSocketMessage | str | bytes | bytearray | memoryview
Exclude = WebSocketConnection | str | Iterable[WebSocketConnection | str] | None


@dataclass(frozen=True)
class BroadcastResult:
    """What a broadcast did, in this process.

    - ``delivered``: members the frame was queued for (written within this
      event-loop iteration, in order with everything else sent to them).
    - ``dropped``: members skipped under the slow-consumer policy (``"drop"``:
      over ``max_write_buffer``; ``"close"``: closed with 1013 by this broadcast).
    - ``failed``: ids of members that could not take it (their socket failed or
      they were closing); they were removed from every room.

    A broadcast never raises because a member failed.
    """

    delivered: int = 0
    dropped: int = 0
    failed: tuple[str, ...] = ()


class Backend(Protocol):
    """What a :class:`RoomManager` needs from a backend (see ``InMemoryBackend``).

    ``distributed`` backends are told about membership changes and publish
    every broadcast to the other processes; they call
    ``manager.deliver_local(room, frame, exclude)`` and
    ``manager.deliver_to_local(conn_id, frame)`` for what arrives from elsewhere.
    """

    distributed: bool

    def bind(self, manager: RoomManager, loop: asyncio.AbstractEventLoop) -> None: ...
    async def joined(self, room: str, conn_id: str, first_local: bool) -> None: ...
    async def left(self, room: str, conn_id: str, last_local: bool) -> None: ...
    async def publish(self, room: str | None, frame: bytes, exclude: frozenset[str]) -> None: ...
    async def send_to(self, conn_id: str, frame: bytes) -> bool: ...
    async def room_size(self, room: str) -> int: ...
    async def list_rooms(self) -> list[str]: ...
    async def close(self) -> None: ...


class InMemoryBackend:
    """This process only: rooms live in the manager's own registry."""

    distributed = False

    def bind(self, manager: RoomManager, loop: asyncio.AbstractEventLoop) -> None:
        pass

    async def joined(self, room: str, conn_id: str, first_local: bool) -> None:
        pass

    async def left(self, room: str, conn_id: str, last_local: bool) -> None:
        pass

    async def publish(self, room: str | None, frame: bytes, exclude: frozenset[str]) -> None:
        pass

    async def send_to(self, conn_id: str, frame: bytes) -> bool:
        return False

    async def room_size(self, room: str) -> int:
        raise NotImplementedError

    async def list_rooms(self) -> list[str]:
        raise NotImplementedError

    async def close(self) -> None:
        pass


def encode_frame(message: Broadcastable) -> bytes:
    """One server frame for *message* (built once per broadcast)."""
    build = _fanout.impl.build_frame
    if isinstance(message, Message):
        if message.type is MessageType.CLOSE:
            raise ValueError("a close message cannot be broadcast; close the connections")
        return build(message.opcode, message.payload)  # type: ignore[no-any-return]
    if isinstance(message, str):
        return build(OPCODE_TEXT, message.encode("utf-8"))  # type: ignore[no-any-return]
    if isinstance(message, (bytes, bytearray, memoryview)):
        return build(OPCODE_BINARY, bytes(message))  # type: ignore[no-any-return]
    if isinstance(message, WebSocketMessage):
        return build(OPCODE_TEXT, message.to_json())  # type: ignore[no-any-return]
    raise TypeError(f"cannot broadcast {type(message).__name__}")


async def _as_coroutine(awaitable: Awaitable[T]) -> T:
    return await awaitable


def _exclude_ids(exclude: Exclude) -> frozenset[str]:
    if exclude is None:
        return frozenset()
    if isinstance(exclude, WebSocketConnection):
        return frozenset((exclude.id,))
    if isinstance(exclude, str):
        return frozenset((exclude,))
    return frozenset(e.id if isinstance(e, WebSocketConnection) else str(e) for e in exclude)


class RoomManager:
    """Named rooms of connections, and broadcasts to them.

    Every method is a coroutine and may be called from any thread: a call made
    outside the event loop that owns the manager is carried onto that loop and
    awaited from the caller's own loop (``asyncio.run(rooms.broadcast(...))``
    works from a plain thread).  A manager may be created before any loop runs;
    it binds to the loop that first uses it.  A connection leaves all its rooms
    when it closes; an empty room disappears.
    """

    def __init__(self, backend: Backend | None = None) -> None:
        self._backend: Backend = backend if backend is not None else InMemoryBackend()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._bind_lock = threading.Lock()
        self._hub: Hub | None = None
        self._rooms: dict[str, dict[str, Peer]] = {}
        self._everyone: dict[str, Peer] = {}
        self._conns: dict[str, WebSocketConnection] = {}
        self._rooms_of: dict[str, set[str]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        # permessage-deflate: members by shared compressor (rooms/_compression.py)
        self._deflate_groups = CompressionGroups()

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RoomManager:
        """A manager on the backend *url* names: ``redis://`` / ``rediss://``
        (needs the ``redis`` extra) or ``memory://``."""
        if url.startswith("memory://"):
            return cls()
        if url.startswith(("redis://", "rediss://", "unix://")):
            from .redis import RedisBackend

            return cls(backend=RedisBackend(url, **options))
        raise ValueError(f"no backend for {url!r}")

    @property
    def backend(self) -> Backend:
        return self._backend

    # -- loop binding and cross-thread calls ----------------------------------
    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._bind_lock:
            if self._loop is loop:
                return
            if self._loop is not None and not self._loop.is_closed():
                return
            if self._loop is not None:  # the old loop is gone: so is its state
                self._rooms.clear()
                self._everyone.clear()
                self._conns.clear()
                self._rooms_of.clear()
                self._deflate_groups.clear()
            self._loop = loop
            self._hub = _fanout.get_hub(loop)
            self._backend.bind(self, loop)

    def _here(self) -> bool:
        """Bind if needed; True when the caller runs on the owning loop."""
        running = asyncio.get_running_loop()
        if running is not self._loop:
            self._bind(running)
        return running is self._loop

    async def _elsewhere(self, fn: Callable[..., Awaitable[T]], *args: Any,
                         **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` on the owning loop and await it from here."""
        loop = self._loop
        assert loop is not None
        if loop.is_closed():
            raise RuntimeError("the event loop this RoomManager is bound to is closed")
        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(
            _as_coroutine(fn(*args, **kwargs)), loop)
        return await asyncio.wrap_future(future)

    # -- membership -----------------------------------------------------------
    async def join(self, room: str, conn: WebSocketConnection) -> bool:
        """Add *conn* to *room*; True if it was not a member.  A closed
        connection is not added (False)."""
        if not self._here():
            return await self._elsewhere(self.join, room, conn)
        peer = conn._room_peer()
        if peer is None:
            return False
        members = self._rooms.get(room)
        if members is None:
            members = self._rooms[room] = {}
        elif conn.id in members:
            return False
        members[conn.id] = peer
        self._deflate_groups.add(room, conn, peer)
        rooms = self._rooms_of.get(conn.id)
        if rooms is None:
            rooms = self._rooms_of[conn.id] = set()
            self._conns[conn.id] = conn
            self._everyone[conn.id] = peer
            self._deflate_groups.add(None, conn, peer)
            conn.add_close_listener(self._forget)
        rooms.add(room)
        if self._backend.distributed:
            await self._backend.joined(room, conn.id, len(members) == 1)
        return True

    async def leave(self, room: str, conn: WebSocketConnection) -> bool:
        """Remove *conn* from *room*; True if it was a member."""
        if not self._here():
            return await self._elsewhere(self.leave, room, conn)
        last = self._remove(room, conn.id)
        if last is None:
            return False
        if self._backend.distributed:
            await self._backend.left(room, conn.id, last)
        return True

    def _remove(self, room: str, conn_id: str) -> bool | None:
        """Drop one membership; None if there was none, else whether the room
        lost its last local member."""
        members = self._rooms.get(room)
        if members is None or members.pop(conn_id, None) is None:
            return None
        self._deflate_groups.remove(room, conn_id)
        last = not members
        if last:
            del self._rooms[room]
        rooms = self._rooms_of.get(conn_id)
        if rooms is not None:
            rooms.discard(room)
            if not rooms:
                self._drop_conn(conn_id)
        return last

    def _drop_conn(self, conn_id: str) -> None:
        self._rooms_of.pop(conn_id, None)
        self._everyone.pop(conn_id, None)
        self._deflate_groups.remove(None, conn_id)
        conn = self._conns.pop(conn_id, None)
        if conn is not None:
            conn.remove_close_listener(self._forget)

    def _remove_everywhere(self, conn_id: str) -> None:
        rooms = self._rooms_of.get(conn_id)
        if not rooms:
            self._drop_conn(conn_id)
            return
        for room in list(rooms):
            last = self._remove(room, conn_id)
            if last is not None and self._backend.distributed:
                self._spawn(self._backend.left(room, conn_id, last))
        self._drop_conn(conn_id)

    def _forget(self, conn: WebSocketConnection) -> None:
        """Close listener: the connection is gone, from every room at once."""
        self._remove_everywhere(conn.id)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        assert self._loop is not None
        task: asyncio.Task[Any] = self._loop.create_task(_as_coroutine(coro))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- broadcasting ---------------------------------------------------------------
    async def broadcast(self, room: str, message: Broadcastable, *,
                        exclude: Exclude = None) -> BroadcastResult:
        """Send *message* to every member of *room* but *exclude*.

        *message* is a :class:`Message`, a ``str`` (text), bytes (binary) or a
        :class:`WebSocketMessage` (its JSON, as text); it is encoded and framed
        once.  *exclude* is a connection, a connection id, or an iterable of them.
        Does not suspend with the in-memory backend, so broadcasts made in one
        event-loop iteration reach each member in one write.  With a distributed
        backend it also publishes to the other processes (the result counts this
        process's members).
        """
        if not self._here():
            return await self._elsewhere(self.broadcast, room, message, exclude=exclude)
        frame = encode_frame(message)
        excluded = _exclude_ids(exclude)
        result = self.deliver_local(room, frame, excluded)
        if self._backend.distributed:
            await self._backend.publish(room, frame, excluded)
        return result

    async def broadcast_all(self, message: Broadcastable, *,
                            exclude: Exclude = None) -> BroadcastResult:
        """Send *message* once to every connection that is in at least one room."""
        if not self._here():
            return await self._elsewhere(self.broadcast_all, message, exclude=exclude)
        frame = encode_frame(message)
        excluded = _exclude_ids(exclude)
        result = self.deliver_local(None, frame, excluded)
        if self._backend.distributed:
            await self._backend.publish(None, frame, excluded)
        return result

    def deliver_local(self, room: str | None, frame: bytes,
                      exclude: frozenset[str]) -> BroadcastResult:
        """Fan a ready frame out to this process's members of *room* (None: of
        every room).  Call on the owning loop; backends use it for remote
        broadcasts."""
        members = self._everyone if room is None else self._rooms.get(room)
        if not members:
            return BroadcastResult()
        assert self._hub is not None
        # -- permessage-deflate: one compressed frame per group, the plain one to the rest
        groups = self._deflate_groups.of(room)
        if groups is not None:
            delivered = dropped = 0
            failed: list[str] = []
            for compressor, group in list(groups.items()):
                out = frame if compressor is None else compressed_frame(frame, compressor)
                d, n, f = self._hub.fanout(group, out, exclude or None)
                delivered, dropped = delivered + d, dropped + n
                failed.extend(f)
            for conn_id in failed:
                self._remove_everywhere(conn_id)
            return BroadcastResult(delivered, dropped, tuple(failed))
        # -- end permessage-deflate
        delivered, dropped, failed = self._hub.fanout(members, frame, exclude or None)
        for conn_id in failed:
            self._remove_everywhere(conn_id)
        return BroadcastResult(delivered, dropped, tuple(failed))

    def deliver_to_local(self, conn_id: str, frame: bytes) -> bool:
        """Queue a ready frame on one local connection; False if it is not here
        or cannot take it."""
        conn = self._conns.get(conn_id)
        peer = conn._room_peer() if conn is not None else None
        if peer is None:
            return False
        return bool(peer.send(frame) == 0)

    async def send_to(self, conn_id: str, message: Broadcastable) -> bool:
        """Send *message* to the connection with id *conn_id*, in this process or,
        with a distributed backend, in any.  Only connections in at least one
        room are known.  True if it was handed to that connection."""
        if not self._here():
            return await self._elsewhere(self.send_to, conn_id, message)
        frame = encode_frame(message)
        if conn_id in self._conns:
            return self.deliver_to_local(conn_id, frame)
        if self._backend.distributed:
            return await self._backend.send_to(conn_id, frame)
        return False

    # -- queries -------------------------------------------------------------
    async def room_size(self, room: str) -> int:
        """Members of *room* (in every process, with a distributed backend)."""
        if not self._here():
            return await self._elsewhere(self.room_size, room)
        if self._backend.distributed:
            return await self._backend.room_size(room)
        return len(self._rooms.get(room, ()))

    async def list_rooms(self) -> list[str]:
        """Rooms with at least one member, sorted."""
        if not self._here():
            return await self._elsewhere(self.list_rooms)
        if self._backend.distributed:
            return await self._backend.list_rooms()
        return sorted(self._rooms)

    async def members(self, room: str) -> list[WebSocketConnection]:
        """This process's connections in *room*."""
        if not self._here():
            return await self._elsewhere(self.members, room)
        conns = self._conns
        return [conns[cid] for cid in self._rooms.get(room, ()) if cid in conns]

    async def rooms_of(self, conn: WebSocketConnection) -> set[str]:
        """The rooms *conn* is in."""
        if not self._here():
            return await self._elsewhere(self.rooms_of, conn)
        return set(self._rooms_of.get(conn.id, ()))

    async def close(self) -> None:
        """Release the backend (connections and subscriptions of a distributed one)."""
        if self._loop is not None and not self._here():
            return await self._elsewhere(self.close)
        for task in list(self._background):
            task.cancel()
        await self._backend.close()

    def stats(self) -> dict[str, int]:
        """Sizes of the registry (for leak checks): rooms, connections, memberships."""
        return {
            "rooms": len(self._rooms),
            "connections": len(self._conns),
            "memberships": sum(len(m) for m in self._rooms.values()),
        }
