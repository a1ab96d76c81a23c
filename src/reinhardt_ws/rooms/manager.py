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
import math
import threading
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar, overload

from .. import _fanout
from ..connection import WebSocketConnection
from ..errors import RoomLimitError
from ..protocol.messages import (
    OPCODE_BINARY,
    OPCODE_CLOSE,
    OPCODE_TEXT,
    Message,
    WebSocketMessage,
    frame_parts,
)
from ._compression import (
    Carried,
    CompressionGroups,
    _counts,
    compress_for_cluster,
    compressed_frame,
    fits,
)
from .backend import Backend, InMemoryBackend
from .history import (
    HistoryPolicy,
    HistoryResult,
    JoinResult,
    MemoryHistory,
    Position,
    find_marks,
    stamp,
)

if TYPE_CHECKING:
    from .._fastbroadcast_py import Hub, Peer

__all__ = ["BroadcastResult", "RoomManager"]

T = TypeVar("T")
P = ParamSpec("P")

Broadcastable = Message | WebSocketMessage | str | bytes | bytearray | memoryview
#: ``presence_event(room, "join" | "leave", conn_id, info)``: a message for the room, or None.
PresenceEvent = Callable[[str, str, str, dict[str, Any]], "Broadcastable | None"]
Exclude = WebSocketConnection | str | Iterable[WebSocketConnection | str] | None


@dataclass(frozen=True)
class BroadcastResult:
    """What a broadcast did, in this process.

    - ``delivered``: members the frame was queued for (written within this
      event-loop iteration, or within the manager's ``flush_interval``, in order
      with everything else sent to them).
    - ``dropped``: members skipped under the slow-consumer policy (``"drop"``:
      over ``max_write_buffer``; ``"close"``: closed with 1013 by this broadcast).
    - ``failed``: ids of members that could not take it (their socket failed or
      they were closing); they were removed from every room.
    - ``position``: the publication's place in the room's history (see
      :class:`~reinhardt_ws.rooms.HistoryPolicy`); None for a room without
      history, or when the history could not be written (Redis unreachable: the
      broadcast was then delivered in this process only).

    A broadcast never raises because a member failed.
    """

    delivered: int = 0
    dropped: int = 0
    failed: tuple[str, ...] = ()
    position: Position | None = None


#: The results of the common broadcasts (all delivered, none dropped or failed, no
#: position), one per delivered count: a frozen result is made once, not per call.
_PLAIN_RESULTS: dict[int, BroadcastResult] = {}
_PLAIN_RESULTS_MAX = 4096
_EMPTY_RESULT = BroadcastResult()
_NO_ONE: frozenset[str] = frozenset()


def _result(delivered: int, dropped: int, failed: list[str] | tuple[str, ...]
            ) -> BroadcastResult:
    """``BroadcastResult(delivered, dropped, tuple(failed))``, shared for the
    common outcomes (constructing a frozen dataclass costs more than the rest of
    a broadcast to a small room)."""
    if dropped or failed:
        return BroadcastResult(delivered, dropped, tuple(failed))
    result = _PLAIN_RESULTS.get(delivered)
    if result is None:
        result = BroadcastResult(delivered)
        if len(_PLAIN_RESULTS) < _PLAIN_RESULTS_MAX:
            _PLAIN_RESULTS[delivered] = result
    return result


def encode_frame(message: Broadcastable) -> bytes:
    """One server frame for *message* (built once per broadcast).

    :class:`~reinhardt_ws.SendError` for what cannot be sent, ``ValueError`` for a
    close message (close the connections instead)."""
    kind = type(message)
    if kind is bytes:  # the common cases first, without frame_parts' isinstance chain
        return _fanout.build_frame(OPCODE_BINARY, message)  # type: ignore[arg-type]
    if kind is str:
        return _fanout.build_frame(OPCODE_TEXT, message.encode("utf-8"))  # type: ignore[union-attr]
    opcode, payload = frame_parts(message)
    if opcode == OPCODE_CLOSE:
        raise ValueError("a close message cannot be broadcast; close the connections")
    return _fanout.build_frame(opcode, payload)


def _position(value: Position | tuple[str, int]) -> Position:
    """A position given as a :class:`Position` or an ``(epoch, offset)`` pair;
    ``ValueError`` for a negative offset."""
    position = Position(str(value[0]), int(value[1]))
    if position.offset < 0:
        raise ValueError("a position's offset is never negative")
    return position


def _exclude_ids(exclude: Exclude) -> frozenset[str]:
    if exclude is None:
        return _NO_ONE
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
            if not binds and self._loop is running and self._backend_loop is running:
                # Bound to this (running, so open) loop and attached: what
                # _owner_for would answer, without its lock.
                return await method(self, *args, **kwargs)
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

    **Presence** (``presence=True``): :meth:`presence` lists a room's members
    (connection id -> the ``info`` dict given to ``join``, by default the
    connection's ``user`` when it is a dict), over every process with Redis
    (entries of a dead process expire with the backend's ``ttl``).
    ``presence_event(room, "join" | "leave", conn_id, info)`` (it implies
    presence) may return a message that is then broadcast to the room, the
    member concerned excluded (not stored in history; a killed process's members
    leave without one).

    **History** (``history=HistoryPolicy(size=..., ttl=..., rooms="chat:*")``,
    off by default): every broadcast to a room the policy covers is stored and
    gets a :class:`~reinhardt_ws.rooms.Position`; :meth:`history` reads it back
    and ``join(..., recover=position)`` replays what a returning connection
    missed.  In this process with the in-memory backend (a restart changes the
    epoch), in Redis Streams with :class:`RedisBackend`.  See ``docs/recovery.md``.

    **Latency budget** (``flush_interval=seconds``, off by default): this
    manager's broadcasts are held up to that long and each member then gets
    everything held for it in one write, instead of one write per event-loop
    iteration.  For a stream of single broadcasts (a ticker, a Redis
    subscriber) that cuts the server's CPU per delivery several-fold, at up to
    *flush_interval* of added latency per message; order, completeness and
    the slow-consumer policy are unchanged, and a connection's own sends are
    not delayed (they also write out what is held for it).  ``ValueError``
    unless ``0 < flush_interval <= 1``.  See ``docs/rooms.md``.
    """

    def __init__(self, backend: Backend | None = None, *,
                 max_rooms_per_connection: int | None = None,
                 history: HistoryPolicy | None = None,
                 presence: bool = False,
                 presence_event: PresenceEvent | None = None,
                 flush_interval: float | None = None) -> None:
        if max_rooms_per_connection is not None and max_rooms_per_connection < 1:
            raise ValueError("max_rooms_per_connection must be positive or None")
        self._flush_interval: float | None = None
        self._hold = 0.0
        self.flush_interval = flush_interval
        if history is not None and not isinstance(history, HistoryPolicy):
            raise TypeError("history must be a HistoryPolicy or None")
        self._backend: Backend = backend if backend is not None else InMemoryBackend()
        self.max_rooms_per_connection = max_rooms_per_connection
        self.history_policy = history
        # Where history lives: the backend's own store if it has one (Redis),
        # else a ring per room in this process.
        self._shared_history = history is not None and hasattr(self._backend, "use_history")
        if self._shared_history:
            self._backend.use_history(history)  # type: ignore[attr-defined]
        self._ring = MemoryHistory(history) if history is not None and not self._shared_history \
            else None
        # Connections being recovered through a shared history: room -> {id: frames
        # (offset, frame) that arrived live meanwhile}.
        self._recovering: dict[str, dict[str, list[tuple[Position, bytes]]]] = {}
        # ... and once recovered, the offset their replay reached: a live copy at
        # or below it (late on the pub/sub connection) is not sent again.
        self._floors: dict[str, dict[str, Position]] = {}
        #: Presence (``presence=True``): room -> {connection id -> info} of this process.
        self.presence_enabled = bool(presence) or presence_event is not None
        self.presence_event = presence_event
        self._infos: dict[str, dict[str, dict[str, Any]]] = {}
        self._shared_presence = self.presence_enabled and hasattr(self._backend, "presence")
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
        # permessage-deflate: members by shared compressor (rooms/_compression.py),
        # and the backend's compressor of broadcasts compressed once per cluster.
        self._deflate_groups = CompressionGroups()
        self._cluster_compressor = getattr(self._backend, "cluster_compressor", None) \
            if self._backend.distributed else None
        # One bound method for every member's close listener, not one per member.
        self._forget_conn = self._forget

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RoomManager:
        """A manager on the backend *url* names: ``redis://`` / ``rediss://``
        (needs the ``redis`` extra) or ``memory://``.  ``max_rooms_per_connection``,
        ``history``, ``presence``, ``presence_event`` and ``flush_interval`` are
        the manager's; other *options* go to the backend."""
        mine = {name: options.pop(name) for name in
                ("max_rooms_per_connection", "history", "presence", "presence_event",
                 "flush_interval")
                if name in options}
        if url.startswith("memory://"):
            return cls(**mine)
        if url.startswith(("redis://", "rediss://", "unix://")):
            from .redis import RedisBackend

            return cls(backend=RedisBackend(url, **options), **mine)
        raise ValueError(f"no backend for {url!r}")

    @property
    def flush_interval(self) -> float | None:
        """Seconds a broadcast may be held to share a write with the next ones
        (None: written within the event-loop iteration).  May be changed at any
        time; it applies to broadcasts made from then on.  ``TypeError`` for
        what is not a number, ``ValueError`` unless ``0 < value <= 1``."""
        return self._flush_interval

    @flush_interval.setter
    def flush_interval(self, value: float | None) -> None:
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError("flush_interval must be a number of seconds or None")
            if not (math.isfinite(value) and 0 < value <= 1):
                raise ValueError("flush_interval must be within 0 < flush_interval <= 1 "
                                 f"second, not {value!r}")
            value = float(value)
        self._flush_interval = value
        self._hold = value or 0.0

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
                self._infos.clear()
                self._recovering.clear()
                self._floors.clear()
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
    @overload
    async def join(self, room: str, conn: WebSocketConnection, *,
                   info: dict[str, Any] | None = None) -> bool: ...
    @overload
    async def join(self, room: str, conn: WebSocketConnection, *,
                   recover: Position | None = None, recent: int = 0,
                   info: dict[str, Any] | None = None) -> JoinResult: ...

    async def join(self, room: str, conn: WebSocketConnection, *,
                   recover: Position | None = None,
                   recent: int = 0, info: dict[str, Any] | None = None) -> bool | JoinResult:
        """Add *conn* to *room*; True if it was not a member.  A closed
        connection is not added (False).  ``RoomLimitError`` if *conn* is
        already in ``max_rooms_per_connection`` rooms (and not in *room*).

        **Recovery** (a room with history): with ``recover=position`` (what the
        connection last saw, a :class:`Position` or an ``(epoch, offset)`` pair)
        the publications after it are sent to *conn* first, in order, and then
        the live ones, with none lost or doubled in between; with ``recent=n``
        the room's last *n* publications are.  Either way the answer is a
        :class:`JoinResult` (true when *conn* was added): ``recovered`` is False
        when history does not reach back to *position*, its epoch differs, or
        more than the policy's ``max_recovery`` are missing (nothing is replayed
        then; ``position`` is the room's current one).  A connection that is
        already a member gets nothing replayed (``joined=False, recovered=False``).
        Without either argument the answer is a plain bool, as always.

        *info* is what :meth:`presence` shows for *conn* in *room* (with
        ``presence=True``; default: ``conn.user`` if it is a dict, else ``{}``).
        """
        return await self._join(room, conn, recover, recent, info)

    @_on_owning_loop(binds=True)
    async def _join(self, room: str, conn: WebSocketConnection,
                    recover: Position | None, recent: int,
                    info: dict[str, Any] | None) -> bool | JoinResult:
        recovering = recover is not None or recent > 0
        if recent < 0:
            raise ValueError("recent must not be negative")
        if recover is not None:
            recover = _position(recover)
        peer = conn._room_peer()
        if peer is None:
            return JoinResult(False, False, None) if recovering else False
        members = self._rooms.get(room)
        if members is not None and conn.id in members:
            return JoinResult(False, False, None) if recovering else False
        rooms = self._rooms_of.get(conn.id)
        limit = self.max_rooms_per_connection
        if limit is not None and rooms is not None and len(rooms) >= limit:
            self._room_limit_refusals += 1
            raise RoomLimitError(limit)
        outcome: JoinResult | None = None
        if recovering:
            policy = self.history_policy
            if policy is None or not policy.applies(room):
                outcome = JoinResult(True, False, None)
            elif self._ring is not None:
                # Replay and membership with no suspension point between them: no
                # broadcast can fall in the gap (or be sent twice).
                read = self._ring.read(room, since=recover,
                                       limit=recent if recover is None else policy.max_recovery)
                if read.complete:
                    for publication in read.publications:
                        peer.send(publication.frame)
                outcome = JoinResult(True, read.complete, read.position,
                                     len(read.publications) if read.complete else 0)
            else:  # a shared history: live frames wait while it is read
                self._recovering.setdefault(room, {})[conn.id] = []
        if members is None:
            members = self._rooms[room] = {}
        members[conn.id] = peer
        self._deflate_groups.add(room, conn, peer)
        if rooms is None:
            rooms = self._rooms_of[conn.id] = set()
            self._conns[conn.id] = conn
            self._everyone[conn.id] = peer
            self._deflate_groups.add(None, conn, peer)
            conn.add_close_listener(self._forget_conn)
        rooms.add(room)
        if self._backend.distributed:
            try:
                await self._backend.joined(room, conn.id)
            except BaseException:
                self._recovering.get(room, {}).pop(conn.id, None)
                raise
        if self.presence_enabled:
            await self._presence_joined(room, conn, info)
        if outcome is None and recovering:
            outcome = await self._recover_shared(room, conn, recover, recent)
        return outcome if outcome is not None else True

    async def _recover_shared(self, room: str, conn: WebSocketConnection,
                              since: Position | None, recent: int) -> JoinResult:
        """Replay from the backend's history to *conn*, a member whose live frames
        of *room* are held meanwhile; then send the held ones it did not get."""
        policy = self.history_policy
        assert policy is not None
        try:
            read: HistoryResult | None = await self._backend.read_history(  # type: ignore[attr-defined]
                room, since, recent if since is None else policy.max_recovery)
        finally:
            held = self._recovering.get(room, {}).pop(conn.id, [])
            if room in self._recovering and not self._recovering[room]:
                del self._recovering[room]
        members = self._rooms.get(room)
        # It may have left (or closed) while the history was read: then nothing.
        peer = conn._room_peer() if members is not None and conn.id in members else None
        if read is None:  # the history cannot be read now (Redis unreachable)
            if peer is not None:
                for _at, frame in held:
                    peer.send(frame)
            return JoinResult(True, False, None)
        top = read.position
        if peer is not None:
            if read.complete:
                for publication in read.publications:
                    peer.send(publication.frame)
            for at, frame in held:
                if at.epoch != top.epoch or at.offset > top.offset:
                    peer.send(frame)
            if not held or (held[-1][0].epoch == top.epoch and held[-1][0].offset <= top.offset):
                self._floors.setdefault(room, {})[conn.id] = top
        replayed = len(read.publications) if read.complete else 0
        return JoinResult(True, read.complete, read.position, replayed)

    @_on_owning_loop()
    async def leave(self, room: str, conn: WebSocketConnection) -> bool:
        """Remove *conn* from *room*; True if it was a member."""
        if not self._remove(room, conn.id):
            return False
        if self._backend.distributed:
            await self._backend.left(room, conn.id)
        if self.presence_enabled:
            await self._presence_left(room, conn.id)
        return True

    # -- presence -------------------------------------------------------------
    async def _presence_joined(self, room: str, conn: WebSocketConnection,
                               info: dict[str, Any] | None) -> None:
        if info is None:
            info = conn.user if isinstance(conn.user, dict) else {}
        self._infos.setdefault(room, {})[conn.id] = info
        if self._shared_presence:
            await self._backend.presence_joined(room, conn.id, info)  # type: ignore[attr-defined]
        await self._presence_event(room, "join", conn.id, info)

    async def _presence_left(self, room: str, conn_id: str) -> None:
        of_room = self._infos.get(room)
        info = of_room.pop(conn_id, None) if of_room is not None else None
        if of_room is not None and not of_room:
            del self._infos[room]
        if self._shared_presence:
            await self._backend.presence_left(room, conn_id)  # type: ignore[attr-defined]
        await self._presence_event(room, "leave", conn_id, info or {})

    async def _presence_event(self, room: str, kind: str, conn_id: str,
                              info: dict[str, Any]) -> None:
        hook = self.presence_event
        if hook is None:
            return
        message = hook(room, kind, conn_id, info)
        if message is None:
            return
        frame = encode_frame(message)  # ephemeral: around history, not into it
        await self._deliver_and_publish(room, frame, frozenset((conn_id,)))

    @_on_owning_loop()
    async def presence(self, room: str) -> dict[str, dict[str, Any]]:
        """The members of *room* (connection id -> info), in every process with
        a distributed backend that keeps presence (Redis: a member of a process
        that died vanishes within the backend's ``ttl``); this process's alone
        while Redis is unreachable.  ``ValueError`` unless ``presence=True``."""
        if not self.presence_enabled:
            raise ValueError("presence is off: RoomManager(presence=True)")
        local = dict(self._infos.get(room, {}))
        if not self._shared_presence:
            return local
        remote: dict[str, dict[str, Any]] | None = \
            await self._backend.presence(room)  # type: ignore[attr-defined]
        if remote is None:
            return local
        remote.update(local)
        return remote

    def _remove(self, room: str, conn_id: str) -> bool:
        """Drop one membership; False if there was none."""
        members = self._rooms.get(room)
        if members is None or members.pop(conn_id, None) is None:
            return False
        self._deflate_groups.remove(room, conn_id)
        for pending in (self._floors, self._recovering):
            if pending:
                of_room = pending.get(room)
                if of_room is not None and of_room.pop(conn_id, None) is not None \
                        and not of_room:
                    del pending[room]
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
            conn.remove_close_listener(self._forget_conn)

    def _remove_everywhere(self, conn_id: str) -> None:
        rooms = self._rooms_of.get(conn_id)
        if not rooms:
            self._drop_conn(conn_id)
            return
        for room in list(rooms):
            if self._remove(room, conn_id):
                if self._backend.distributed:
                    self._spawn(self._backend.left(room, conn_id))
                if self.presence_enabled:
                    self._spawn(self._presence_left(room, conn_id))
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
    async def broadcast(self, room: str, message: Broadcastable, *,
                        exclude: Exclude = None, positioned: bool = False) -> BroadcastResult:
        """Send *message* to every member of *room* but *exclude*.

        *message* is a :class:`Message`, a ``str`` (text), bytes (binary) or a
        :class:`WebSocketMessage` (its JSON, as text); it is encoded and framed
        once.  *exclude* is a connection, a connection id, or an iterable of them.
        Does not suspend with the in-memory backend, so broadcasts made in one
        event-loop iteration reach each member in one write.  With a distributed
        backend it also publishes to the other processes (the result counts this
        process's members).

        In a room with history (see :class:`~reinhardt_ws.rooms.HistoryPolicy`)
        the result carries the publication's ``position``; with Redis the call
        then waits for Redis to store it (every process delivers in the stored
        order).  ``positioned=True``: the message's text carries
        :data:`~reinhardt_ws.rooms.history.OFFSET_MARK` and ``EPOCH_MARK``, which
        are replaced in the frame by the publication's offset and epoch, so each
        member (and each replay) learns where it stands (``ValueError`` without
        them).
        """
        loop = self._loop
        if (loop is not None and loop is self._backend_loop and not positioned
                and loop is asyncio.get_running_loop() and not self._backend.distributed):
            # The common case: on the owning loop, in memory only.  Without
            # history it is one synchronous fan-out, no coroutine below this one.
            policy = self.history_policy
            if policy is None or not policy.applies(room):
                return self.deliver_local(room, encode_frame(message), _exclude_ids(exclude))
        return await self._broadcast_on_owner(room, message, exclude, positioned)

    @_on_owning_loop()
    async def _broadcast_on_owner(self, room: str, message: Broadcastable, exclude: Exclude,
                                  positioned: bool) -> BroadcastResult:
        return await self._broadcast(room, message, exclude, positioned)

    @_on_owning_loop()
    async def broadcast_all(self, message: Broadcastable, *,
                            exclude: Exclude = None) -> BroadcastResult:
        """Send *message* once to every connection that is in at least one room
        (as :meth:`broadcast` does to one room)."""
        return await self._broadcast(None, message, exclude)

    async def _broadcast(self, room: str | None, message: Broadcastable,
                         exclude: Exclude, positioned: bool = False) -> BroadcastResult:
        frame = encode_frame(message)
        excluded = _exclude_ids(exclude)
        marks = find_marks(frame) if positioned else None
        policy = self.history_policy
        if policy is not None and room is not None and policy.applies(room):
            return await self._broadcast_with_history(room, frame, excluded, marks)
        if marks is not None:
            frame = stamp(frame, marks, None)
        if not self._backend.distributed:  # the in-memory hot path: no suspension
            return self.deliver_local(room, frame, excluded)
        return await self._deliver_and_publish(room, frame, excluded)

    def _for_cluster(self, frame: bytes) -> Carried | None:
        """*frame* compressed once for every process, when the backend carries
        compressed broadcasts and compression pays."""
        compressor = self._cluster_compressor
        return None if compressor is None else compress_for_cluster(frame, compressor)

    async def _deliver_and_publish(self, room: str | None, frame: bytes,
                                   excluded: frozenset[str]) -> BroadcastResult:
        """Fan *frame* out here, then hand it to the other processes (compressed
        once for all of them when the backend carries that)."""
        carried = self._for_cluster(frame)
        result = self.deliver_local(room, frame, excluded, carried)
        if self._backend.distributed:
            if carried is None:
                await self._backend.publish(room, frame, excluded)
            else:
                await self._backend.publish(room, frame, excluded,  # type: ignore[call-arg]
                                            carried)
        return result

    async def _broadcast_with_history(self, room: str, frame: bytes, excluded: frozenset[str],
                                      marks: tuple[int, int] | None) -> BroadcastResult:
        """Store, then fan out.  In memory: append and deliver, no suspension.
        Shared (Redis): the backend stores and publishes in one step and every
        process, this one included, delivers in the order the store assigned."""
        if self._ring is not None:
            position, frame = self._ring.append(room, frame, marks)
            result = await self._deliver_and_publish(room, frame, excluded)
            return BroadcastResult(result.delivered, result.dropped, result.failed, position)
        # A positioned frame is stamped by the store: it cannot be compressed before.
        carried = self._for_cluster(frame) if marks is None else None
        published: tuple[Position | None, BroadcastResult | None] = \
            await self._backend.publish_history(  # type: ignore[attr-defined]
                room, frame, excluded, marks, carried)
        stored_at, remote = published
        if remote is None:  # not stored (Redis unreachable): this process only
            if marks is not None:
                frame = stamp(frame, marks, None)
            remote = self.deliver_local(room, frame, excluded, carried)
        return BroadcastResult(remote.delivered, remote.dropped, remote.failed, stored_at)

    def deliver_history(self, room: str, at: Position, frame: bytes,
                        exclude: frozenset[str],
                        compressed: Carried | None = None) -> BroadcastResult:
        """Fan out a stored publication (at *at*) of *room* to this process's
        members; members being recovered hold it (plain) until their replay is
        done.  Backends with a shared history call it, on the owning loop, in
        offset order; *compressed* as for :meth:`deliver_local`."""
        recovering = self._recovering.get(room)
        if recovering:
            for conn_id, held in recovering.items():
                if conn_id not in exclude:
                    held.append((at, frame))
            exclude = exclude | frozenset(recovering)
        floors = self._floors.get(room)
        if floors:
            replayed = frozenset(cid for cid, floor in floors.items()
                                 if at.epoch == floor.epoch and at.offset <= floor.offset)
            for cid in [cid for cid in floors if cid not in replayed]:
                del floors[cid]
            if not floors:
                del self._floors[room]
            exclude = exclude | replayed
        return self.deliver_local(room, frame, exclude, compressed)

    @_on_owning_loop()
    async def history(self, room: str, *, since: Position | None = None,
                      limit: int | None = None) -> HistoryResult:
        """The stored publications of *room* (framed, as sent), oldest first.

        With *since*, those after it, at most *limit* (default: the policy's
        ``max_recovery``); ``complete`` is False and none are returned when the
        history does not reach back, the epoch differs or more are missing than
        that.  Without it, the newest *limit* kept (all kept without *limit*).
        ``ValueError`` for a room the policy gives no history; ``ConnectionError``
        when a shared history cannot be read now."""
        policy = self.history_policy
        if policy is None or not policy.applies(room):
            raise ValueError(f"room {room!r} keeps no history")
        if limit is not None and limit < 0:
            raise ValueError("limit must not be negative")
        if since is not None:
            since = _position(since)
            if limit is None:
                limit = policy.max_recovery
        if self._ring is not None:
            return self._ring.read(room, since, limit)
        read: HistoryResult | None = await self._backend.read_history(  # type: ignore[attr-defined]
            room, since, limit)
        if read is None:
            raise ConnectionError("the room's history cannot be read now (redis unreachable)")
        return read

    def deliver_local(self, room: str | None, frame: bytes, exclude: frozenset[str],
                      compressed: Carried | None = None) -> BroadcastResult:
        """Fan a ready frame out to this process's members of *room* (None: of
        every room).  Call on the owning loop; backends use it for remote
        broadcasts.  *compressed*: the same message compressed once for the
        cluster (here or by the process that published it), sent as it is to
        every group of members it is valid for (see ``_compression.fits``);
        other compressing groups get the frame compressed here, once per group."""
        members = self._everyone if room is None else self._rooms.get(room)
        if not members:
            return _EMPTY_RESULT
        hub = self._hub
        assert hub is not None
        # A flush interval is passed only when set: the plain call stays the plain call.
        fanout = functools.partial(hub.fanout, flush_interval=self._hold) if self._hold \
            else hub.fanout
        groups = self._deflate_groups.of(room)
        if groups is not None:
            # permessage-deflate: one compressed frame per group, the plain one to the rest.
            delivered = dropped = 0
            failed: list[str] = []
            for compressor, group in list(groups.items()):
                if compressor is None:
                    out = frame
                elif compressed is not None and fits(compressed, compressor):
                    out = compressed.frame
                    _counts[2] += 1
                else:
                    out = compressed_frame(frame, compressor)
                d, n, f = fanout(group, out, exclude or None)
                delivered, dropped = delivered + d, dropped + n
                failed.extend(f)
        else:
            delivered, dropped, failed = fanout(members, frame, exclude or None)
        for conn_id in failed:
            self._remove_everywhere(conn_id)
        return _result(delivered, dropped, failed)

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
        if self._hub is not None:
            self._hub.flush()  # what a flush interval holds goes out now
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
