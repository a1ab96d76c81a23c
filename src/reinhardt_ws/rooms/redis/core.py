"""What every part of :class:`~.backend.RedisBackend` shares: its options and
names, the per-loop runtime state, the counters, and the two failure paths
(``_fail``: the connection broke; ``_drop``: a publication was not sent)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

if TYPE_CHECKING:
    from ...protocol.extensions.permessage_deflate import SharedCompressor
    from ..manager import RoomManager
    from .subscribers import Subscriber

__all__: list[str] = []

logger = logging.getLogger("reinhardt_ws.redis")

MiB = 1024 * 1024

#: Errors that mean "Redis is not reachable (right now)".
FAILURES: tuple[type[BaseException], ...] = (RedisError, OSError, asyncio.TimeoutError,
                                             TimeoutError, EOFError)

#: One queued command (PUBLISH, or the history script that publishes), its size
#: in bytes, and who waits for its reply (0 when it was dropped).
Publication = tuple[tuple[Any, ...], int, "asyncio.Future[Any] | None"]


class Runtime:
    """The state that belongs to the event loop the backend is bound to: a new
    loop gets a new one (the old loop took its tasks and connections with it)."""

    def __init__(self, manager: RoomManager | None = None,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.manager = manager
        self.loop = loop
        self.client: Any = None
        self.subscribers: dict[str, Subscriber] = {}
        self.subscriber_lock = asyncio.Lock()
        self.room_of: dict[bytes, str] = {}  # subscribed room channel -> room
        self.publisher_conn: Any = None
        self.up = False
        self.ever_up = False
        self.closed = False
        self.connecting = False
        self.first_attempt = asyncio.Event()
        self.failure = asyncio.Event()
        self.flush_wake = asyncio.Event()
        self.publish_wake = asyncio.Event()
        self.flush_waiters: list[asyncio.Future[None]] = []
        self.outbox: list[Publication] = []
        self.outbox_bytes = 0
        self.tasks: list[asyncio.Task[None]] = []
        self.down_since: float | None = None
        self.dropped_in_outage = 0
        self.last_drop_log = -1e9
        self.last_bad_log = -1e9
        self.need_resync = False
        self.beats = 0


class Core:
    """Options, names, counters and the runtime; the layers build on it."""

    url: str
    prefix: str
    sharded: bool
    cluster: bool
    heartbeat_interval: float
    ttl: float
    command_timeout: float
    connect_timeout: float
    backoff_min: float
    backoff_max: float
    max_pending_bytes: int
    redis_options: dict[str, Any]
    process_id: str
    cluster_compressor: SharedCompressor | None

    def __init__(self) -> None:
        """Called once the options and ``process_id`` are set: every key and
        channel name derives from ``prefix`` and ``process_id``."""
        self._rt = Runtime()
        self._stats = dict.fromkeys(
            ("published", "dropped_publications", "received", "reconnects",
             "failed_queries", "bad_messages"), 0)
        # What this process has: the truth that Redis is brought back to.
        self._room_count: dict[str, int] = {}
        self._conn_count: dict[str, int] = {}
        self._dirty_rooms: set[str] = set()
        self._dirty_conns: set[str] = set()
        prefix, process_id = self.prefix, self.process_id
        self._origin = bytes.fromhex(process_id)
        self._ttl_ms = max(1, int(self.ttl * 1000))
        self._k_procs = f"{prefix}:procs"
        self._k_alive = self._key(process_id, "alive")
        self._k_rooms = self._key(process_id, "rooms")
        self._k_conns = self._key(process_id, "conns")
        self._room_prefix = f"{prefix}:room:".encode()
        self._ch_all = f"{prefix}:all".encode()
        self._ch_self = self._proc_channel(process_id)
        self._publish_command = "SPUBLISH" if self.sharded else "PUBLISH"

    # -- names --------------------------------------------------------------------
    def _key(self, process_id: str, what: str) -> str:
        # The hash tag keeps one process's keys on one cluster slot (MULTI works).
        return f"{self.prefix}:{{{process_id}}}:{what}"

    def _proc_channel(self, process_id: str) -> bytes:
        return f"{self.prefix}:proc:{process_id}".encode()

    def _room_channel(self, room: str) -> bytes:
        return self._room_prefix + room.encode("utf-8")

    # -- failures -----------------------------------------------------------------
    def _fail(self, exc: BaseException, where: str) -> None:
        if self._rt.closed or self._rt.loop is None:
            return
        if self._rt.up:
            logger.warning("redis backend: connection lost (%s: %s); local delivery "
                           "continues, reconnecting", where, _describe(exc))
            self._rt.up = False
            self._rt.down_since = self._rt.loop.time() if self._rt.loop is not None else 0.0
        self._rt.failure.set()

    def _drop(self, n: int, why: str) -> None:
        self._stats["dropped_publications"] += n
        if self._rt.down_since is not None:
            self._rt.dropped_in_outage += n
        loop = self._rt.loop
        now = loop.time() if loop is not None else 0.0
        if now - self._rt.last_drop_log >= 10.0:
            self._rt.last_drop_log = now
            logger.warning("redis backend: %d publication(s) not sent to other processes (%s); "
                           "%d dropped so far", n, why, self._stats["dropped_publications"])


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
