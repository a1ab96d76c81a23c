"""Publishing: the bounded outbox and the task that pipelines it to Redis."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from ..envelope import KIND_ALL, KIND_ROOM, pack_envelope
from .subscribers import Subscriptions

if TYPE_CHECKING:
    from .._compression import Carried

__all__ = ["Publishing"]


class Publishing(Subscriptions):
    """Queue publications, send them in batches, count what cannot be sent."""

    async def publish(self, room: str | None, frame: bytes, exclude: frozenset[str],
                      compressed: Carried | None = None) -> None:
        """Queue *frame* for the other processes; never waits for Redis, never
        raises because of it (a publication that cannot be made is counted).
        With *compressed* (the manager compressed it with
        :attr:`cluster_compressor`), only the deflate payload is published
        (envelope version 2): each receiver inflates it once and sends those
        bytes as they are to its members whose parameters allow."""
        kind = KIND_ALL if room is None else KIND_ROOM
        channel = self._ch_all if room is None else self._room_channel(room)
        if compressed is None:
            self._enqueue(channel, pack_envelope(kind, self._origin, exclude, frame))
        else:
            self._enqueue(channel, pack_envelope(kind, self._origin, exclude,
                                                 compressed.payload, compressed.deflate))

    def _enqueue(self, channel: bytes, envelope: bytes,
                 fut: asyncio.Future[Any] | None = None) -> bool:
        return self._enqueue_command((self._publish_command, channel, envelope),
                                     len(envelope), fut)

    def _enqueue_command(self, args: tuple[Any, ...], size: int,
                         fut: asyncio.Future[Any] | None = None) -> bool:
        """Queue one command for the publisher (in order with every publication of
        this process); False, counted as dropped, if it cannot be sent."""
        if not self._rt.up:
            self._drop(1, "not connected")
            return False
        if self._rt.outbox_bytes + size > self.max_pending_bytes:
            self._drop(1, f"over max_pending_bytes ({self.max_pending_bytes})")
            return False
        self._rt.outbox.append((args, size, fut))
        self._rt.outbox_bytes += size
        self._rt.publish_wake.set()
        return True

    def _drop_outbox(self) -> None:
        batch, self._rt.outbox = self._rt.outbox, []
        self._rt.outbox_bytes = 0
        if batch:
            self._drop(len(batch), "redis connection lost")
        for _args, _size, fut in batch:
            if fut is not None and not fut.done():
                fut.set_result(0)

    async def _publisher(self) -> None:
        wake = self._rt.publish_wake
        while not self._rt.closed:
            await wake.wait()
            wake.clear()
            while self._rt.outbox:
                if not self._rt.up:
                    self._drop_outbox()
                    break
                batch = self._rt.outbox[:1024]
                del self._rt.outbox[:1024]
                self._rt.outbox_bytes -= sum(size for _a, size, _f in batch)
                try:
                    receivers = await self._publish_batch(batch)
                except Exception as exc:  # a half-read reply stream is a broken one too
                    self._drop(len(batch), "redis connection lost while publishing")
                    for _args, _size, fut in batch:
                        if fut is not None and not fut.done():
                            fut.set_result(0)
                    self._fail(exc, "publish")
                    if self._rt.closed:
                        return
                    continue
                self._stats["published"] += len(batch)
                for (_args, _size, fut), reply in zip(batch, receivers, strict=True):
                    if fut is not None and not fut.done():
                        fut.set_result(reply if isinstance(reply, list) else int(reply or 0))

    async def _publish_batch(self, batch: list[tuple[tuple[Any, ...], int, Any]]) -> list[Any]:
        conn = self._rt.publisher_conn
        if conn is None:  # a cluster: the client's pipeline routes each to its shard
            pipe = self._rt.client.pipeline(transaction=False)
            for args, _size, _fut in batch:
                pipe.execute_command(*args)
            return list(await pipe.execute())
        # One write, then the replies in order: cheaper than a redis-py pipeline.
        packed = conn.pack_commands([args for args, _size, _fut in batch])
        await conn.send_packed_command(packed, check_health=False)
        return [await conn.read_response() for _ in batch]
