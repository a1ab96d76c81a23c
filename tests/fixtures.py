"""Shared harness for the tests: event loops, servers and raw sockets."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

import reinhardt_ws as rw

T = TypeVar("T")

LOOPS = ("asyncio", "uvloop")

#: The repository root (the directory holding ``tests/``).
ROOT = Path(__file__).resolve().parent.parent


def child_env(implementation: str, **overrides: str | None) -> dict[str, str]:
    """The environment of a child Python process that runs the fan-out
    *implementation* (``"cython"`` or ``"python"``): this process's environment,
    with REINHARDT_WS_NO_EXTENSIONS=1 for ``"python"`` and without it for
    ``"cython"`` (so a missing extension shows in the child); the repository
    root first on PYTHONPATH (the child can run ``python -m tests.redis_app``);
    PYTHONFAULTHANDLER=1 (a crashing or hung child dumps every thread's stack);
    and without PYTHONASYNCIODEBUG (asyncio's debug mode slows every callback of
    the server under test).  Then *overrides*: each sets a variable, or removes
    it when None.  An unknown *implementation* is a ValueError."""
    if implementation not in ("cython", "python"):
        raise ValueError(f"unknown implementation {implementation!r}")
    env = dict(os.environ)
    env.pop("PYTHONASYNCIODEBUG", None)
    if implementation == "python":
        env["REINHARDT_WS_NO_EXTENSIONS"] = "1"
    else:
        env.pop("REINHARDT_WS_NO_EXTENSIONS", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(ROOT), env.get("PYTHONPATH"))))
    env["PYTHONFAULTHANDLER"] = "1"
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def run_on(loop_kind: str, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    """Run *coro* to completion on a fresh loop of *loop_kind*, bounded in time."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    if loop_kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        return uvloop.run(bounded())  # type: ignore[no-any-return]
    return asyncio.run(bounded())


@pytest.fixture(params=LOOPS)
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, T]], T]:
    """``run(coro)``: run a coroutine on asyncio's loop, then (second param) uvloop."""
    kind = request.param

    def runner(coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return run_on(kind, coro, timeout)

    return runner


@contextlib.asynccontextmanager
async def running_server(handler: rw.WebSocketHandler, **options: Any
                         ) -> AsyncIterator[rw.Server]:
    """A server on 127.0.0.1 and a free port, closed afterwards."""
    options.setdefault("ping_interval", None)
    server = await rw.serve(handler, "127.0.0.1", 0, **options)
    try:
        yield server
    finally:
        await server.close(timeout=2)


def url_of(server: rw.Server, path: str = "/") -> str:
    return f"ws://127.0.0.1:{server.port}{path}"


class Recorder(rw.WebSocketHandler):
    """A handler that records every callback (and echoes if asked)."""

    def __init__(self, echo: bool = False) -> None:
        self.echo = echo
        self.events: list[tuple[str, str, Any]] = []
        self.connected: asyncio.Queue[rw.WebSocketConnection] = asyncio.Queue()
        self.disconnected: asyncio.Queue[rw.WebSocketConnection] = asyncio.Queue()

    async def on_connect(self, conn: rw.WebSocketConnection) -> None:
        self.events.append(("connect", conn.id, None))
        self.connected.put_nowait(conn)

    async def on_message(self, conn: rw.WebSocketConnection, message: rw.Message) -> None:
        self.events.append(("message", conn.id, message))
        if self.echo:
            await conn.send(message)

    async def on_disconnect(self, conn: rw.WebSocketConnection) -> None:
        self.events.append(("disconnect", conn.id, conn.close_code))
        self.disconnected.put_nowait(conn)


async def eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until *predicate()* holds (polling), or fail."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


# -- raw sockets: for inputs no well-behaved client library will send -----------
HANDSHAKE_KEY = base64.b64encode(b"0123456789abcdef").decode()


def handshake_request(port: int, path: str = "/") -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {HANDSHAKE_KEY}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n").encode()


def client_frame(opcode: int, payload: bytes, fin: bool = True, rsv: int = 0,
                 mask: bytes | None = None) -> bytes:
    """A masked client frame, with any bits the tests want (valid or not)."""
    mask = mask if mask is not None else os.urandom(4)
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload)
    if n < 126:
        header = bytes((first, 0x80 | n))
    elif n < 65536:
        header = bytes((first, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((first, 0x80 | 127)) + n.to_bytes(8, "big")
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + masked


class RawClient:
    """A hand-driven WebSocket client over asyncio streams."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, path: str = "/") -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(handshake_request(port, path))
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def read_frame(self, timeout: float = 5.0) -> tuple[int, bool, bytes]:
        """(opcode, fin, payload) of the next server frame."""

        async def read() -> tuple[int, bool, bytes]:
            b0, b1 = await self.reader.readexactly(2)
            n = b1 & 0x7F
            if n == 126:
                n = int.from_bytes(await self.reader.readexactly(2), "big")
            elif n == 127:
                n = int.from_bytes(await self.reader.readexactly(8), "big")
            assert not b1 & 0x80, "server frames must not be masked"
            return b0 & 0x0F, bool(b0 & 0x80), await self.reader.readexactly(n)

        return await asyncio.wait_for(read(), timeout)

    async def read_close(self, timeout: float = 5.0) -> int | None:
        """Read frames until a close frame; return its code (None if empty)."""
        while True:
            opcode, _fin, payload = await self.read_frame(timeout)
            if opcode == 0x8:
                return int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def gather_bounded(*aws: Awaitable[T], timeout: float = 10.0) -> list[T]:
    return list(await asyncio.wait_for(asyncio.gather(*aws), timeout))
