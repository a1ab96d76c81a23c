"""Helpers shared by the core tests (client, server, handler, bad input, TLS)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import websockets
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as ws_serve

from .fixtures import Recorder

#: The ``run`` fixture: runs a coroutine on the loop of the test's parameter.
Run = Callable[[Coroutine[Any, Any, Any]], Any]

#: Frame opcodes (RFC 6455 section 5.2), for raw frames.
CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def close_payload(code: int, reason: bytes = b"") -> bytes:
    """The payload of a close frame."""
    return code.to_bytes(2, "big") + reason


def event_kinds(handler: Recorder, conn_id: str | None = None) -> list[str]:
    """The callbacks a :class:`Recorder` saw (for one connection, if given), in order."""
    return [kind for kind, cid, _ in handler.events if conn_id is None or cid == conn_id]


async def ws_echo(ws: ServerConnection) -> None:
    """A ``websockets`` server handler that echoes until the connection closes."""
    with contextlib.suppress(websockets.ConnectionClosed):
        async for message in ws:
            await ws.send(message)


@contextlib.asynccontextmanager
async def websockets_server(handler: Callable[[ServerConnection], Awaitable[None]],
                            **options: Any) -> AsyncIterator[str]:
    """A ``websockets`` server on a free port; yields its URL (wss:// with ``ssl=``)."""
    async with ws_serve(handler, "127.0.0.1", 0, **options) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        if options.get("ssl") is not None:
            yield f"wss://localhost:{port}"
        else:
            yield f"ws://127.0.0.1:{port}"
