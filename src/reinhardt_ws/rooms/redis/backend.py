"""Rooms across processes and machines: :class:`RedisBackend` (the ``redis`` extra).

``RoomManager(backend=RedisBackend("redis://host:6379/0"))`` (or
``RoomManager.from_url("redis://...")``) makes every room span every process
that uses the same Redis and ``prefix``.

Delivery
--------
A broadcast is framed once, by the process that makes it.  That process delivers
it to its own members at once, then publishes the framed bytes inside a small
binary envelope (origin process, excluded connection ids, frame).  Every other
process that has members in the room receives the envelope, slices the frame out
and hands it to its local fan-out: nothing is decoded or re-encoded on the way.
A process subscribes to a room's channel when its first local member joins and
unsubscribes when its last one leaves, so it only receives the rooms it serves;
``broadcast_all`` uses one shared channel, ``send_to`` the target process's own
channel.  ``sharded=True`` uses SPUBLISH / SSUBSCRIBE (Redis 7+); with
``cluster=True`` each shard channel is subscribed on the node that owns its slot.

Publishing is queued and pipelined: ``broadcast()`` does not wait for Redis and
never raises because of it.  Messages from one process reach another in the order
they were published (per room only, with a sharded Redis Cluster).

Membership and liveness
-----------------------
Each process writes its own state under keys that expire: ``P:{id}:rooms`` (hash
room -> local member count), ``P:{id}:conns`` (set of local connection ids in a
room) and ``P:{id}:alive``, refreshed every ``heartbeat_interval`` with a TTL of
``ttl``; ``P:procs`` indexes the process ids.  ``room_size`` and ``list_rooms``
add up the processes' hashes, so the members of a process that died without
closing vanish from them at most ``ttl`` seconds after its last heartbeat, and
nobody has to clean up after it (stale ids in ``P:procs`` are pruned lazily).
``join`` returns once the process is subscribed to the room and its member count
is written, so a broadcast or a count made anywhere after that includes it.

Outages (pub/sub is at-most-once)
----------------------------------
While Redis is unreachable, local members keep receiving this process's
broadcasts and ``join``/``leave`` keep working locally.  What is lost:

- the remote part of every broadcast and ``send_to`` made while this process is
  disconnected (counted in :meth:`RedisBackend.stats` as ``dropped_publications``
  and logged; ``send_to`` returns False);
- publications in flight when the connection broke (also counted as dropped,
  although Redis may have delivered some of them);
- messages that other processes published while this process was not
  subscribed, between the break and its resubscription (Redis accepts them with
  no receiver; nobody counts these);
- accuracy of counts: ``room_size`` / ``list_rooms`` answer with this process's
  own members only while it is disconnected.

Membership changes are not lost: after reconnecting (exponential backoff up to
``backoff_max``), a process resubscribes to its rooms and rewrites its state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

if TYPE_CHECKING:
    from ..manager import RoomManager

__all__ = ["RedisBackend"]

logger = logging.getLogger("reinhardt_ws.redis")

MiB = 1024 * 1024

#: Errors that mean "Redis is not reachable (right now)".
_FAILURES: tuple[type[BaseException], ...] = (RedisError, OSError, asyncio.TimeoutError,
                                              TimeoutError, EOFError)

# -- the envelope -------------------------------------------------------------------
#
#   version:u8  kind:u8  origin:8 bytes  count:u16  count x (len:u16, utf-8 id)  frame
#
# ``ids`` are the excluded connection ids of a broadcast, or the target of a direct
# message.  The frame is a complete WebSocket frame, passed on as it is.
ENVELOPE_VERSION = 1
KIND_ROOM = 0
KIND_ALL = 1
KIND_DIRECT = 2

_HEAD = struct.Struct("!BB8sH")
_LEN = struct.Struct("!H")
_HEAD_SIZE = _HEAD.size


class Envelope(NamedTuple):
    kind: int
    origin: bytes
    ids: tuple[str, ...]
    frame: bytes


def pack_envelope(kind: int, origin: bytes, ids: Iterable[str], frame: bytes) -> bytes:
    """The published form of one framed message."""
    encoded = [i.encode("utf-8") for i in ids]
    head = _HEAD.pack(ENVELOPE_VERSION, kind, origin, len(encoded))
    if not encoded:
        return head + frame
    parts = [head]
    for raw in encoded:
        parts.append(_LEN.pack(len(raw)))
        parts.append(raw)
    parts.append(frame)
    return b"".join(parts)


def unpack_envelope(data: bytes) -> Envelope:
    """Inverse of :func:`pack_envelope`; ``ValueError`` for anything else."""
    if len(data) < _HEAD_SIZE:
        raise ValueError("envelope too short")
    version, kind, origin, count = _HEAD.unpack_from(data)
    if version != ENVELOPE_VERSION:
        raise ValueError(f"unknown envelope version {version}")
    offset = _HEAD_SIZE
    ids = []
    for _ in range(count):
        (size,) = _LEN.unpack_from(data, offset)
        offset += 2
        if offset + size > len(data):
            raise ValueError("truncated envelope")
        ids.append(data[offset:offset + size].decode("utf-8"))
        offset += size
    return Envelope(kind, origin, tuple(ids), data[offset:])


class _Subscriber:
    """One dedicated pub/sub connection and the task that reads it."""

    def __init__(self, backend: RedisBackend, conn: Any, name: str) -> None:
        self.backend = backend
        self.conn = conn
        self.name = name
        self.channels: set[bytes] = set()
        self.pending: dict[bytes, asyncio.Future[None]] = {}
        self.unsubscribing: dict[bytes, int] = {}
        self.last_seen = 0.0
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.conn.connect()
        self.last_seen = asyncio.get_running_loop().time()
        self.task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        backend = self.backend
        conn = self.conn
        loop = asyncio.get_running_loop()
        try:
            while True:
                message = await conn.read_response()
                self.last_seen = loop.time()
                try:
                    backend._on_push(self, message)
                except Exception:
                    logger.exception("handling a message from redis failed")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            backend._fail(exc, f"subscriber {self.name}")

    async def subscribe(self, channels: Sequence[bytes], timeout: float) -> None:
        """Subscribe and wait until Redis confirms every channel."""
        fresh = [c for c in channels if c not in self.channels]
        if not fresh:
            return
        loop = asyncio.get_running_loop()
        waiters = []
        for channel in fresh:
            self.channels.add(channel)
            fut = self.pending.get(channel)
            if fut is None or fut.done():
                fut = self.pending[channel] = loop.create_future()
            waiters.append(fut)
        await self._send("SSUBSCRIBE" if self.backend.sharded else "SUBSCRIBE", fresh)
        _done, pending = await asyncio.wait(waiters, timeout=timeout)
        if pending:
            raise TimeoutError(f"redis did not confirm {len(pending)} subscriptions")
        if any(fut.cancelled() for fut in waiters):
            raise ConnectionError(f"subscriber {self.name} closed while subscribing")

    async def unsubscribe(self, channels: Sequence[bytes]) -> None:
        gone = [c for c in channels if c in self.channels]
        if not gone:
            return
        for channel in gone:
            self.channels.discard(channel)
            self.unsubscribing[channel] = self.unsubscribing.get(channel, 0) + 1
            fut = self.pending.pop(channel, None)
            if fut is not None and not fut.done():
                fut.cancel()
        await self._send("SUNSUBSCRIBE" if self.backend.sharded else "UNSUBSCRIBE", gone)

    async def _send(self, command: str, channels: Sequence[bytes]) -> None:
        # Shard channels of one command must share a cluster slot: one each.
        per = 1 if self.backend.sharded else 1000
        commands = [(command, *channels[i:i + per]) for i in range(0, len(channels), per)]
        for start in range(0, len(commands), 1000):
            packed = self.conn.pack_commands(commands[start:start + 1000])
            await self.conn.send_packed_command(packed, check_health=False)

    async def ping(self) -> None:
        await self.conn.send_command("PING", check_health=False)

    def confirmed(self, channel: bytes) -> None:
        fut = self.pending.pop(channel, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def unsubscribed(self, channel: bytes) -> bool:
        """An unsubscribe arrived; False if we did not ask for it (slot moved)."""
        count = self.unsubscribing.get(channel, 0)
        if count:
            if count == 1:
                del self.unsubscribing[channel]
            else:
                self.unsubscribing[channel] = count - 1
            return True
        return channel not in self.channels

    async def close(self) -> None:
        task, self.task = self.task, None
        if task is not None:
            await _stop_tasks([task], 1.0)
        for fut in self.pending.values():
            if not fut.done():
                fut.cancel()
        self.pending.clear()
        with contextlib.suppress(Exception):
            await self.conn.disconnect()


class RedisBackend:
    """Rooms shared by every process on the same Redis (and ``prefix``).

    - ``url``: ``redis://[user:password@]host:port/db``, ``rediss://`` (TLS) or
      ``unix://path``; with ``cluster=True`` any node of a Redis Cluster.
    - ``prefix``: namespace of every key and channel (no ``{`` or ``}``).
    - ``sharded``: sharded pub/sub (SPUBLISH / SSUBSCRIBE, Redis 7+, redis-py 8+);
      the default is True with ``cluster`` and False without.
    - ``cluster``: talk to a Redis Cluster (redis-py 8+).  Each room's channel
      lives on the shard that owns its slot, and each process subscribes on the
      nodes that own its rooms, so a room's traffic touches one shard only.
    - ``heartbeat_interval`` / ``ttl``: a process refreshes its keys every
      ``heartbeat_interval`` seconds; they expire ``ttl`` seconds after the last
      refresh, which bounds how long a dead process's members are still counted.
    - ``command_timeout`` / ``connect_timeout``: socket timeouts of the commands
      and of connecting.  ``backoff_min`` / ``backoff_max``: reconnection delays
      (doubling, with jitter).
    - ``max_pending_bytes``: publications waiting for Redis beyond this are
      dropped (and counted) rather than buffered without bound.
    - ``redis_options``: extra keyword arguments for the redis-py client.
    """

    distributed = True

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "rws",
        sharded: bool | None = None,
        cluster: bool = False,
        heartbeat_interval: float = 2.0,
        ttl: float = 6.0,
        command_timeout: float = 2.0,
        connect_timeout: float = 2.0,
        backoff_min: float = 0.05,
        backoff_max: float = 3.0,
        max_pending_bytes: int = 16 * MiB,
        redis_options: Mapping[str, Any] | None = None,
    ) -> None:
        if not prefix or "{" in prefix or "}" in prefix:
            raise ValueError("prefix must be non-empty and must not contain '{' or '}'")
        if heartbeat_interval <= 0:
            raise ValueError("heartbeat_interval must be positive")
        if ttl <= heartbeat_interval:
            raise ValueError("ttl must be longer than heartbeat_interval")
        if command_timeout <= 0 or connect_timeout <= 0:
            raise ValueError("timeouts must be positive")
        if not 0 < backoff_min <= backoff_max:
            raise ValueError("need 0 < backoff_min <= backoff_max")
        if sharded is None:
            sharded = cluster
        if cluster and not sharded:
            raise ValueError("a Redis Cluster needs sharded pub/sub (sharded=True): classic "
                             "PUBLISH goes to every node, and its receiver count only "
                             "covers one node, so send_to could not tell who got it")
        if (sharded or cluster) and not _has_sharded_pubsub():
            raise RuntimeError("sharded pub/sub and Redis Cluster need redis-py 8 or later")
        self.url = url
        self.prefix = prefix
        self.sharded = sharded
        self.cluster = cluster
        self.heartbeat_interval = float(heartbeat_interval)
        self.ttl = float(ttl)
        self.command_timeout = float(command_timeout)
        self.connect_timeout = float(connect_timeout)
        self.backoff_min = float(backoff_min)
        self.backoff_max = float(backoff_max)
        self.max_pending_bytes = int(max_pending_bytes)
        self.redis_options = dict(redis_options or {})

        #: This process's id in Redis (16 hex digits, random per backend).
        self.process_id = os.urandom(8).hex()
        self._origin = bytes.fromhex(self.process_id)
        self._ttl_ms = max(1, int(self.ttl * 1000))
        self._k_procs = f"{prefix}:procs"
        self._k_alive = self._key(self.process_id, "alive")
        self._k_rooms = self._key(self.process_id, "rooms")
        self._k_conns = self._key(self.process_id, "conns")
        self._room_prefix = f"{prefix}:room:".encode()
        self._ch_all = f"{prefix}:all".encode()
        self._ch_self = self._proc_channel(self.process_id)
        self._publish_command = "SPUBLISH" if sharded else "PUBLISH"

        # What this process has: the truth that Redis is brought back to.
        self._room_count: dict[str, int] = {}
        self._conn_count: dict[str, int] = {}
        self._dirty_rooms: set[str] = set()
        self._dirty_conns: set[str] = set()
        self._room_of: dict[bytes, str] = {}

        self._stats = dict.fromkeys(
            ("published", "dropped_publications", "received", "reconnects",
             "failed_queries", "bad_messages"), 0)
        self._reset_runtime()

    # -- names --------------------------------------------------------------------
    def _key(self, process_id: str, what: str) -> str:
        # The hash tag keeps one process's keys on one cluster slot (MULTI works).
        return f"{self.prefix}:{{{process_id}}}:{what}"

    def _proc_channel(self, process_id: str) -> bytes:
        return f"{self.prefix}:proc:{process_id}".encode()

    def _room_channel(self, room: str) -> bytes:
        return self._room_prefix + room.encode("utf-8")

    # -- lifecycle ----------------------------------------------------------------
    def _reset_runtime(self) -> None:
        self._manager: RoomManager | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: Any = None
        self._subscribers: dict[str, _Subscriber] = {}
        self._subscriber_lock = asyncio.Lock()
        self._publisher_conn: Any = None
        self._up = False
        self._ever_up = False
        self._closed = False
        self._first_attempt: asyncio.Event | None = None
        self._failure: asyncio.Event | None = None
        self._flush_wake: asyncio.Event | None = None
        self._publish_wake: asyncio.Event | None = None
        self._flush_waiters: list[asyncio.Future[None]] = []
        self._outbox: list[tuple[bytes, bytes, asyncio.Future[int] | None]] = []
        self._outbox_bytes = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._down_since: float | None = None
        self._dropped_in_outage = 0
        self._last_drop_log = -1e9
        self._need_resync = False
        self._connecting = False
        self._beats = 0

    def bind(self, manager: RoomManager, loop: asyncio.AbstractEventLoop) -> None:
        """Attach to *manager* on *loop* and start connecting (called by the manager)."""
        if self._loop is loop and self._manager is manager and not self._closed:
            return
        if (self._manager is not None and self._manager is not manager
                and self._loop is not None and not self._loop.is_closed()):
            raise RuntimeError("a RedisBackend serves one RoomManager")
        if self._loop is not None:  # a new loop: the old one took our tasks with it
            self._reset_runtime()
            self._room_count.clear()
            self._conn_count.clear()
            self._dirty_rooms.clear()
            self._dirty_conns.clear()
            self._room_of.clear()
        self._manager = manager
        self._loop = loop
        self._first_attempt = asyncio.Event()
        self._failure = asyncio.Event()
        self._flush_wake = asyncio.Event()
        self._publish_wake = asyncio.Event()
        self._client = self._make_client()
        self._tasks = [loop.create_task(self._supervise()),
                       loop.create_task(self._flusher()),
                       loop.create_task(self._publisher())]
        logger.info("redis backend: process %s (pid %d) on %s, prefix %r%s",
                    self.process_id, os.getpid(), _safe_url(self.url), self.prefix,
                    ", sharded" if self.sharded else "")

    def _make_client(self) -> Any:
        options: dict[str, Any] = {
            "socket_timeout": self.command_timeout,
            "socket_connect_timeout": self.connect_timeout,
            "socket_keepalive": True,
            "retry": Retry(NoBackoff(), 0),  # the supervisor reconnects, not redis-py
            "protocol": 2,
            "client_name": f"rws-{self.process_id}",
        }
        options.update(self.redis_options)
        if self.cluster:
            options.pop("retry", None)
            from redis.asyncio.cluster import RedisCluster

            return RedisCluster.from_url(self.url, **options)
        return aioredis.Redis.from_url(self.url, **options)

    async def close(self) -> None:
        """Leave Redis: remove this process's keys, close every connection, stop
        every task.  Idempotent; never raises because Redis is unreachable."""
        if self._closed:
            return
        self._closed = True
        was_up, self._up = self._up, False
        tasks, self._tasks = self._tasks, []
        await _stop_tasks(tasks, self.command_timeout)
        self._release_waiters()
        self._drop_outbox()
        await self._close_publisher()
        await self._close_subscribers()
        client, self._client = self._client, None
        if client is not None:
            if was_up:
                try:
                    pipe = client.pipeline(transaction=False)
                    pipe.delete(self._k_rooms)
                    pipe.delete(self._k_conns)
                    pipe.delete(self._k_alive)
                    pipe.srem(self._k_procs, self.process_id)
                    await asyncio.wait_for(pipe.execute(), self.command_timeout)
                except _FAILURES as exc:
                    logger.info("redis backend: could not remove process keys on close "
                                "(%s); they expire within %.1fs", _describe(exc), self.ttl)
            with contextlib.suppress(Exception):
                closer = getattr(client, "aclose", None) or client.close
                await closer()

    def stats(self) -> dict[str, int]:
        """Counters: ``connected`` (0/1), ``published``, ``dropped_publications``
        (broadcasts and sends whose remote part never reached Redis),
        ``received`` (messages from other processes), ``reconnects``,
        ``failed_queries``, ``bad_messages``, ``pending`` (queued publications),
        ``subscriptions`` (channels subscribed now), ``rooms`` and ``connections``
        (local, as registered in Redis)."""
        out = dict(self._stats)
        out["connected"] = int(self._up)
        out["pending"] = len(self._outbox)
        out["subscriptions"] = sum(len(s.channels) for s in self._subscribers.values())
        out["rooms"] = len(self._room_count)
        out["connections"] = len(self._conn_count)
        return out

    @property
    def connected(self) -> bool:
        return self._up

    # -- the Backend protocol: membership ----------------------------------------
    async def joined(self, room: str, conn_id: str, first_local: bool) -> None:
        self._room_count[room] = self._room_count.get(room, 0) + 1
        self._conn_count[conn_id] = self._conn_count.get(conn_id, 0) + 1
        self._dirty_rooms.add(room)
        self._dirty_conns.add(conn_id)
        await self._sync()

    async def left(self, room: str, conn_id: str, last_local: bool) -> None:
        count = self._room_count.get(room, 0) - 1
        if count > 0:
            self._room_count[room] = count
        else:
            self._room_count.pop(room, None)
        count = self._conn_count.get(conn_id, 0) - 1
        if count > 0:
            self._conn_count[conn_id] = count
        else:
            self._conn_count.pop(conn_id, None)
        self._dirty_rooms.add(room)
        self._dirty_conns.add(conn_id)
        await self._sync()

    async def _wait_first_attempt(self) -> None:
        """At start-up, give the first connection a chance before answering."""
        event = self._first_attempt
        if event is None or event.is_set() or self._closed:
            return
        with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
            await asyncio.wait_for(event.wait(), self.connect_timeout + self.command_timeout)

    async def _sync(self) -> None:
        """Return once Redis reflects this process's membership as of now (or at
        once while Redis is unreachable: the reconnection rewrites it)."""
        if self._closed or self._loop is None:
            return
        await self._wait_first_attempt()
        if not self._up:
            return
        fut: asyncio.Future[None] = self._loop.create_future()
        self._flush_waiters.append(fut)
        assert self._flush_wake is not None
        self._flush_wake.set()
        await asyncio.shield(fut)  # a cancelled caller does not cancel the flush

    def _release_waiters(self) -> None:
        waiters, self._flush_waiters = self._flush_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def _flusher(self) -> None:
        wake = self._flush_wake
        assert wake is not None
        while not self._closed:
            await wake.wait()
            wake.clear()
            while self._flush_waiters or (self._up and (
                    self._dirty_rooms or self._dirty_conns or self._need_resync)):
                waiters, self._flush_waiters = self._flush_waiters, []
                try:
                    if self._up and self._need_resync:
                        self._need_resync = False
                        await self._rewrite_state()
                    if self._up:
                        rooms, self._dirty_rooms = self._dirty_rooms, set()
                        conns, self._dirty_conns = self._dirty_conns, set()
                        await self._write_membership(rooms, conns)
                except _FAILURES as exc:
                    self._fail(exc, "membership update")
                finally:
                    for fut in waiters:
                        if not fut.done():
                            fut.set_result(None)
                if not self._up or self._closed:
                    break

    async def _write_membership(self, rooms: set[str], conns: set[str]) -> None:
        counts = self._room_count
        present = [r for r in rooms if r in counts]
        gone = [r for r in rooms if r not in counts]
        # Subscribed before counted: whoever sees the count can reach the member.
        await self._subscribe_rooms(present)
        pipe = self._client.pipeline(transaction=False)
        if present:
            pipe.hset(self._k_rooms, mapping={r: counts.get(r, 0) for r in present})
        if gone:
            pipe.hdel(self._k_rooms, *gone)
        added = [c for c in conns if c in self._conn_count]
        removed = [c for c in conns if c not in self._conn_count]
        if added:
            pipe.sadd(self._k_conns, *added)
        if removed:
            pipe.srem(self._k_conns, *removed)
        pipe.pexpire(self._k_rooms, self._ttl_ms)
        pipe.pexpire(self._k_conns, self._ttl_ms)
        await pipe.execute()
        # Uncounted before unsubscribed; a room joined again meanwhile stays.
        await self._unsubscribe_channels(
            [self._room_channel(r) for r in gone if r not in counts])

    # -- subscriptions ------------------------------------------------------------
    async def _subscriber_for(self, channel: bytes) -> _Subscriber:
        if not (self._up or self._connecting):
            raise ConnectionError("redis backend is not connected")
        if self.cluster:
            node = self._client.get_node_from_key(channel)
            name, source = str(node.name), node
        else:
            name, source = "main", self._client.connection_pool
        sub = self._subscribers.get(name)
        if sub is not None:
            return sub
        async with self._subscriber_lock:  # one connection per node, used once started
            sub = self._subscribers.get(name)
            if sub is None:
                sub = await self._new_subscriber(source.connection_class,
                                                 dict(source.connection_kwargs), name)
            return sub

    async def _new_subscriber(self, connection_class: Any, kwargs: dict[str, Any],
                              name: str) -> _Subscriber:
        # A blocking reader: no socket timeout; the heartbeat's PING watches it.
        kwargs.update(socket_timeout=None, protocol=2, retry=Retry(NoBackoff(), 0))
        kwargs.pop("response_callbacks", None)
        sub = _Subscriber(self, connection_class(**kwargs), name)
        try:
            await asyncio.wait_for(sub.start(), self.connect_timeout + self.command_timeout)
        except BaseException:
            await sub.close()
            raise
        self._subscribers[name] = sub
        return sub

    async def _subscribe_channels(self, channels: Sequence[bytes]) -> None:
        if not channels:
            return
        groups: dict[str, tuple[_Subscriber, list[bytes]]] = {}
        for channel in channels:
            sub = await self._subscriber_for(channel)
            groups.setdefault(sub.name, (sub, []))[1].append(channel)
        await asyncio.gather(*(sub.subscribe(chs, self.command_timeout)
                               for sub, chs in groups.values()))

    async def _subscribe_rooms(self, rooms: Sequence[str]) -> None:
        channels = []
        for room in rooms:
            channel = self._room_channel(room)
            self._room_of[channel] = room
            channels.append(channel)
        await self._subscribe_channels(channels)

    async def _unsubscribe_channels(self, channels: Sequence[bytes]) -> None:
        for channel in channels:
            self._room_of.pop(channel, None)
            for sub in self._subscribers.values():
                if channel in sub.channels:
                    await sub.unsubscribe([channel])

    async def _close_subscribers(self) -> None:
        subs, self._subscribers = list(self._subscribers.values()), {}
        for sub in subs:
            await sub.close()

    # -- incoming -------------------------------------------------------------------
    def _on_push(self, sub: _Subscriber, message: Any) -> None:
        if not isinstance(message, list) or not message:
            return
        kind = message[0]
        if kind == b"message" or kind == b"smessage":
            self._on_message(message[1], message[2])
        elif kind == b"subscribe" or kind == b"ssubscribe":
            sub.confirmed(message[1])
        elif (kind == b"unsubscribe" or kind == b"sunsubscribe") and \
                not sub.unsubscribed(message[1]):
            # Redis dropped a subscription we still want (a cluster slot moved).
            self._fail(ConnectionError(f"redis unsubscribed {message[1]!r}"),
                       f"subscriber {sub.name}")

    def _on_message(self, channel: bytes, data: bytes) -> None:
        if len(data) < _HEAD_SIZE or data[0] != ENVELOPE_VERSION:
            self._bad_message(channel)
            return
        if data[2:10] == self._origin:
            return  # our own: delivered locally when it was published
        manager = self._manager
        if manager is None:
            return
        kind = data[1]
        if data[10] == 0 and data[11] == 0:
            frame = data[_HEAD_SIZE:]
            ids: tuple[str, ...] = ()
        else:
            try:
                _kind, _origin, ids, frame = unpack_envelope(data)
            except (ValueError, struct.error, UnicodeDecodeError):
                self._bad_message(channel)
                return
        self._stats["received"] += 1
        if kind == KIND_ROOM:
            room = self._room_of.get(channel)
            if room is not None:
                manager.deliver_local(room, frame, frozenset(ids))
        elif kind == KIND_ALL:
            manager.deliver_local(None, frame, frozenset(ids))
        elif kind == KIND_DIRECT:
            for conn_id in ids:
                manager.deliver_to_local(conn_id, frame)
        else:
            self._bad_message(channel)

    def _bad_message(self, channel: bytes) -> None:
        self._stats["bad_messages"] += 1
        if self._stats["bad_messages"] == 1:
            logger.warning("redis backend: ignoring a message on %r that is not a "
                           "reinhardt-ws envelope (version %d)", channel, ENVELOPE_VERSION)

    # -- the Backend protocol: publishing -------------------------------------------
    async def publish(self, room: str | None, frame: bytes, exclude: frozenset[str]) -> None:
        """Queue *frame* for the other processes; never waits for Redis, never
        raises because of it (a publication that cannot be made is counted)."""
        if room is None:
            self._enqueue(self._ch_all, pack_envelope(KIND_ALL, self._origin, exclude, frame))
        else:
            self._enqueue(self._room_channel(room),
                          pack_envelope(KIND_ROOM, self._origin, exclude, frame))

    async def send_to(self, conn_id: str, frame: bytes) -> bool:
        """Hand *frame* to the process that has *conn_id*; True once Redis passed it
        to that process (it may have closed the connection meanwhile)."""
        if self._closed or self._loop is None:
            return False
        await self._wait_first_attempt()
        if not self._up:
            self._drop(1, "send_to")
            return False
        try:
            others = await self._other_processes()
            if not others:
                return False
            pipe = self._client.pipeline(transaction=False)
            for pid in others:
                pipe.sismember(self._key(pid, "conns"), conn_id)
            hits = await pipe.execute()
        except _FAILURES as exc:
            self._query_failed(exc)
            self._drop(1, "send_to")
            return False
        target = next((pid for pid, hit in zip(others, hits, strict=True) if hit), None)
        if target is None:
            return False
        fut: asyncio.Future[int] = self._loop.create_future()
        envelope = pack_envelope(KIND_DIRECT, self._origin, (conn_id,), frame)
        if not self._enqueue(self._proc_channel(target), envelope, fut):
            return False
        return await fut > 0

    def _enqueue(self, channel: bytes, envelope: bytes,
                 fut: asyncio.Future[int] | None = None) -> bool:
        if not self._up:
            self._drop(1, "not connected")
            return False
        if self._outbox_bytes + len(envelope) > self.max_pending_bytes:
            self._drop(1, f"over max_pending_bytes ({self.max_pending_bytes})")
            return False
        self._outbox.append((channel, envelope, fut))
        self._outbox_bytes += len(envelope)
        assert self._publish_wake is not None
        self._publish_wake.set()
        return True

    def _drop(self, n: int, why: str) -> None:
        self._stats["dropped_publications"] += n
        if self._down_since is not None:
            self._dropped_in_outage += n
        loop = self._loop
        now = loop.time() if loop is not None else 0.0
        if now - self._last_drop_log >= 10.0:
            self._last_drop_log = now
            logger.warning("redis backend: %d publication(s) not sent to other processes (%s); "
                           "%d dropped so far", n, why, self._stats["dropped_publications"])

    def _drop_outbox(self) -> None:
        batch, self._outbox = self._outbox, []
        self._outbox_bytes = 0
        if batch:
            self._drop(len(batch), "redis connection lost")
        for _channel, _envelope, fut in batch:
            if fut is not None and not fut.done():
                fut.set_result(0)

    async def _publisher(self) -> None:
        wake = self._publish_wake
        assert wake is not None
        while not self._closed:
            await wake.wait()
            wake.clear()
            while self._outbox:
                if not self._up:
                    self._drop_outbox()
                    break
                batch = self._outbox[:1024]
                del self._outbox[:1024]
                self._outbox_bytes -= sum(len(e) for _c, e, _f in batch)
                try:
                    receivers = await self._publish_batch(batch)
                except Exception as exc:  # a half-read reply stream is a broken one too
                    self._drop(len(batch), "redis connection lost while publishing")
                    for _channel, _envelope, fut in batch:
                        if fut is not None and not fut.done():
                            fut.set_result(0)
                    self._fail(exc, "publish")
                    if self._closed:
                        return
                    continue
                self._stats["published"] += len(batch)
                for (_channel, _envelope, fut), count in zip(batch, receivers, strict=True):
                    if fut is not None and not fut.done():
                        fut.set_result(int(count or 0))

    async def _publish_batch(self, batch: list[tuple[bytes, bytes, Any]]) -> list[Any]:
        command = self._publish_command
        conn = self._publisher_conn
        if conn is None:  # a cluster: the client's pipeline routes each to its shard
            pipe = self._client.pipeline(transaction=False)
            for channel, envelope, _fut in batch:
                pipe.execute_command(command, channel, envelope)
            return list(await pipe.execute())
        # One write, then the replies in order: cheaper than a redis-py pipeline.
        packed = conn.pack_commands([(command, ch, env) for ch, env, _fut in batch])
        await conn.send_packed_command(packed, check_health=False)
        return [await conn.read_response() for _ in batch]

    # -- the Backend protocol: queries ----------------------------------------------
    async def _other_processes(self) -> list[str]:
        members = await self._client.smembers(self._k_procs)
        mine = self.process_id
        return sorted(p for p in (_text(m) for m in members) if p != mine)

    def _query_failed(self, exc: BaseException) -> None:
        self._stats["failed_queries"] += 1
        if not isinstance(exc, ResponseError):  # the connection, not the command, failed
            self._fail(exc, "query")

    async def room_size(self, room: str) -> int:
        """Members of *room* in every live process (this process's alone while
        Redis is unreachable)."""
        local = self._room_count.get(room, 0)
        if self._closed or self._loop is None:
            return local
        await self._wait_first_attempt()
        if not self._up:
            return local
        try:
            others = await self._other_processes()
            if not others:
                return local
            pipe = self._client.pipeline(transaction=False)
            for pid in others:
                pipe.hget(self._key(pid, "rooms"), room)
            counts = await pipe.execute()
        except _FAILURES as exc:
            self._query_failed(exc)
            return local
        return local + sum(int(c) for c in counts if c)

    async def list_rooms(self) -> list[str]:
        """Rooms with a member in any live process, sorted."""
        rooms = set(self._room_count)
        if self._closed or self._loop is None:
            return sorted(rooms)
        await self._wait_first_attempt()
        if not self._up:
            return sorted(rooms)
        try:
            others = await self._other_processes()
            if others:
                pipe = self._client.pipeline(transaction=False)
                for pid in others:
                    pipe.hkeys(self._key(pid, "rooms"))
                for names in await pipe.execute():
                    rooms.update(_text(n) for n in names or ())
        except _FAILURES as exc:
            self._query_failed(exc)
        return sorted(rooms)

    async def processes(self) -> list[str]:
        """Ids of the live processes sharing this prefix (this one included)."""
        others = await self._other_processes()
        pipe = self._client.pipeline(transaction=False)
        for pid in others:
            pipe.exists(self._key(pid, "alive"))
        alive = await pipe.execute() if others else []
        live = [pid for pid, ok in zip(others, alive, strict=True) if ok]
        if self._up:
            live.append(self.process_id)
        return sorted(live)

    # -- connection supervision -------------------------------------------------------
    def _fail(self, exc: BaseException, where: str) -> None:
        if self._closed or self._failure is None:
            return
        if self._up:
            logger.warning("redis backend: connection lost (%s: %s); local delivery "
                           "continues, reconnecting", where, _describe(exc))
            self._up = False
            self._down_since = self._loop.time() if self._loop is not None else 0.0
        self._failure.set()

    async def _supervise(self) -> None:
        assert self._failure is not None and self._first_attempt is not None
        delay = self.backoff_min
        attempt = 0
        while not self._closed:
            attempt += 1
            self._failure.clear()
            try:
                await self._connect()
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                if attempt == 1 or attempt % 20 == 0:
                    logger.warning("redis backend: cannot reach %s (%s); retrying "
                                   "(attempt %d)", _safe_url(self.url), _describe(exc), attempt)
                else:
                    logger.debug("redis backend: reconnect attempt %d failed: %s", attempt,
                                 _describe(exc))
                self._first_attempt.set()
                if self._down_since is None and self._loop is not None:
                    self._down_since = self._loop.time()
                await self._teardown()
                await asyncio.sleep(random.uniform(delay / 2, delay))
                delay = min(delay * 2, self.backoff_max)
                continue
            delay = self.backoff_min
            attempt = 0
            self._first_attempt.set()
            try:
                await self._stay_up()
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                self._fail(exc, "heartbeat")
            self._up = False
            await self._teardown()
            await asyncio.sleep(random.uniform(delay / 2, delay))

    async def _connect(self) -> None:
        """Connect, subscribe to everything this process needs and rewrite its
        state in Redis; then deliver and publish again."""
        client = self._client
        self._connecting = True
        try:
            if self.cluster and self._ever_up:
                # Slots may have moved (that is one way to get here): reload the map.
                await asyncio.wait_for(client.nodes_manager.initialize(),
                                       self.connect_timeout + self.command_timeout)
            await asyncio.wait_for(client.ping(), self.connect_timeout + self.command_timeout)
            if not self.cluster:
                pool = client.connection_pool
                kwargs = dict(pool.connection_kwargs, protocol=2, retry=Retry(NoBackoff(), 0))
                kwargs.pop("response_callbacks", None)
                self._publisher_conn = pool.connection_class(**kwargs)
                await asyncio.wait_for(self._publisher_conn.connect(),
                                       self.connect_timeout + self.command_timeout)
            await self._subscribe_channels([self._ch_all, self._ch_self])
            rooms = await self._rewrite_state()
            if self._failure is not None and self._failure.is_set():
                raise ConnectionError("lost the connection while connecting")
        finally:
            self._connecting = False
        self._up = True
        if self._ever_up:
            self._stats["reconnects"] += 1
            loop = self._loop
            down = (loop.time() - self._down_since) if loop and self._down_since else 0.0
            logger.warning("redis backend: reconnected after %.1fs; resubscribed %d rooms; "
                           "%d publication(s) were dropped during the outage",
                           down, rooms, self._dropped_in_outage)
        else:
            logger.info("redis backend: connected (process %s)", self.process_id)
        self._ever_up = True
        self._down_since = None
        self._dropped_in_outage = 0
        assert self._flush_wake is not None
        self._flush_wake.set()  # whatever changed while connecting

    async def _rewrite_state(self) -> int:
        """Subscribe to every local room and replace this process's keys with the
        local truth (one MULTI: readers never see half of it).  The dirty marks
        stay: the flusher writes them again, so nothing written concurrently from
        an older view can win.  Returns the number of rooms."""
        rooms = {r: n for r, n in self._room_count.items() if n > 0}
        conns = [c for c, n in self._conn_count.items() if n > 0]
        await self._subscribe_rooms(list(rooms))
        pipe = self._client.pipeline(transaction=True)  # one slot: the keys share a tag
        pipe.delete(self._k_rooms, self._k_conns)
        if rooms:
            pipe.hset(self._k_rooms, mapping=rooms)
        for start in range(0, len(conns), 10000):
            pipe.sadd(self._k_conns, *conns[start:start + 10000])
        pipe.pexpire(self._k_rooms, self._ttl_ms)
        pipe.pexpire(self._k_conns, self._ttl_ms)
        pipe.set(self._k_alive, b"1", px=self._ttl_ms)
        await pipe.execute()
        await self._client.sadd(self._k_procs, self.process_id)
        return len(rooms)

    async def _stay_up(self) -> None:
        failure = self._failure
        assert failure is not None and self._loop is not None
        while not failure.is_set():
            with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
                await asyncio.wait_for(failure.wait(), self.heartbeat_interval)
                return
            await self._heartbeat()

    async def _heartbeat(self) -> None:
        loop = self._loop
        assert loop is not None
        now = loop.time()
        limit = 2 * self.heartbeat_interval + self.command_timeout
        for sub in list(self._subscribers.values()):
            if now - sub.last_seen > limit:
                raise ConnectionError(
                    f"subscriber {sub.name} silent for {now - sub.last_seen:.1f}s")
            await sub.ping()
        pipe = self._client.pipeline(transaction=False)
        pipe.set(self._k_alive, b"1", px=self._ttl_ms, get=True)
        pipe.pexpire(self._k_rooms, self._ttl_ms)
        pipe.pexpire(self._k_conns, self._ttl_ms)
        pipe.sadd(self._k_procs, self.process_id)
        previous, _rooms, _conns, _added = await pipe.execute()
        if previous is None:
            # Our keys expired (a stall longer than ttl) or Redis lost them: the
            # flusher rewrites them.
            logger.warning("redis backend: this process's keys had expired; re-registering")
            self._need_resync = True
            assert self._flush_wake is not None
            self._flush_wake.set()
        self._beats += 1
        if self._beats % 5 == 1:
            await self._prune()

    async def _prune(self) -> None:
        """Forget ids of processes whose liveness key expired (they come back by
        themselves if they were only cut off)."""
        others = await self._other_processes()
        if not others:
            return
        pipe = self._client.pipeline(transaction=False)
        for pid in others:
            pipe.exists(self._key(pid, "alive"))
        alive = await pipe.execute()
        dead = [pid for pid, ok in zip(others, alive, strict=True) if not ok]
        if dead:
            await self._client.srem(self._k_procs, *dead)
            logger.info("redis backend: pruned %d expired process id(s)", len(dead))

    async def _close_publisher(self) -> None:
        conn, self._publisher_conn = self._publisher_conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.disconnect()

    async def _teardown(self) -> None:
        self._up = False
        self._drop_outbox()
        await self._close_publisher()
        await self._close_subscribers()
        self._room_of.clear()
        pool = getattr(self._client, "connection_pool", None)
        if pool is not None:
            with contextlib.suppress(Exception):
                await pool.disconnect()
        self._release_waiters()


async def _stop_tasks(tasks: list[asyncio.Task[None]], timeout: float) -> None:
    """Cancel *tasks* and wait for them, at most *timeout* seconds: some redis-py
    versions turn a cancelled command into a connection error, and a loop that
    catches it must see the cancellation again."""
    pending = {t for t in tasks if not t.done()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while pending and loop.time() < deadline:
        for task in pending:
            task.cancel()
        _done, pending = await asyncio.wait(pending, timeout=min(0.1, timeout))
    if pending:
        logger.warning("redis backend: %d task(s) did not stop", len(pending))
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            logger.debug("redis backend task ended with %r", task.exception())


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _safe_url(url: str) -> str:
    """*url* without its password, for logs."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rpartition('@')[2]}"


def _has_sharded_pubsub() -> bool:
    from redis.asyncio.client import PubSub

    return hasattr(PubSub, "ssubscribe")


