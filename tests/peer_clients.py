"""Real peer clients (python-websockets and aiohttp) behind one small interface,
for the rooms, slow-consumer and chat tests; and a client that resets its TCP
connection."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

import aiohttp
import websockets
from websockets.asyncio.client import ClientConnection

import reinhardt_ws as rw

from .fixtures import RawClient, url_of

KINDS = ("websockets", "aiohttp")


class PeerClosed(Exception):
    """The server closed the connection (``code`` is its close code, or None)."""

    def __init__(self, code: int | None) -> None:
        super().__init__(code)
        self.code = code


class PeerClient:
    """One client connection; ``recv()`` returns ``str`` (text) or ``bytes``."""

    kind = ""

    async def recv(self, timeout: float = 10.0) -> str | bytes:
        raise NotImplementedError

    async def send(self, data: str | bytes) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def recv_many(self, count: int, timeout: float = 10.0) -> list[str | bytes]:
        return [await self.recv(timeout) for _ in range(count)]


class WebsocketsClient(PeerClient):
    kind = "websockets"

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    @classmethod
    async def open(cls, url: str, **options: Any) -> WebsocketsClient:
        options.setdefault("max_size", None)
        options.setdefault("ping_interval", None)
        return cls(await websockets.connect(url, **options))

    async def recv(self, timeout: float = 10.0) -> str | bytes:
        try:
            return await asyncio.wait_for(self.ws.recv(), timeout)
        except websockets.ConnectionClosed as exc:
            raise PeerClosed(exc.rcvd.code if exc.rcvd is not None else None) from exc

    async def send(self, data: str | bytes) -> None:
        await self.ws.send(data)

    async def close(self) -> None:
        await self.ws.close()

    async def abort(self) -> None:
        """Drop the TCP connection without a closing handshake."""
        self.ws.transport.abort()
        await self.ws.wait_closed()


class AiohttpClient(PeerClient):
    kind = "aiohttp"

    def __init__(self, session: aiohttp.ClientSession,
                 ws: aiohttp.ClientWebSocketResponse) -> None:
        self.session = session
        self.ws = ws

    @classmethod
    async def open(cls, url: str, **options: Any) -> AiohttpClient:
        options.setdefault("max_msg_size", 0)
        session = aiohttp.ClientSession()
        try:
            ws = await session.ws_connect(url, **options)
        except BaseException:
            await session.close()
            raise
        return cls(session, ws)

    async def recv(self, timeout: float = 10.0) -> str | bytes:
        msg = await self.ws.receive(timeout)
        if msg.type is aiohttp.WSMsgType.TEXT:
            return str(msg.data)
        if msg.type is aiohttp.WSMsgType.BINARY:
            return bytes(msg.data)
        raise PeerClosed(self.ws.close_code)

    async def send(self, data: str | bytes) -> None:
        if isinstance(data, str):
            await self.ws.send_str(data)
        else:
            await self.ws.send_bytes(data)

    async def close(self) -> None:
        try:
            await self.ws.close()
        finally:
            await self.session.close()


async def open_client(url: str, kind: str, **options: Any) -> PeerClient:
    if kind == "websockets":
        return await WebsocketsClient.open(url, **options)
    return await AiohttpClient.open(url, **options)


class HasConnectedQueue(Protocol):
    """A handler that queues each connection it accepts (Recorder, the chat one)."""

    connected: asyncio.Queue[rw.WebSocketConnection]


@contextlib.asynccontextmanager
async def connected(server: rw.Server, handler: HasConnectedQueue, kinds: Sequence[str]
                    ) -> AsyncIterator[list[tuple[PeerClient, rw.WebSocketConnection]]]:
    """One client per entry of *kinds*, each paired with its server connection."""
    pairs: list[tuple[PeerClient, rw.WebSocketConnection]] = []
    try:
        for kind in kinds:
            client = await open_client(url_of(server), kind)
            pairs.append((client, await asyncio.wait_for(handler.connected.get(), 5)))
        yield pairs
    finally:
        for client, _conn in pairs:
            with contextlib.suppress(Exception):
                await client.close()


def small_receive_buffer_socket(rcvbuf: int = 8192) -> socket.socket:
    """A TCP socket whose receive window stays small (set before connecting)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    return sock


async def connect_small_window(server: rw.Server, rcvbuf: int = 8192,
                               **options: Any) -> WebsocketsClient:
    """A websockets client with a small TCP receive buffer (a slow consumer when it
    stops reading: websockets stops reading the socket once ``max_queue`` fills)."""
    sock = small_receive_buffer_socket(rcvbuf)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
    except BaseException:
        sock.close()
        raise
    options.setdefault("max_queue", 1)
    # It may never hear the server again (aborted while it was not reading).
    options.setdefault("close_timeout", 1)
    return await WebsocketsClient.open(url_of(server), sock=sock, **options)


def reset(client: RawClient) -> None:
    """Drop a raw client's TCP connection with a reset (SO_LINGER 0), no close frame."""
    sock = client.writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.writer.transport.abort()
