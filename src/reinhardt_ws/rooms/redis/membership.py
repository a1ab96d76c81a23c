"""Membership and counts: this process's rooms and connections as Redis sees
them (written by one flusher task), and the queries over every process's state."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from redis.exceptions import ResponseError

from ..envelope import KIND_DIRECT, pack_envelope
from .core import FAILURES, _text
from .publishing import Publishing

__all__ = ["Membership"]


class Membership(Publishing):
    """Local counts, their flush to Redis, and the questions asked of the others."""

    # -- the Backend protocol: membership ----------------------------------------
    async def joined(self, room: str, conn_id: str) -> None:
        self._room_count[room] = self._room_count.get(room, 0) + 1
        self._conn_count[conn_id] = self._conn_count.get(conn_id, 0) + 1
        self._dirty_rooms.add(room)
        self._dirty_conns.add(conn_id)
        await self._sync()

    async def left(self, room: str, conn_id: str) -> None:
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
        event = self._rt.first_attempt
        if self._rt.loop is None or event.is_set() or self._rt.closed:
            return
        with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
            await asyncio.wait_for(event.wait(), self.connect_timeout + self.command_timeout)

    async def _sync(self) -> None:
        """Return once Redis reflects this process's membership as of now (or at
        once while Redis is unreachable: the reconnection rewrites it)."""
        if self._rt.closed or self._rt.loop is None:
            return
        await self._wait_first_attempt()
        if not self._rt.up:
            return
        fut: asyncio.Future[None] = self._rt.loop.create_future()
        self._rt.flush_waiters.append(fut)
        self._rt.flush_wake.set()
        await asyncio.shield(fut)  # a cancelled caller does not cancel the flush

    def _release_waiters(self) -> None:
        waiters, self._rt.flush_waiters = self._rt.flush_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def _flusher(self) -> None:
        wake = self._rt.flush_wake
        while not self._rt.closed:
            await wake.wait()
            wake.clear()
            while self._rt.flush_waiters or (self._rt.up and (
                    self._dirty_rooms or self._dirty_conns or self._rt.need_resync)):
                waiters, self._rt.flush_waiters = self._rt.flush_waiters, []
                try:
                    if self._rt.up and self._rt.need_resync:
                        self._rt.need_resync = False
                        await self._rewrite_state()
                    if self._rt.up:
                        rooms, self._dirty_rooms = self._dirty_rooms, set()
                        conns, self._dirty_conns = self._dirty_conns, set()
                        await self._write_membership(rooms, conns)
                except FAILURES as exc:
                    self._fail(exc, "membership update")
                finally:
                    for fut in waiters:
                        if not fut.done():
                            fut.set_result(None)
                if not self._rt.up or self._rt.closed:
                    break

    async def _write_membership(self, rooms: set[str], conns: set[str]) -> None:
        counts = self._room_count
        present = [r for r in rooms if r in counts]
        gone = [r for r in rooms if r not in counts]
        # Subscribed before counted: whoever sees the count can reach the member.
        await self._subscribe_rooms(present)
        pipe = self._rt.client.pipeline(transaction=False)
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

    async def _rewrite_state(self) -> int:
        """Subscribe to every local room and replace this process's keys with the
        local truth (one MULTI: readers never see half of it).  The dirty marks
        stay: the flusher writes them again, so nothing written concurrently from
        an older view can win.  Returns the number of rooms."""
        rooms = {r: n for r, n in self._room_count.items() if n > 0}
        conns = [c for c, n in self._conn_count.items() if n > 0]
        await self._subscribe_rooms(list(rooms))
        pipe = self._rt.client.pipeline(transaction=True)  # one slot: the keys share a tag
        pipe.delete(self._k_rooms, self._k_conns)
        if rooms:
            pipe.hset(self._k_rooms, mapping=rooms)
        for start in range(0, len(conns), 10000):
            pipe.sadd(self._k_conns, *conns[start:start + 10000])
        pipe.pexpire(self._k_rooms, self._ttl_ms)
        pipe.pexpire(self._k_conns, self._ttl_ms)
        pipe.set(self._k_alive, b"1", px=self._ttl_ms)
        await pipe.execute()
        await self._rt.client.sadd(self._k_procs, self.process_id)
        return len(rooms)

    # -- the Backend protocol: queries ----------------------------------------------
    async def _other_processes(self) -> list[str]:
        members = await self._rt.client.smembers(self._k_procs)
        mine = self.process_id
        return sorted(p for p in (_text(m) for m in members) if p != mine)

    def _query_failed(self, exc: BaseException) -> None:
        self._stats["failed_queries"] += 1
        if not isinstance(exc, ResponseError):  # the connection, not the command, failed
            self._fail(exc, "query")

    async def _per_process(self, pids: list[str],
                           ask: Callable[[Any, str], object]) -> list[Any]:
        """One pipeline: ``ask(pipe, pid)`` for each of *pids*; their replies in order."""
        pipe = self._rt.client.pipeline(transaction=False)
        for pid in pids:
            ask(pipe, pid)
        return list(await pipe.execute())

    async def _ask_others(self, ask: Callable[[Any, str], object]
                          ) -> list[tuple[str, Any]] | None:
        """Ask every other process's keys one question (``ask(pipe, pid)`` queues
        it on a pipeline): ``[(pid, reply), ...]``, empty when this process is
        alone; None when Redis cannot answer now (unbound, closed, unreachable,
        or the query failed, which is counted)."""
        rt = self._rt
        if rt.closed or rt.loop is None:
            return None
        await self._wait_first_attempt()
        if not rt.up:
            return None
        try:
            others = await self._other_processes()
            replies = await self._per_process(others, ask) if others else []
        except FAILURES as exc:
            self._query_failed(exc)
            return None
        return list(zip(others, replies, strict=True))

    async def room_size(self, room: str) -> int:
        """Members of *room* in every live process (this process's alone while
        Redis is unreachable)."""
        local = self._room_count.get(room, 0)
        answers = await self._ask_others(
            lambda pipe, pid: pipe.hget(self._key(pid, "rooms"), room))
        return local + sum(int(count) for _pid, count in answers or () if count)

    async def list_rooms(self) -> list[str]:
        """Rooms with a member in any live process, sorted."""
        rooms = set(self._room_count)
        answers = await self._ask_others(lambda pipe, pid: pipe.hkeys(self._key(pid, "rooms")))
        for _pid, names in answers or ():
            rooms.update(_text(n) for n in names or ())
        return sorted(rooms)

    async def send_to(self, conn_id: str, frame: bytes) -> bool:
        """Hand *frame* to the process that has *conn_id*; True once Redis passed it
        to that process (it may have closed the connection meanwhile)."""
        loop = self._rt.loop
        if self._rt.closed or loop is None:
            return False
        answers = await self._ask_others(
            lambda pipe, pid: pipe.sismember(self._key(pid, "conns"), conn_id))
        if answers is None:
            self._drop(1, "send_to")
            return False
        target = next((pid for pid, hit in answers if hit), None)
        if target is None:
            return False
        fut: asyncio.Future[Any] = loop.create_future()
        envelope = pack_envelope(KIND_DIRECT, self._origin, (conn_id,), frame)
        if not self._enqueue(self._proc_channel(target), envelope, fut):
            return False
        return int(await fut) > 0
