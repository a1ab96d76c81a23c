"""Presence in Redis: who is in a room, cluster-wide, with each member's info.

Per room, in the slot of its channel ``C`` (hash tag ``T``): ``{T}:pz:C``, a
sorted set of connection ids scored by their expiry (milliseconds of Redis's
own clock, so processes need no common clock), and ``{T}:ph:C``, a hash of
connection id -> info (JSON).  A process writes its members on join, removes
them on leave, and refreshes all of them every ``heartbeat_interval`` with an
expiry ``ttl`` ahead, so the members of a process that died without a word
drop out of :meth:`presence` within ``ttl``; readers prune expired entries.
"""

from __future__ import annotations

import json
from typing import Any

from .core import FAILURES, _text, logger
from .history import History, hash_tag

__all__ = ["Presence"]

#: KEYS: zset, hash.  ARGV: ttl ms, then id, info pairs.  Adds or refreshes them.
WRITE_SCRIPT = """
local now = redis.call('TIME')
local expiry = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  redis.call('ZADD', KEYS[1], expiry, ARGV[i])
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return 1
"""

#: KEYS: zset, hash.  Prunes expired entries; returns id, info, id, info...
READ_SCRIPT = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ms)
for i = 1, #expired do
  redis.call('ZREM', KEYS[1], expired[i])
  redis.call('HDEL', KEYS[2], expired[i])
end
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
local out = {}
for i = 1, #ids do
  table.insert(out, ids[i])
  table.insert(out, redis.call('HGET', KEYS[2], ids[i]) or '{}')
end
return out
"""


class Presence(History):
    """The presence half of :class:`~.backend.RedisBackend`."""

    def __init__(self) -> None:
        super().__init__()
        #: this process's members: room -> {connection id -> info as JSON}
        self._present: dict[str, dict[str, bytes]] = {}

    def _presence_keys(self, room: str) -> tuple[bytes, bytes]:
        channel = self._room_channel(room)
        tag = b"{" + hash_tag(channel) + b"}"
        return tag + b":pz:" + channel, tag + b":ph:" + channel

    async def presence_joined(self, room: str, conn_id: str, info: dict[str, Any]) -> None:
        """Record *conn_id* in *room* with *info* (``TypeError`` if *info* is not
        JSON); written now if Redis is up, else at the next refresh."""
        encoded = json.dumps(info, separators=(",", ":")).encode()
        self._present.setdefault(room, {})[conn_id] = encoded
        if self._rt.up:
            zset, hashed = self._presence_keys(room)
            try:
                await self._rt.client.eval(WRITE_SCRIPT, 2, zset, hashed, self._ttl_ms,
                                           conn_id, encoded)
            except FAILURES as exc:
                self._query_failed(exc)

    async def presence_left(self, room: str, conn_id: str) -> None:
        members = self._present.get(room)
        if members is not None:
            members.pop(conn_id, None)
            if not members:
                del self._present[room]
        if self._rt.up and not self._rt.closed:
            zset, hashed = self._presence_keys(room)
            try:
                pipe = self._rt.client.pipeline(transaction=False)
                pipe.zrem(zset, conn_id)
                pipe.hdel(hashed, conn_id)
                await pipe.execute()
            except FAILURES as exc:
                self._query_failed(exc)

    async def presence(self, room: str) -> dict[str, dict[str, Any]] | None:
        """Members of *room* in every live process; None if Redis cannot answer."""
        if self._rt.closed or self._rt.loop is None:
            return None
        await self._wait_first_attempt()
        if not self._rt.up:
            return None
        zset, hashed = self._presence_keys(room)
        try:
            reply = await self._rt.client.eval(READ_SCRIPT, 2, zset, hashed)
        except FAILURES as exc:
            self._query_failed(exc)
            return None
        out: dict[str, dict[str, Any]] = {}
        for i in range(0, len(reply), 2):
            try:
                out[_text(reply[i])] = json.loads(reply[i + 1])
            except ValueError:
                self._stats["bad_messages"] += 1
        return out

    async def _heartbeat(self) -> None:
        await super()._heartbeat()
        await self._refresh_presence()

    async def _refresh_presence(self) -> None:
        """Push every local member's expiry ``ttl`` ahead (and rewrite it, should
        Redis have lost it)."""
        if not self._present:
            return
        pipe = self._rt.client.pipeline(transaction=False)
        for room, members in self._present.items():
            zset, hashed = self._presence_keys(room)
            items = list(members.items())
            for start in range(0, len(items), 500):
                args: list[Any] = []
                for conn_id, encoded in items[start:start + 500]:
                    args += [conn_id, encoded]
                pipe.eval(WRITE_SCRIPT, 2, zset, hashed, self._ttl_ms, *args)
        await pipe.execute()

    async def _forget_presence(self) -> None:
        """On close: remove this process's members (they would expire anyway)."""
        present, self._present = self._present, {}
        if not present:
            return
        try:
            pipe = self._rt.client.pipeline(transaction=False)
            for room, members in present.items():
                zset, hashed = self._presence_keys(room)
                pipe.zrem(zset, *members)
                pipe.hdel(hashed, *members)
            await pipe.execute()
        except FAILURES as exc:
            logger.info("redis backend: could not remove presence on close (%s)", exc)
