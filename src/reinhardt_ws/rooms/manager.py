"""Rooms: :class:`RoomManager` and :class:`BroadcastResult`.

Membership is a plain registry of dicts (room -> {connection id -> Peer}); a
broadcast encodes its message once, builds one frame, and hands that one ``bytes``
object to the fan-out (:mod:`reinhardt_ws._fastbroadcast` or its Python twin),
which queues it on every member and writes each member once per event-loop
iteration.  See ``docs/rooms.md`` for the delivery and slow-consumer guarantees.

A backend (:mod:`.backend`) decides what lies beyond this process.
:class:`~.backend.InMemoryBackend` (the default) is this process only;
``RedisBackend`` (``reinhardt_ws.rooms.redis``, the ``redis`` extra) spans
processes and machines.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from .. import _fanout
from ..connection import WebSocketConnection
from ..errors import RoomLimitError
from ..protocol.messages import (
    OPCODE_CLOSE,
    Message,
    WebSocketMessage,
    frame_parts,
)
from ._compression import CompressionGroups, compressed_frame
from .backend import Backend, InMemoryBackend

if TYPE_CHECKING:
    from .._fastbroadcast_py import Hub, Peer

__all__ = ["BroadcastResult", "RoomManager"]

T = TypeVar("T")
P = ParamSpec("P")

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


def encode_frame(message: Broadcastable) -> bytes:
    """One server frame for *message* (built once per broadcast).

    :class:`~reinhardt_ws.SendError` for what cannot be sent, ``ValueError`` for a
    close message (close the connections instead)."""
    opcode, payload = frame_parts(message)
    if opcode == OPCODE_CLOSE:
        raise ValueError("a close message cannot be broadcast; close the connections")
    return _fanout.build_frame(opcode, payload)


def _exclude_ids(exclude: Exclude) -> frozenset[str]:
    if exclude is None:
        return frozenset()
    if isinstance(exclude, WebSocketConnection):
        return frozenset((exclude.id,))
    if isinstance(exclude, str):
        return frozenset((exclude,))
    return frozenset(e.id if isinstance(e, WebSocketConnection) else str(e) for e in exclude)


Method = Callable[Concatenate["RoomManager", P], Coroutine[Any, Any, T]]


def _on_owning_loop(*, binds: bool = False) -> Callable[[Method[P, T]], Method[P, T]]:
    """Run the method on the loop that owns the manager (see :class:`RoomManager`),
    carrying the call there when it is made from any other loop or thread.  With
    *binds* (``join``), the call's connection (argument ``conn``) binds the
    manager to that connection's loop."""

    def decorate(method: Method[P, T]) -> Method[P, T]:
        @functools.wraps(method)
        async def on_owner(self: RoomManager, /, *args: P.args, **kwargs: P.kwargs) -> T:
            running = asyncio.get_running_loop()
            conn = kwargs.get("conn", args[1] if len(args) > 1 else None) if binds else None
            owner = self._owner_for(
                running, conn if isinstance(conn, WebSocketConnection) else None)
            if owner is not running:
                return await self._carry(owner, on_owner(self, *args, **kwargs))
            if self._backend_loop is not running and self._loop is running:
                await self._attach(running)
            return await method(self, *args, **kwargs)

        return on_owner

    return decorate


class RoomManager:
    """Named rooms of connections, and broadcasts to them.

    **Which loop owns it.**  A manager belongs to the event loop its connections
    run on.  It binds to that loop when the first connection joins a room (the
    connection's loop, whichever thread or loop ``join`` is called from), and
    stays bound while that loop lives; so a manager may be created at module
    level, before any loop runs, and be used first from any thread.  Every method
    is a coroutine and may be called from any thread or loop: a call made
    elsewhere is carried onto the owning loop and awaited from the caller's own
    (``asyncio.run(rooms.broadcast(...))`` works from a plain thread, and so does
    a worker thread's own long-running loop).  Before the first join, a call
    answers on the caller's loop from the empty registry (nobody is in any room);
    with a distributed backend the backend starts on that loop, to reach the
    other processes, and moves to the connections' loop at the first join.  A
    connection of another loop than the owner's cannot join (``RuntimeError``):
    one manager serves the connections of one loop.  If the owning loop closes,
    its registry goes with it and the next call binds afresh.

    **Membership.**  A connection leaves all its rooms when it closes; an empty
    room disappears.  ``max_rooms_per_connection`` (None: unbounded) caps the rooms
    one connection may be in: a ``join`` beyond it raises
    :class:`~reinhardt_ws.errors.RoomLimitError` and changes nothing.
    """

    def __init__(self, backend: Backend | None = None, *,
                 max_rooms_per_connection: int | None = None) -> None:
        if max_rooms_per_connection is not None and max_rooms_per_connection < 1:
            raise ValueError("max_rooms_per_connection must be positive or None")
        self._backend: Backend = backend if backend is not None else InMemoryBackend()
        self.max_rooms_per_connection = max_rooms_per_connection
        self._loop: asyncio.AbstractEventLoop | None = None  # the owner, once known
        self._final = False  # bound by a join (else at most a provisional owner)
        self._backend_loop: asyncio.AbstractEventLoop | None = None
        self._bind_lock = threading.Lock()
        self._hub: Hub | None = None
        self._rooms: dict[str, dict[str, Peer]] = {}
        self._everyone: dict[str, Peer] = {}
        self._conns: dict[str, WebSocketConnection] = {}
        self._rooms_of: dict[str, set[str]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._room_limit_refusals = 0
        # permessage-deflate: members by shared compressor (rooms/_compression.py)
        self._deflate_groups = CompressionGroups()

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RoomManager:
        """A manager on the backend *url* names: ``redis://`` / ``rediss://``
        (needs the ``redis`` extra) or ``memory://``.  ``max_rooms_per_connection``
        is the manager's; other *options* go to the backend."""
        limit = options.pop("max_rooms_per_connection", None)
        if url.startswith("memory://"):
            return cls(max_rooms_per_connection=limit)
        if url.startswith(("redis://", "rediss://", "unix://")):
            from .redis import RedisBackend

            return cls(backend=RedisBackend(url, **options), max_rooms_per_connection=limit)
        raise ValueError(f"no backend for {url!r}")

    @property
    def backend(self) -> Backend:
        return self._backend

    # -- loop binding and cross-thread calls ----------------------------------
    def _owner_for(self, running: asyncio.AbstractEventLoop,
                   conn: WebSocketConnection | None) -> asyncio.AbstractEventLoop:
        """The loop a call made on *running* runs on (binding the manager if this
        call decides it); see the class docstring for the rule."""
        home = conn._room_loop() if conn is not None else None
        with self._bind_lock:
            loop = self._loop
            if loop is not None and loop.is_closed():  # the old loop is gone: so is its state
                self._rooms.clear()
                self._everyone.clear()
                self._conns.clear()
                self._rooms_of.clear()
                self._deflate_groups.clear()
                self._loop = loop = None
                self._final = False
            if home is not None:
                if self._final and home is not loop:
                    raise RuntimeError(
                        "this connection runs on another event loop than the RoomManager's "
                        "connections; one manager serves the connections of one loop")
                self._loop, self._final = home, True
                return home
            if loop is not None:
                return loop
            if self._backend.distributed:  # it needs a loop now; the first join may move it
                self._loop = running
            return running

    async def _attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind the backend (and the fan-out hub) to *loop*, the one running; a
        backend started provisionally on another live loop is closed there first."""
        with self._bind_lock:
            if self._loop is not loop or self._backend_loop is loop:
                return  # another call attached it, or the manager moved meanwhile
            previous, self._backend_loop = self._backend_loop, loop
            self._hub = _fanout.get_hub(loop)
        if (previous is not None and self._backend.distributed and previous.is_running()
                and not previous.is_closed()):
            await self._carry(previous, self._backend.close())
        self._backend.bind(self, loop)

    async def _carry(self, loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> T:
        """Run *coro* on *loop* and await it from the running loop."""
        if loop.is_closed():
            coro.close()
            raise RuntimeError("the event loop this RoomManager is bound to is closed")
        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(coro, loop)
        return await asyncio.wrap_future(future)

    # -- membership -----------------------------------------------------------
    @_on_owning_loop(binds=True)
    async def join(self, room: str, conn: WebSocketConnection) -> bool:
        """Add *conn* to *room*; True if it was not a member.  A closed
        connection is not added (False).  ``RoomLimitError`` if *conn* is
        already in ``max_rooms_per_connection`` rooms (and not in *room*)."""
        peer = conn._room_peer()
        if peer is None:
            return False
        members = self._rooms.get(room)
        if members is not None and conn.id in members:
            return False
        rooms = self._rooms_of.get(conn.id)
        limit = self.max_rooms_per_connection
        if limit is not None and rooms is not None and len(rooms) >= limit:
            self._room_limit_refusals += 1
            raise RoomLimitError(limit)
        if members is None:
            members = self._rooms[room] = {}
        members[conn.id] = peer
        self._deflate_groups.add(room, conn, peer)
        if rooms is None:
            rooms = self._rooms_of[conn.id] = set()
            self._conns[conn.id] = conn
            self._everyone[conn.id] = peer
            self._deflate_groups.add(None, conn, peer)
            conn.add_close_listener(self._forget)
        rooms.add(room)
        if self._backend.distributed:
            await self._backend.joined(room, conn.id)
        return True

    @_on_owning_loop()
    async def leave(self, room: str, conn: WebSocketConnection) -> bool:
        """Remove *conn* from *room*; True if it was a member."""
        if not self._remove(room, conn.id):
            return False
        if self._backend.distributed:
            await self._backend.left(room, conn.id)
        return True

    def _remove(self, room: str, conn_id: str) -> bool:
        """Drop one membership; False if there was none."""
        members = self._rooms.get(room)
        if members is None or members.pop(conn_id, None) is None:
            return False
        self._deflate_groups.remove(room, conn_id)
        if not members:
            del self._rooms[room]
        rooms = self._rooms_of.get(conn_id)
        if rooms is not None:
            rooms.discard(room)
            if not rooms:
                self._drop_conn(conn_id)
        return True

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
            if self._remove(room, conn_id) and self._backend.distributed:
                self._spawn(self._backend.left(room, conn_id))
        self._drop_conn(conn_id)

    def _forget(self, conn: WebSocketConnection) -> None:
        """Close listener: the connection is gone, from every room at once."""
        self._remove_everywhere(conn.id)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        assert self._loop is not None
        task: asyncio.Task[Any] = self._loop.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- broadcasting ---------------------------------------------------------------
    @_on_owning_loop()
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
        return await self._broadcast(room, message, exclude)

    @_on_owning_loop()
    async def broadcast_all(self, message: Broadcastable, *,
                            exclude: Exclude = None) -> BroadcastResult:
        """Send *message* once to every connection that is in at least one room
        (as :meth:`broadcast` does to one room)."""
        return await self._broadcast(None, message, exclude)

    async def _broadcast(self, room: str | None, message: Broadcastable,
                         exclude: Exclude) -> BroadcastResult:
        frame = encode_frame(message)
        excluded = _exclude_ids(exclude)
        result = self.deliver_local(room, frame, excluded)
        if self._backend.distributed:
            await self._backend.publish(room, frame, excluded)
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
        groups = self._deflate_groups.of(room)
        if groups is not None:
            # permessage-deflate: one compressed frame per group, the plain one to the rest.
            delivered = dropped = 0
            failed: list[str] = []
            for compressor, group in list(groups.items()):
                out = frame if compressor is None else compressed_frame(frame, compressor)
                d, n, f = self._hub.fanout(group, out, exclude or None)
                delivered, dropped = delivered + d, dropped + n
                failed.extend(f)
        else:
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

    @_on_owning_loop()
    async def send_to(self, conn_id: str, message: Broadcastable) -> bool:
        """Send *message* to the connection with id *conn_id*, in this process or,
        with a distributed backend, in any.  Only connections in at least one
        room are known.  True if it was handed to that connection."""
        frame = encode_frame(message)
        if conn_id in self._conns:
            return self.deliver_to_local(conn_id, frame)
        return await self._backend.send_to(conn_id, frame)

    # -- queries -------------------------------------------------------------
    @_on_owning_loop()
    async def room_size(self, room: str) -> int:
        """Members of *room* (in every process, with a distributed backend)."""
        return await self._backend.room_size(room)

    @_on_owning_loop()
    async def list_rooms(self) -> list[str]:
        """Rooms with at least one member, sorted (in every process, with a
        distributed backend)."""
        return await self._backend.list_rooms()

    def local_room_size(self, room: str) -> int:
        """This process's members of *room* (for backends; on the owning loop)."""
        return len(self._rooms.get(room, ()))

    def local_rooms(self) -> list[str]:
        """This process's non-empty rooms, sorted (for backends; on the owning loop)."""
        return sorted(self._rooms)

    @_on_owning_loop()
    async def members(self, room: str) -> list[WebSocketConnection]:
        """This process's connections in *room*."""
        conns = self._conns
        return [conns[cid] for cid in self._rooms.get(room, ()) if cid in conns]

    @_on_owning_loop()
    async def rooms_of(self, conn: WebSocketConnection) -> set[str]:
        """The rooms *conn* is in (a copy: its cost grows with their number; to
        test one room, :meth:`is_member` costs the same whatever the number)."""
        return set(self._rooms_of.get(conn.id, ()))

    @_on_owning_loop()
    async def is_member(self, room: str, conn: WebSocketConnection) -> bool:
        """Whether *conn* is in *room*; constant time."""
        members = self._rooms.get(room)
        return members is not None and conn.id in members

    async def close(self) -> None:
        """Release the backend (connections and subscriptions of a distributed one)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            await self._backend.close()
            return
        await self._close()

    @_on_owning_loop()
    async def _close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await self._backend.close()

    def stats(self) -> dict[str, int]:
        """Sizes of the registry (for leak checks): rooms, connections, memberships;
        and ``room_limit_refusals``: joins refused by ``max_rooms_per_connection``."""
        return {
            "rooms": len(self._rooms),
            "connections": len(self._conns),
            "memberships": sum(len(m) for m in self._rooms.values()),
            "room_limit_refusals": self._room_limit_refusals,
        }
