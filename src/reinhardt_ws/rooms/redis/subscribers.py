"""Pub/sub: one dedicated subscriber connection per Redis node, the channels each
holds, and what arrives on them (envelopes handed to the manager's fan-out)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .._compression import inflate_carried
from ..envelope import (
    KIND_ALL,
    KIND_DIRECT,
    KIND_HISTORY,
    KIND_ROOM,
    OFFSET,
    Envelope,
    origin_of,
    unpack_envelope,
)
from .core import Core, _stop_tasks, logger

__all__ = ["Subscriber", "Subscriptions"]


class Subscriber:
    """One dedicated pub/sub connection and the task that reads it."""

    def __init__(self, backend: Subscriptions, conn: Any, name: str) -> None:
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


class Subscriptions(Core):
    """The subscriber connections of one backend and the channels they hold."""

    # -- subscribing --------------------------------------------------------------
    async def _subscriber_for(self, channel: bytes) -> Subscriber:
        if not (self._rt.up or self._rt.connecting):
            raise ConnectionError("redis backend is not connected")
        if self.cluster:
            node = self._rt.client.get_node_from_key(channel)
            name, source = str(node.name), node
        else:
            name, source = "main", self._rt.client.connection_pool
        sub = self._rt.subscribers.get(name)
        if sub is not None:
            return sub
        async with self._rt.subscriber_lock:  # one connection per node, used once started
            sub = self._rt.subscribers.get(name)
            if sub is None:
                sub = await self._new_subscriber(source.connection_class,
                                                 dict(source.connection_kwargs), name)
            return sub

    async def _new_subscriber(self, connection_class: Any, kwargs: dict[str, Any],
                              name: str) -> Subscriber:
        # A blocking reader: no socket timeout; the heartbeat's PING watches it.
        kwargs.update(socket_timeout=None, protocol=2, retry=Retry(NoBackoff(), 0))
        kwargs.pop("response_callbacks", None)
        sub = Subscriber(self, connection_class(**kwargs), name)
        try:
            await asyncio.wait_for(sub.start(), self.connect_timeout + self.command_timeout)
        except BaseException:
            await sub.close()
            raise
        self._rt.subscribers[name] = sub
        return sub

    async def _subscribe_channels(self, channels: Sequence[bytes]) -> None:
        if not channels:
            return
        groups: dict[str, tuple[Subscriber, list[bytes]]] = {}
        for channel in channels:
            sub = await self._subscriber_for(channel)
            groups.setdefault(sub.name, (sub, []))[1].append(channel)
        await asyncio.gather(*(sub.subscribe(chs, self.command_timeout)
                               for sub, chs in groups.values()))

    async def _subscribe_rooms(self, rooms: Sequence[str]) -> None:
        channels = []
        for room in rooms:
            channel = self._room_channel(room)
            self._rt.room_of[channel] = room
            channels.append(channel)
        await self._subscribe_channels(channels)

    async def _unsubscribe_channels(self, channels: Sequence[bytes]) -> None:
        for channel in channels:
            self._rt.room_of.pop(channel, None)
            for sub in self._rt.subscribers.values():
                if channel in sub.channels:
                    await sub.unsubscribe([channel])

    async def _close_subscribers(self) -> None:
        subs, self._rt.subscribers = list(self._rt.subscribers.values()), {}
        for sub in subs:
            await sub.close()

    # -- incoming -------------------------------------------------------------------
    def _on_push(self, sub: Subscriber, message: Any) -> None:
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
        try:
            own = origin_of(data) == self._origin
            if own and data[OFFSET["kind"]] != KIND_HISTORY:
                return  # our own: delivered locally when it was published
            envelope = unpack_envelope(data)
        except ValueError as exc:
            self._bad_message(channel, str(exc))
            return
        manager = self._rt.manager
        if manager is None:
            return
        self._stats["received"] += 1
        kind, frame = envelope.kind, envelope.frame
        if kind == KIND_HISTORY:
            self._on_history(channel, envelope, own)
            return
        compressed = None
        if envelope.deflate is not None:
            if kind != KIND_ROOM and kind != KIND_ALL:
                self._bad_message(channel, f"a compressed envelope of kind {kind}")
                return
            try:
                frame, compressed = inflate_carried(envelope.deflate, frame)
            except ValueError as exc:
                self._bad_message(channel, str(exc))
                return
        if kind == KIND_ROOM:
            room = self._rt.room_of.get(channel)
            if room is not None:
                manager.deliver_local(room, frame, frozenset(envelope.ids), compressed)
        elif kind == KIND_ALL:
            manager.deliver_local(None, frame, frozenset(envelope.ids), compressed)
        elif kind == KIND_DIRECT:
            for conn_id in envelope.ids:
                manager.deliver_to_local(conn_id, frame)
        else:
            self._bad_message(channel, f"unknown kind {kind}")

    def _on_history(self, channel: bytes, envelope: Envelope, own: bool) -> None:
        """A stored publication (see :mod:`.history`, which overrides this)."""
        self._bad_message(channel, "a stored publication without history")

    def _bad_message(self, channel: bytes, why: str) -> None:
        """Count and log a message from Redis that is not delivered because it is
        not a sound envelope: a warning for the first and then at most one per
        10 s, the others at debug level (a flood cannot flood the log)."""
        self._stats["bad_messages"] += 1
        loop = self._rt.loop
        now = loop.time() if loop is not None else 0.0
        level = logging.DEBUG
        if self._stats["bad_messages"] == 1 or now - self._rt.last_bad_log >= 10.0:
            self._rt.last_bad_log = now
            level = logging.WARNING
        logger.log(level, "redis backend: ignoring a message on %r that is not a sound "
                   "reinhardt-ws envelope (%s); %d ignored so far", channel, why,
                   self._stats["bad_messages"])
