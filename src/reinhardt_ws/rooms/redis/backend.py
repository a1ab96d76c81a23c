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
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ...protocol.extensions.permessage_deflate import DeflateSettings, shared_compressor
from .core import FAILURES, MiB, Runtime, _describe, _safe_url, _stop_tasks, logger
from .presence import Presence

if TYPE_CHECKING:
    from ..manager import RoomManager

__all__ = ["RedisBackend"]


class RedisBackend(Presence):
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
    - ``compression``: how a broadcast is compressed once for the whole cluster
      (permessage-deflate, no context): ``"deflate"`` (the default) with
      :class:`~reinhardt_ws.DeflateSettings`' defaults, the server's; a
      ``DeflateSettings`` (give the one ``serve(compression=...)`` has); or
      None: publish plain frames only and let each process compress for its
      members (also the first step of a rolling upgrade from a version that
      predates compressed envelopes, which would ignore them).  See
      ``docs/redis.md``.
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
        compression: str | DeflateSettings | None = "deflate",
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
        if compression == "deflate":
            compression = DeflateSettings()
        elif compression is not None and not isinstance(compression, DeflateSettings):
            raise ValueError("compression must be 'deflate', a DeflateSettings or None")
        self.compression: DeflateSettings | None = compression
        #: The compressor of broadcasts compressed once for the cluster (the
        #: same object as the local room groups of that parameter set), or None.
        self.cluster_compressor = None if compression is None else shared_compressor(
            compression.server_max_window_bits or 15, compression)

        #: This process's id in Redis (16 hex digits, random per backend).
        self.process_id = os.urandom(8).hex()
        super().__init__()

    def bind(self, manager: RoomManager, loop: asyncio.AbstractEventLoop) -> None:
        """Attach to *manager* on *loop* and start connecting (called by the manager)."""
        if self._rt.loop is loop and self._rt.manager is manager and not self._rt.closed:
            return
        if (self._rt.manager is not None and self._rt.manager is not manager
                and self._rt.loop is not None and not self._rt.loop.is_closed()):
            raise RuntimeError("a RedisBackend serves one RoomManager")
        if self._rt.loop is not None:  # a new loop: the old one took our tasks with it
            self._room_count.clear()
            self._conn_count.clear()
            self._dirty_rooms.clear()
            self._dirty_conns.clear()
        rt = self._rt = Runtime(manager, loop)
        rt.client = self._make_client()
        rt.tasks = [loop.create_task(self._supervise()),
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
        if self._rt.closed:
            return
        self._rt.closed = True
        was_up, self._rt.up = self._rt.up, False
        tasks, self._rt.tasks = self._rt.tasks, []
        await _stop_tasks(tasks, self.command_timeout)
        self._release_waiters()
        self._drop_outbox()
        await self._close_publisher()
        await self._close_subscribers()
        client, self._rt.client = self._rt.client, None
        if client is not None:
            if was_up:
                await self._forget_presence()
                try:
                    pipe = client.pipeline(transaction=False)
                    pipe.delete(self._k_rooms)
                    pipe.delete(self._k_conns)
                    pipe.delete(self._k_alive)
                    pipe.srem(self._k_procs, self.process_id)
                    await asyncio.wait_for(pipe.execute(), self.command_timeout)
                except FAILURES as exc:
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
        out["connected"] = int(self._rt.up)
        out["pending"] = len(self._rt.outbox)
        out["subscriptions"] = sum(len(s.channels) for s in self._rt.subscribers.values())
        out["rooms"] = len(self._room_count)
        out["connections"] = len(self._conn_count)
        return out


def _has_sharded_pubsub() -> bool:
    from redis.asyncio.client import PubSub

    return hasattr(PubSub, "ssubscribe")
