"""The supervisor: connect, stay up (heartbeats, pruning of dead processes),
notice failures, tear down and reconnect with backoff."""

from __future__ import annotations

import asyncio
import contextlib
import random

from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .core import _describe, _safe_url, logger
from .membership import Membership

__all__ = ["Supervisor"]


class Supervisor(Membership):
    """The connection's life cycle, run by one task per bound loop."""

    async def _supervise(self) -> None:
        delay = self.backoff_min
        attempt = 0
        while not self._rt.closed:
            attempt += 1
            self._rt.failure.clear()
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
                self._rt.first_attempt.set()
                if self._rt.down_since is None and self._rt.loop is not None:
                    self._rt.down_since = self._rt.loop.time()
                await self._teardown()
                await asyncio.sleep(random.uniform(delay / 2, delay))
                delay = min(delay * 2, self.backoff_max)
                continue
            delay = self.backoff_min
            attempt = 0
            self._rt.first_attempt.set()
            try:
                await self._stay_up()
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                self._fail(exc, "heartbeat")
            self._rt.up = False
            await self._teardown()
            await asyncio.sleep(random.uniform(delay / 2, delay))

    async def _connect(self) -> None:
        """Connect, subscribe to everything this process needs and rewrite its
        state in Redis; then deliver and publish again."""
        client = self._rt.client
        self._rt.connecting = True
        try:
            if self.cluster and self._rt.ever_up:
                # Slots may have moved (that is one way to get here): reload the map.
                await asyncio.wait_for(client.nodes_manager.initialize(),
                                       self.connect_timeout + self.command_timeout)
            await asyncio.wait_for(client.ping(), self.connect_timeout + self.command_timeout)
            if not self.cluster:
                pool = client.connection_pool
                kwargs = dict(pool.connection_kwargs, protocol=2, retry=Retry(NoBackoff(), 0))
                kwargs.pop("response_callbacks", None)
                self._rt.publisher_conn = pool.connection_class(**kwargs)
                await asyncio.wait_for(self._rt.publisher_conn.connect(),
                                       self.connect_timeout + self.command_timeout)
            await self._subscribe_channels([self._ch_all, self._ch_self])
            rooms = await self._rewrite_state()
            if self._rt.failure is not None and self._rt.failure.is_set():
                raise ConnectionError("lost the connection while connecting")
        finally:
            self._rt.connecting = False
        self._rt.up = True
        if self._rt.ever_up:
            self._stats["reconnects"] += 1
            loop = self._rt.loop
            down = (loop.time() - self._rt.down_since) if loop and self._rt.down_since else 0.0
            logger.warning("redis backend: reconnected after %.1fs; resubscribed %d rooms; "
                           "%d publication(s) were dropped during the outage",
                           down, rooms, self._rt.dropped_in_outage)
        else:
            logger.info("redis backend: connected (process %s)", self.process_id)
        self._rt.ever_up = True
        self._rt.down_since = None
        self._rt.dropped_in_outage = 0
        self._rt.flush_wake.set()  # whatever changed while connecting

    async def _stay_up(self) -> None:
        failure = self._rt.failure
        assert self._rt.loop is not None
        while not failure.is_set():
            with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
                await asyncio.wait_for(failure.wait(), self.heartbeat_interval)
                return
            await self._heartbeat()

    async def _heartbeat(self) -> None:
        loop = self._rt.loop
        assert loop is not None
        now = loop.time()
        limit = 2 * self.heartbeat_interval + self.command_timeout
        for sub in list(self._rt.subscribers.values()):
            if now - sub.last_seen > limit:
                raise ConnectionError(
                    f"subscriber {sub.name} silent for {now - sub.last_seen:.1f}s")
            await sub.ping()
        pipe = self._rt.client.pipeline(transaction=False)
        pipe.set(self._k_alive, b"1", px=self._ttl_ms, get=True)
        pipe.pexpire(self._k_rooms, self._ttl_ms)
        pipe.pexpire(self._k_conns, self._ttl_ms)
        pipe.sadd(self._k_procs, self.process_id)
        previous, _rooms, _conns, _added = await pipe.execute()
        if previous is None:
            # Our keys expired (a stall longer than ttl) or Redis lost them: the
            # flusher rewrites them.
            logger.warning("redis backend: this process's keys had expired; re-registering")
            self._rt.need_resync = True
            self._rt.flush_wake.set()
        self._rt.beats += 1
        if self._rt.beats % 5 == 1:
            await self._prune()

    async def _prune(self) -> None:
        """Forget ids of processes whose liveness key expired (they come back by
        themselves if they were only cut off)."""
        others = await self._other_processes()
        if not others:
            return
        alive = await self._per_process(others,
                                        lambda pipe, pid: pipe.exists(self._key(pid, "alive")))
        dead = [pid for pid, ok in zip(others, alive, strict=True) if not ok]
        if dead:
            await self._rt.client.srem(self._k_procs, *dead)
            logger.info("redis backend: pruned %d expired process id(s)", len(dead))

    async def _close_publisher(self) -> None:
        conn, self._rt.publisher_conn = self._rt.publisher_conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.disconnect()

    async def _teardown(self) -> None:
        self._rt.up = False
        self._drop_outbox()
        await self._close_publisher()
        await self._close_subscribers()
        self._rt.room_of.clear()
        pool = getattr(self._rt.client, "connection_pool", None)
        if pool is not None:
            with contextlib.suppress(Exception):
                await pool.disconnect()
        self._release_waiters()
