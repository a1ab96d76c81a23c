"""Room history in Redis Streams: one Lua script appends a publication to its
room's stream and publishes it to every process, so the order of the stream, the
offsets and the order of delivery agree everywhere; another reads a gap back.

Per history room (``policy.applies(room)``), next to its pub/sub channel ``C``
(``{prefix}:room:{room}``) and in its cluster slot (hash tag ``T``, the one Redis
computes for ``C``): ``{T}:m:C``, a hash with the room's ``e``poch and top
``o``ffset (kept ``policy.position_ttl`` after the last publication), and
``{T}:s:C``, the stream (entry id ``<offset>-0``, field ``f``: the frame; at most
``policy.size`` entries, the whole stream expiring ``policy.ttl`` after the last
publication).  A new epoch is drawn whenever the hash is missing: Redis lost
the room's history (restart without persistence, eviction, ``DEL``), so offsets
start again and no old position can be mistaken for a new one.

Every process, the publishing one included, delivers a stored publication when
it arrives on the room's channel (kind ``KIND_HISTORY``), in the order Redis ran
the scripts.  The publishing process's ``broadcast()`` waits for the script's
reply (the position) and, when it has members in the room, for its own copy.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from .._compression import Carried, inflate_carried
from ..envelope import KIND_HISTORY, Envelope, pack_envelope
from ..history import HistoryPolicy, HistoryResult, Position, Publication, new_epoch
from .core import FAILURES, _text
from .supervisor import Supervisor

if TYPE_CHECKING:
    from ..manager import BroadcastResult

__all__ = ["History", "hash_tag"]

#: KEYS: meta, stream.  ARGV: fresh epoch, maxlen, stream ttl ms, meta ttl ms,
#: frame, channel, envelope head, publish command, nonce, the byte indexes of
#: the offset and epoch marks ('' for none), and what to publish instead of the
#: frame ('' for the frame itself: the deflate payload of a compressed envelope;
#: the stream always stores the plain frame, which replays send).  Returns
#: {offset, epoch}.
PUBLISH_SCRIPT = """
local meta, stream = KEYS[1], KEYS[2]
local epoch = redis.call('HGET', meta, 'e')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', stream)
  redis.call('HSET', meta, 'e', epoch)
end
local offset = redis.call('HINCRBY', meta, 'o', 1)
local frame = ARGV[5]
if ARGV[10] ~= '' and string.len(epoch) == 8 then
  local i, j = tonumber(ARGV[10]), tonumber(ARGV[11])
  frame = string.sub(frame, 1, i) .. string.format('%20d', offset) .. string.sub(frame, i + 21)
  frame = string.sub(frame, 1, j) .. epoch .. string.sub(frame, j + 9)
end
redis.call('XADD', stream, 'MAXLEN', ARGV[2], offset .. '-0', 'f', frame)
redis.call('PEXPIRE', stream, ARGV[3])
redis.call('PEXPIRE', meta, ARGV[4])
local body = frame
if ARGV[12] ~= '' then body = ARGV[12] end
redis.call(ARGV[8], ARGV[6], ARGV[7] .. offset .. ' ' .. epoch .. ' ' .. ARGV[9] .. ' ' .. body)
return {offset, epoch}
"""

#: KEYS: meta, stream.  ARGV: fresh epoch, meta ttl ms, since offset (-1: none),
#: since epoch, limit (-1: none).  Returns {epoch, top, complete, id, frame, ...}.
READ_SCRIPT = """
local meta, stream = KEYS[1], KEYS[2]
local epoch = redis.call('HGET', meta, 'e')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', stream)
  redis.call('HSET', meta, 'e', epoch, 'o', 0)
  redis.call('PEXPIRE', meta, ARGV[2])
end
local top = tonumber(redis.call('HGET', meta, 'o') or '0')
local since, limit = tonumber(ARGV[3]), tonumber(ARGV[5])
local out = {epoch, top, 1}
local entries
if since < 0 then
  if limit == 0 then return out end
  if limit > 0 then
    entries = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', limit)
  else
    entries = redis.call('XREVRANGE', stream, '+', '-')
  end
  for i = #entries, 1, -1 do
    table.insert(out, entries[i][1])
    table.insert(out, entries[i][2][2])
  end
  return out
end
local missing = top - since
if ARGV[4] ~= epoch or missing < 0 then out[3] = 0 return out end
if missing == 0 then return out end
if limit >= 0 and missing > limit then out[3] = 0 return out end
entries = redis.call('XRANGE', stream, (since + 1) .. '-0', '+', 'COUNT', missing)
if #entries ~= missing or entries[1][1] ~= (since + 1) .. '-0' then
  out[3] = 0
  return out
end
for i = 1, #entries do
  table.insert(out, entries[i][1])
  table.insert(out, entries[i][2][2])
end
return out
"""


def hash_tag(key: bytes) -> bytes:
    """The part of *key* Redis Cluster hashes: the first non-empty ``{...}``, or
    the whole key."""
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            return key[start + 1:end]
    return key


class History(Supervisor):
    """The history half of :class:`~.backend.RedisBackend`."""

    def __init__(self) -> None:
        super().__init__()
        self._history_policy: HistoryPolicy | None = None
        self._nonce = 0
        #: broadcasts of this process waiting for their own copy, by nonce
        self._echo_waiters: dict[int, asyncio.Future[BroadcastResult]] = {}
        #: ... and the frames they carry when published compressed (their own
        #: copy then needs no inflating)
        self._echo_frames: dict[int, tuple[bytes, Carried]] = {}

    def use_history(self, policy: HistoryPolicy) -> None:
        """Keep *policy*'s rooms' history in Redis (called by the manager)."""
        self._history_policy = policy

    def _history_keys(self, channel: bytes) -> tuple[bytes, bytes]:
        tag = b"{" + hash_tag(channel) + b"}"
        return tag + b":m:" + channel, tag + b":s:" + channel

    async def publish_history(self, room: str, frame: bytes, exclude: frozenset[str],
                              marks: tuple[int, int] | None = None,
                              compressed: Carried | None = None
                              ) -> tuple[Position | None, BroadcastResult | None]:
        """Store *frame* and publish it to every process (this one included):
        its position, and what this process's fan-out did with it.  ``(None,
        None)`` when Redis cannot take it (the caller delivers it locally only).
        With *compressed* (not with *marks*: the store stamps those) the stream
        keeps the plain frame and the processes receive the deflate payload."""
        policy = self._history_policy
        loop = self._rt.loop
        if policy is None or loop is None or self._rt.closed:
            return None, None
        await self._wait_first_attempt()
        channel = self._room_channel(room)
        meta, stream = self._history_keys(channel)
        self._nonce += 1
        nonce = self._nonce
        if marks is not None:
            compressed = None
        head = pack_envelope(KIND_HISTORY, self._origin, exclude, b"",
                             None if compressed is None else compressed.deflate)
        body = b"" if compressed is None else compressed.payload
        subscribed = channel in self._rt.room_of
        echo: asyncio.Future[BroadcastResult] | None = None
        if subscribed:
            echo = self._echo_waiters[nonce] = loop.create_future()
            if compressed is not None:
                self._echo_frames[nonce] = (frame, compressed)
        reply: asyncio.Future[Any] = loop.create_future()
        args = ("EVAL", PUBLISH_SCRIPT, 2, meta, stream, new_epoch(), policy.size,
                max(1, int(policy.ttl * 1000)), max(1, int(policy.position_ttl * 1000)),
                frame, channel, head, self._publish_command, nonce,
                "" if marks is None else marks[0], "" if marks is None else marks[1], body)
        try:
            if not self._enqueue_command(args, len(frame) + len(head) + len(body) + 64, reply):
                return None, None
            answer = await reply
            if not isinstance(answer, list):  # dropped: the connection broke
                return None, None
            position = Position(_text(answer[1]), int(answer[0]))
            if echo is None:
                from ..manager import BroadcastResult

                return position, BroadcastResult()
            try:
                result = await asyncio.wait_for(asyncio.shield(echo), self.command_timeout)
            except (asyncio.TimeoutError, TimeoutError):
                from ..manager import BroadcastResult

                result = BroadcastResult()
            return position, result
        finally:
            self._echo_waiters.pop(nonce, None)
            self._echo_frames.pop(nonce, None)

    def _on_history(self, channel: bytes, envelope: Envelope, own: bool) -> None:
        manager = self._rt.manager
        room = self._rt.room_of.get(channel)
        if manager is None or room is None:
            return
        try:
            offset, epoch, raw_nonce, frame = envelope.frame.split(b" ", 3)
            at = Position(epoch.decode("ascii"), int(offset))
            nonce = int(raw_nonce)
        except ValueError:
            self._bad_message(channel, "a stored publication without its position")
            return
        compressed = None
        if envelope.deflate is not None:
            mine = self._echo_frames.pop(nonce, None) if own else None
            if mine is not None:
                frame, compressed = mine
            else:
                try:
                    frame, compressed = inflate_carried(envelope.deflate, frame)
                except ValueError as exc:
                    self._bad_message(channel, str(exc))
                    return
        result = manager.deliver_history(room, at, frame, frozenset(envelope.ids), compressed)
        if own:
            waiter = self._echo_waiters.get(nonce)
            if waiter is not None and not waiter.done():
                waiter.set_result(result)

    async def read_history(self, room: str, since: Position | None,
                           limit: int | None) -> HistoryResult | None:
        """Read *room*'s stored publications (see ``RoomManager.history``); None
        when Redis cannot answer now."""
        policy = self._history_policy
        if policy is None or self._rt.closed or self._rt.loop is None:
            return None
        await self._wait_first_attempt()
        if not self._rt.up:
            return None
        meta, stream = self._history_keys(self._room_channel(room))
        try:
            reply = await self._rt.client.eval(
                READ_SCRIPT, 2, meta, stream, new_epoch(),
                max(1, int(policy.position_ttl * 1000)),
                -1 if since is None else since.offset,
                "" if since is None else since.epoch,
                -1 if limit is None else limit)
        except FAILURES as exc:
            self._query_failed(exc)
            return None
        epoch, top, complete = _text(reply[0]), int(reply[1]), bool(int(reply[2]))
        position = Position(epoch, top)
        if not complete:
            return HistoryResult((), position, complete=False)
        items = reply[3:]
        publications = tuple(
            Publication(int(_text(items[i]).partition("-")[0]), bytes(items[i + 1]))
            for i in range(0, len(items), 2))
        return HistoryResult(publications, position)
