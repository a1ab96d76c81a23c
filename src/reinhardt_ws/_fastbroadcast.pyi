# Type stub of the compiled module built from src/_fastbroadcast.pyx.
# Its interface is exactly that of reinhardt_ws._fastbroadcast_py (the Python twin),
# plus Listener, whose twin is reinhardt_ws._listener.ConnectionListener.
import asyncio
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from picows import WSListener

__all__ = ["DELIVERED", "DROPPED", "FAILED", "IMPLEMENTATION", "PICOWS_VERSION", "Hub",
           "Listener", "Peer", "build_frame"]

IMPLEMENTATION: Final[str]
PICOWS_VERSION: Final[str]
DELIVERED: Final[int]
DROPPED: Final[int]
FAILED: Final[int]

def build_frame(opcode: int, payload: bytes) -> bytes: ...

class Peer:
    conn_id: str
    max_write_buffer: int
    pending_size: int
    drop_slow: bool
    paused: bool
    closed: bool
    failed: bool
    over_limit: bool
    def __init__(
        self,
        hub: Hub,
        transport: Any,
        ws: Any,
        fd: int,
        conn_id: str,
        max_write_buffer: int,
        drop_slow: bool,
        on_overflow: Callable[[], object],
        on_failure: Callable[[BaseException | None], object],
    ) -> None: ...
    def send(self, frame: bytes) -> int: ...
    def push(self, frame: bytes) -> int: ...
    def buffered_size(self) -> int: ...
    def flush(self) -> None: ...
    def write_now(self, frame: bytes | None = None) -> None: ...
    def close(self) -> None: ...
    def discard(self) -> None: ...
    def pause_writing(self) -> None: ...
    def resume_writing(self) -> None: ...

class Hub:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None: ...
    @property
    def loop(self) -> asyncio.AbstractEventLoop | None: ...  # None once collected
    def flush(self) -> None: ...
    def fanout(
        self,
        peers: Mapping[Any, Peer] | Iterable[Peer],
        frame: bytes,
        exclude: frozenset[str] | None = None,
        flush_interval: float = 0.0,
    ) -> tuple[int, int, list[str]]: ...
    def stats(self) -> dict[str, int]: ...

class Listener(WSListener):
    conn: Any
    def __init__(self, conn: Any) -> None: ...
