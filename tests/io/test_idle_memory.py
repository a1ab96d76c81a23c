"""What an idle connection holds: the allocations deferred until first use, and the
shared 101 answer (each connection still gets its own Sec-WebSocket-Accept).

The memory itself is measured in bench/test_memory.py; these tests pin the
behaviour that keeps it low, with real sockets on both loops and both
implementations.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import hashlib
import os
from typing import Any

import reinhardt_ws as rw
from reinhardt_ws._http import RequestReader

from ..fixtures import eventually, running_server

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _accept(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()


async def _upgrade(port: int, key: str, extra: str = ""
                   ) -> tuple[bytes, asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write((f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  f"Sec-WebSocket-Version: 13\r\n{extra}\r\n").encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    return head, reader, writer


class Collect(rw.WebSocketHandler):
    def __init__(self) -> None:
        self.conns: list[rw.WebSocketConnection] = []
        self.messages: list[rw.Message] = []

    async def on_connect(self, conn: rw.WebSocketConnection) -> None:
        self.conns.append(conn)

    async def on_message(self, conn: rw.WebSocketConnection, message: rw.Message) -> None:
        self.messages.append(message)


def test_every_connection_gets_its_own_accept_from_the_shared_101(run: Any) -> None:
    async def main() -> None:
        handler = Collect()
        async with running_server(handler, subprotocols=("chat",)) as server:
            for extra in ("", "Sec-WebSocket-Protocol: chat\r\n"):
                writers = []
                for _ in range(3):
                    key = base64.b64encode(os.urandom(16)).decode()
                    head, _reader, writer = await _upgrade(server.port, key, extra)
                    writers.append(writer)
                    lines = head.decode("latin-1").split("\r\n")
                    assert lines[0].startswith("HTTP/1.1 101")
                    accepts = [line for line in lines if line.lower().startswith(
                        "sec-websocket-accept:")]
                    assert accepts == [f"Sec-WebSocket-Accept: {_accept(key)}"]
                    protocols = [line for line in lines if line.lower().startswith(
                        "sec-websocket-protocol:")]
                    assert protocols == (["Sec-WebSocket-Protocol: chat"] if extra else [])
                for writer in writers:
                    writer.close()
            # One response object per distinct set of extra headers, not per connection.
            assert len(server._responses_101) == 2

    run(main())


def test_an_idle_connection_defers_its_inbox_pings_and_waiters(run: Any) -> None:
    async def main() -> None:
        handler = Collect()
        async with running_server(handler) as server:
            head, reader, writer = await _upgrade(server.port, "dGhlIHNhbXBsZSBub25jZQ==")
            assert head.startswith(b"HTTP/1.1 101")
            for _ in range(200):
                if handler.conns:
                    break
                await asyncio.sleep(0.01)
            conn = handler.conns[0]
            assert conn._inbox == () and not conn._inbox
            assert conn._pings is None and conn._drain_waiters is None
            assert conn._user_data is None and conn._close_listeners is None
            # on_connect set no context variable: no context is kept (it comes
            # with the next callback, equal to the one on_connect ran in).
            await eventually(lambda: conn._worker is None)
            assert conn._context is None
            conn.user_data["who"] = "ada"  # made on first use, then kept
            assert conn.user_data == {"who": "ada"}
            conn.user_data = {"fresh": True}
            assert conn.user_data == {"fresh": True}
            # The address is the reader's tuple, not a second one.
            assert conn.remote_address == writer.get_extra_info("sockname")
            # Messages still flow once it speaks (masked client frames).
            mask = b"\x01\x02\x03\x04"
            for text in (b"one", b"two"):
                body = bytes(b ^ mask[i % 4] for i, b in enumerate(text))
                writer.write(bytes([0x81, 0x80 | len(text)]) + mask + body)
            for _ in range(200):
                if len(handler.messages) == 2:
                    break
                await asyncio.sleep(0.01)
            assert [m.data for m in handler.messages] == ["one", "two"]
            rtt = await asyncio.wait_for(_ping_pong(conn, reader, writer), 5)
            assert rtt >= 0 and conn._pings == []
            writer.close()

    run(main())


async def _ping_pong(conn: rw.WebSocketConnection, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> float:
    """conn.ping(), answered by the raw client."""
    task = asyncio.ensure_future(conn.ping(b"p"))
    frame = await reader.readexactly(3)
    assert frame == b"\x89\x01p"
    mask = b"\x00\x00\x00\x00"
    writer.write(b"\x8a\x81" + mask + b"p")
    return await task


def test_no_request_reader_outlives_the_handshake(run: Any) -> None:
    async def main() -> None:
        handler = Collect()
        async with running_server(handler) as server:
            writers = []
            for _ in range(5):
                head, _reader, writer = await _upgrade(server.port, "dGhlIHNhbXBsZSBub25jZQ==")
                assert head.startswith(b"HTTP/1.1 101")
                writers.append(writer)
            for _ in range(200):
                if len(handler.conns) == 5:
                    break
                await asyncio.sleep(0.01)
            gc.collect()
            # uvloop keeps a stale data_received of the stream's first protocol;
            # the hand-over leaves it nothing of the reader's.
            assert not [o for o in gc.get_objects() if isinstance(o, RequestReader)]
            for writer in writers:
                writer.close()

    run(main())


#: What Chromium sends with a WebSocket upgrade (after Host), plus a repeated field
#: and a value with a non-ASCII byte, which picows decodes with surrogateescape.
BROWSER_HEADERS = (
    "Connection: keep-alive, Upgrade\r\nPragma: no-cache\r\nCache-Control: no-cache\r\n"
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36\r\nUpgrade: websocket\r\n"
    "Origin: http://127.0.0.1:{port}\r\nSec-WebSocket-Version: 13\r\n"
    "Accept-Encoding: gzip, deflate, br, zstd\r\nAccept-Language: en-US,en;q=0.9\r\n"
    "Cookie: sessionid=abc123; csrftoken=XYZ789\r\nX-Dup: a\r\nx-dup: b\r\n"
)


def test_the_request_head_is_kept_as_bytes_and_picows_headers_are_released(run: Any) -> None:
    """conn.headers gives what the handshake hooks saw (names, values and their
    decoding, repeated fields, any case), parsed from the head the connection keeps
    as bytes; picows' own parsed copy is emptied once the connection is open."""
    seen: list[list[tuple[str, str]]] = []

    def process_request(request: rw.Request) -> None:
        seen.append(list(request.headers.items()))

    async def main() -> None:
        handler = Collect()
        async with running_server(handler, process_request=process_request) as server:
            port = server.port
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            head = (f"GET /chat?room=1 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                    + BROWSER_HEADERS.format(port=port)
                    + "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n").encode()
            writer.write(head.replace(b"csrftoken=XYZ789", b"csrftoken=caf\xc3\xa9") + b"\r\n")
            answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert answer.startswith(b"HTTP/1.1 101")
            await eventually(lambda: bool(handler.conns))
            conn = handler.conns[0]
            assert isinstance(conn._headers, bytes)
            assert len(conn._ws.request.headers) == 0  # picows' copy: released
            headers = conn.headers
            assert list(headers.items()) == seen[0]
            assert headers["COOKIE"] == "sessionid=abc123; csrftoken=caf\udcc3\udca9"
            assert headers["connection"] == "keep-alive, Upgrade"  # as the client sent it
            assert headers.getall("X-Dup") == ["a", "b"]  # type: ignore[attr-defined]
            assert headers["Origin"] == f"http://127.0.0.1:{port}"
            try:
                headers["X"] = "y"  # type: ignore[index]
            except TypeError:
                pass
            else:
                raise AssertionError("conn.headers must be read-only")
            assert conn.path == "/chat?room=1"
            writer.close()

    run(main())
