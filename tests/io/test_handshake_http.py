"""The opening handshake over real sockets: what real browsers send, HTTP hygiene
(400/404/405/414/426/431), routing, Origin checks, the ``process_request`` hook
and connection limits.  Each refusal is checked with a raw socket (status line,
headers, body) and with the websockets and aiohttp clients, and no
``WebSocketConnection`` or listener is created for it."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
import websockets
from websockets.asyncio.client import connect as ws_connect

import reinhardt_ws as rw
from reinhardt_ws import _fanout
from reinhardt_ws import server as server_module
from tests.core_helpers import TEXT, Run
from tests.fixtures import Recorder, client_frame, eventually, running_server, url_of

# -- helpers ---------------------------------------------------------------------------

created: dict[str, int] = {"connections": 0, "listeners": 0}


class CountingConnection(rw.WebSocketConnection):
    __slots__ = ()

    def __init__(self, **kwargs: Any) -> None:
        created["connections"] += 1
        super().__init__(**kwargs)


_new_listener = _fanout.new_listener


def counting_listener(conn: rw.WebSocketConnection) -> Any:
    created["listeners"] += 1
    return _new_listener(conn)


@pytest.fixture(autouse=True)
def count_objects(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Count the real connection and listener objects the server creates."""
    created.update(connections=0, listeners=0)
    monkeypatch.setattr(server_module, "WebSocketConnection", CountingConnection)
    monkeypatch.setattr(_fanout, "new_listener", counting_listener)
    yield


def nothing_created() -> bool:
    return created == {"connections": 0, "listeners": 0}


KEY = base64.b64encode(os.urandom(16)).decode()
ACCEPT = base64.b64encode(hashlib.sha1(
    (KEY + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()


def upgrade_lines(port: int, path: str = "/", *extra: str, version: str = "13") -> list[str]:
    return [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket",
            "Connection: Upgrade", f"Sec-WebSocket-Key: {KEY}",
            f"Sec-WebSocket-Version: {version}", *extra]


def raw(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class Answer:
    def __init__(self, data: bytes) -> None:
        head, _, self.body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status_line = lines[0]
        self.status = int(lines[0].split()[1])
        self.headers = {k.strip().lower(): v.strip()
                        for k, _, v in (line.partition(":") for line in lines[1:])}

    def __repr__(self) -> str:
        return f"<Answer {self.status_line!r} {self.headers} {self.body[:80]!r}>"


async def exchange(port: int, data: bytes) -> Answer:
    """Send *data*, read until the server hangs up, and parse the HTTP answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        return Answer(await asyncio.wait_for(reader.read(), 5))
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def assert_refused(answer: Answer, status: int, body_part: bytes) -> None:
    assert answer.status == status, answer
    assert answer.headers["connection"] == "close", answer
    assert int(answer.headers["content-length"]) == len(answer.body), answer
    assert body_part in answer.body, answer


async def websockets_status(url: str, **options: Any) -> tuple[int, bytes, Any]:
    with pytest.raises(websockets.InvalidStatus) as info:
        async with ws_connect(url, open_timeout=5, **options):
            pass
    response = info.value.response
    return response.status_code, response.body or b"", response.headers


async def aiohttp_status(url: str, **options: Any) -> int:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await session.ws_connect(url, timeout=aiohttp.ClientWSTimeout(ws_receive=5),
                                     **options)
    return int(info.value.status)


async def refused_by_all(server: rw.Server, path: str, status: int, body_part: bytes,
                         raw_request: bytes | None = None, **client_options: Any) -> None:
    """The same refusal as seen by a raw socket, websockets and aiohttp."""
    if raw_request is not None:
        assert_refused(await exchange(server.port, raw_request), status, body_part)
    code, body, _headers = await websockets_status(url_of(server, path), **client_options)
    assert code == status and body_part in body, (code, body)
    aio_options = dict(client_options)
    if "origin" in aio_options:
        aio_options["origin"] = aio_options.pop("origin")
    if "additional_headers" in aio_options:
        aio_options["headers"] = aio_options.pop("additional_headers")
    assert await aiohttp_status(url_of(server, path), **aio_options) == status
    assert server.connections == frozenset()
    assert nothing_created(), created


async def echo_round_trip(server: rw.Server, path: str = "/", **options: Any) -> None:
    async with ws_connect(url_of(server, path), open_timeout=5, **options) as ws:
        await ws.send("ping?")
        assert await asyncio.wait_for(ws.recv(), 5) == "ping?"


# -- real browsers' handshakes ----------------------------------------------------------

def firefox(port: int) -> list[str]:
    # Firefox 133 on Linux, as captured (the Connection header is the point).
    return [
        "GET /ws HTTP/1.1", f"Host: 127.0.0.1:{port}",
        "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
        "Accept: */*", "Accept-Language: en-US,en;q=0.5",
        "Accept-Encoding: gzip, deflate, br, zstd", "Sec-WebSocket-Version: 13",
        f"Origin: http://127.0.0.1:{port}", "Sec-WebSocket-Extensions: permessage-deflate",
        f"Sec-WebSocket-Key: {KEY}", "DNT: 1", "Connection: keep-alive, Upgrade",
        "Sec-Fetch-Dest: empty", "Sec-Fetch-Mode: websocket", "Sec-Fetch-Site: same-origin",
        "Pragma: no-cache", "Cache-Control: no-cache", "Upgrade: websocket"]


def chromium(port: int) -> list[str]:
    return [
        "GET /ws HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: Upgrade",
        "Pragma: no-cache", "Cache-Control: no-cache",
        "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/131.0.0.0 Safari/537.36",
        "Upgrade: websocket", f"Origin: http://127.0.0.1:{port}", "Sec-WebSocket-Version: 13",
        "Accept-Encoding: gzip, deflate, br, zstd", "Accept-Language: en-US,en;q=0.9",
        f"Sec-WebSocket-Key: {KEY}",
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits"]


def safari(port: int) -> list[str]:
    return [
        "GET /ws HTTP/1.1", f"Host: 127.0.0.1:{port}",
        "Sec-WebSocket-Extensions: permessage-deflate", f"Sec-WebSocket-Key: {KEY}",
        "Sec-WebSocket-Version: 13", "Upgrade: websocket", f"Origin: http://127.0.0.1:{port}",
        "Pragma: no-cache", "Cache-Control: no-cache", "Connection: Upgrade",
        "Accept-Language: en-US,en;q=0.9", "Accept-Encoding: gzip, deflate",
        "User-Agent: Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 "
        "(KHTML, like Gecko) Version/18.1 Safari/605.1.15"]


@pytest.mark.parametrize("browser", [firefox, chromium, safari],
                         ids=["firefox", "chromium", "safari"])
def test_browser_handshakes_get_101_and_echo(run: Run, browser: Any) -> None:
    async def main() -> None:
        handler = Recorder(echo=True)
        # The CLI's default policy: same origin, or no Origin.
        async with running_server(handler, origins=[rw.SAME_ORIGIN, None]) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            try:
                writer.write(raw(*browser(server.port)))
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                answer = Answer(head)
                assert answer.status == 101, answer
                assert answer.headers["sec-websocket-accept"] == ACCEPT
                assert answer.headers["upgrade"].lower() == "websocket"
                # Every browser offers permessage-deflate, and we accept it (without
                # context on our side, so that broadcasts can share one frame).
                extensions = answer.headers["sec-websocket-extensions"]
                assert extensions.startswith("permessage-deflate; server_no_context_takeover")
                writer.write(client_frame(TEXT, "héllo".encode()))
                b0, b1 = await asyncio.wait_for(reader.readexactly(2), 5)
                # Below the compression threshold: sent plain (no RSV1).
                assert (b0, b1) == (0x81, len("héllo".encode()))
                assert await reader.readexactly(b1) == "héllo".encode()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
            conn = await asyncio.wait_for(handler.connected.get(), 5)
            assert conn.path == "/ws"

    run(main())


# -- HTTP hygiene ----------------------------------------------------------------------


def test_unsupported_versions_get_426_with_version_13(run: Run) -> None:
    async def main() -> None:
        async with running_server(Recorder(echo=True)) as server:
            for version in ("8", "7", "12", "14"):
                answer = await exchange(server.port,
                                        raw(*upgrade_lines(server.port, version=version)))
                assert_refused(answer, 426, b"426 Upgrade Required")
                assert answer.headers["sec-websocket-version"] == "13"
            no_version = [line for line in upgrade_lines(server.port)
                          if not line.startswith("Sec-WebSocket-Version")]
            answer = await exchange(server.port, raw(*no_version))
            assert_refused(answer, 426, b"version none")
            assert server.stats()["refused"] == {"unsupported_version": 5}
            # An upgrade must be a GET over HTTP/1.1: anything else is plain HTTP.
            post = [line.replace("GET ", "POST ", 1) for line in upgrade_lines(server.port)]
            answer = await exchange(server.port, raw(*post))
            assert_refused(answer, 405, b"Method Not Allowed")
            assert answer.headers["allow"] == "GET, HEAD"
            old = [line.replace("HTTP/1.1", "HTTP/1.0") for line in upgrade_lines(server.port)]
            assert_refused(await exchange(server.port, raw(*old)), 404, b"Not Found")
            assert nothing_created()
            await echo_round_trip(server)

    run(main())


def test_missing_host_is_400(run: Run) -> None:
    async def main() -> None:
        async with running_server(Recorder(echo=True)) as server:
            lines = [line for line in upgrade_lines(server.port) if not line.startswith("Host")]
            assert_refused(await exchange(server.port, raw(*lines)), 400, b"no Host header")
            assert_refused(await exchange(server.port, raw("GET / HTTP/1.1")), 400,
                           b"no Host header")
            assert nothing_created()
            assert server.stats()["refused"] == {"bad_request": 2}

    run(main())


def test_connection_without_upgrade_token_is_400(run: Run) -> None:
    async def main() -> None:
        async with running_server(Recorder(echo=True)) as server:
            lines = [line if not line.startswith("Connection") else "Connection: keep-alive"
                     for line in upgrade_lines(server.port)]
            assert_refused(await exchange(server.port, raw(*lines)), 400, b"lacks 'upgrade'")
            assert nothing_created()

    run(main())


def test_header_limit_gets_431_and_long_target_414(run: Run) -> None:
    async def main() -> None:
        async with running_server(Recorder(echo=True), max_request_line=1024,
                                  max_request_head=4096) as server:
            big = upgrade_lines(server.port) + [f"X-Filler-{i}: {'v' * 100}" for i in range(40)]
            assert_refused(await exchange(server.port, raw(*big)), 431,
                           b"431 Request Header Fields Too Large")
            long_path = "/" + "p" * 2000
            assert_refused(await exchange(server.port, raw(*upgrade_lines(server.port,
                                                                          long_path))),
                           414, b"414 URI Too Long")
            assert_refused(await exchange(server.port, raw(f"GET {long_path} HTTP/1.1",
                                                           "Host: x")), 414, b"URI Too Long")
            # Just under the limits is fine.
            await echo_round_trip(server, "/" + "p" * 1000)
            assert server.stats()["refused"] == {"request_too_large": 3}
            # The same with the clients.
            headers = {f"X-Filler-{i}": "v" * 100 for i in range(40)}
            code, body, _ = await websockets_status(url_of(server), additional_headers=headers)
            assert (code, body) == (431, b"431 Request Header Fields Too Large\n")
            assert await aiohttp_status(url_of(server), headers=headers) == 431

    run(main())


def test_default_limits_answer_431_below_picows_cap(run: Run) -> None:
    """Defaults: 8 KiB of head.  From 8 to 16 KiB the client gets 431 (picows itself
    would drop the connection without an answer at 16 KiB)."""

    async def main() -> None:
        async with running_server(Recorder(echo=True)) as server:
            big = [*upgrade_lines(server.port), f"X-Filler: {'v' * 12000}"]
            assert_refused(await exchange(server.port, raw(*big)), 431, b"431")

    run(main())


def test_unknown_plain_path_is_404_and_http_routes(run: Run) -> None:
    async def main() -> None:
        handler = Recorder(echo=True)
        seen: list[rw.Request] = []

        def health(request: rw.Request) -> rw.HTTPResponse:
            seen.append(request)
            return rw.HTTPResponse(200, b"ok\n", headers={"Cache-Control": "no-store"})

        def item(request: rw.Request) -> rw.HTTPResponse:
            return rw.HTTPResponse(200, request.path_params["id"].encode())

        def submit(request: rw.Request) -> rw.HTTPResponse:
            return rw.HTTPResponse(204)

        router = (rw.Router().websocket("/ws", handler)
                  .http("/healthz", health).http("/items/{id}", item, name="item")
                  .http("/submit", submit, methods=("POST",)))
        async with running_server(router) as server:
            answer = await exchange(server.port, raw("GET /healthz?probe=1 HTTP/1.1",
                                                     "Host: x"))
            assert answer.status_line == "HTTP/1.1 200 OK"
            assert answer.body == b"ok\n"
            assert answer.headers["cache-control"] == "no-store"
            assert answer.headers["content-type"] == "text/plain; charset=utf-8"
            assert seen[0].query == {"probe": ["1"]} and seen[0].method == "GET"
            answer = await exchange(server.port, raw("GET /items/a%2Fb HTTP/1.1", "Host: x"))
            assert (answer.status, answer.body) == (200, b"a/b")
            assert router.url_for("item", id="a/b") == "/items/a%2Fb"
            assert_refused(await exchange(server.port, raw("GET /favicon.ico HTTP/1.1",
                                                           "Host: x")), 404, b"404 Not Found")
            answer = await exchange(server.port, raw("GET /submit HTTP/1.1", "Host: x"))
            assert_refused(answer, 405, b"405 Method Not Allowed")
            assert answer.headers["allow"] == "POST"
            # A plain GET on a WebSocket route: 426 with Upgrade.
            answer = await exchange(server.port, raw("GET /ws HTTP/1.1", "Host: x"))
            assert_refused(answer, 426, b"WebSocket endpoint")
            assert answer.headers["upgrade"] == "websocket"
            # A WebSocket upgrade on a path with no WebSocket route: 404.
            await refused_by_all(server, "/healthz", 404, b"404 Not Found",
                                 raw(*upgrade_lines(server.port, "/nope")))
            stats = server.stats()
            assert stats["http_responses"] == 2
            assert stats["refused"] == {"not_found": 4, "method_not_allowed": 1,
                                        "bad_request": 1}
            await echo_round_trip(server, "/ws")

    run(main())


def test_head_405_and_coroutine_handlers(run: Run) -> None:
    """Plain HTTP is read before picows (which parses GET only): HEAD works where
    GET does, other methods get 405 with Allow, and handlers may be coroutines."""

    async def main() -> None:
        async def slow_status(request: rw.Request) -> rw.HTTPResponse:
            await asyncio.sleep(0.05)
            return rw.HTTPResponse(200, b'{"ok": true}', "application/json")

        async def broken(request: rw.Request) -> rw.HTTPResponse:
            raise RuntimeError("handler bug")

        router = (rw.Router()
                  .http("/healthz", lambda r: rw.HTTPResponse(200, b"ok\n"))
                  .http("/status", slow_status)
                  .http("/broken", broken)
                  .http("/upload", lambda r: rw.HTTPResponse(204), methods=("PUT",)))
        async with running_server(router) as server:
            get = await exchange(server.port, raw("GET /healthz HTTP/1.1", "Host: x"))
            head = await exchange(server.port, raw("HEAD /healthz HTTP/1.1", "Host: x"))
            assert (get.status, get.body) == (200, b"ok\n")
            assert head.status_line == "HTTP/1.1 200 OK" and head.body == b""
            assert head.headers["content-length"] == "3"  # what GET would send
            for method in ("POST", "DELETE", "OPTIONS"):
                answer = await exchange(server.port, raw(f"{method} /healthz HTTP/1.1",
                                                         "Host: x"))
                assert_refused(answer, 405, b"405 Method Not Allowed")
                assert answer.headers["allow"] == "GET, HEAD"
            answer = await exchange(server.port, raw("GET /upload HTTP/1.1", "Host: x"))
            assert_refused(answer, 405, b"Method Not Allowed")
            assert answer.headers["allow"] == "PUT"
            answer = await exchange(server.port, raw("POST /nowhere HTTP/1.1", "Host: x"))
            assert answer.status == 405 and answer.headers["allow"] == "GET, HEAD"
            status = await exchange(server.port, raw("GET /status HTTP/1.1", "Host: x"))
            assert (status.status, status.body) == (200, b'{"ok": true}')
            assert status.headers["content-type"] == "application/json"
            head = await exchange(server.port, raw("HEAD /status HTTP/1.1", "Host: x"))
            assert head.status == 200 and head.body == b""
            # A client that half-closes after its request still gets the answer.
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(raw("GET /status HTTP/1.1", "Host: x"))
            writer.write_eof()
            half = Answer(await asyncio.wait_for(reader.read(), 5))
            writer.close()
            await writer.wait_closed()
            assert (half.status, half.body) == (200, b'{"ok": true}')
            assert_refused(await exchange(server.port, raw("GET /broken HTTP/1.1", "Host: x")),
                           500, b"500 Internal Server Error")
            body = await exchange(server.port, raw("PUT /upload HTTP/1.1", "Host: x",
                                                   "Content-Length: 5") + b"hello")
            assert_refused(body, 413, b"request bodies are not supported")
            # HTTP/1.0 needs no Host; other versions are 505; garbage is 400.
            old = await exchange(server.port, raw("GET /healthz HTTP/1.0"))
            assert (old.status, old.body) == (200, b"ok\n")
            assert (await exchange(server.port, raw("GET /healthz HTTP/2.0"))).status == 505
            assert (await exchange(server.port, raw("GET  /healthz HTTP/1.1",
                                                    "Host: x"))).status == 400
            assert (await exchange(server.port, raw("GET /healthz HTTP/1.1",
                                                    "Host x"))).status == 400
            async with aiohttp.ClientSession() as session:
                async with session.head(f"http://127.0.0.1:{server.port}/healthz") as r:
                    assert r.status == 200 and await r.read() == b""
                async with session.post(f"http://127.0.0.1:{server.port}/healthz") as r:
                    assert r.status == 405 and r.headers["Allow"] == "GET, HEAD"
                async with session.get(f"http://127.0.0.1:{server.port}/status") as r:
                    assert r.status == 200 and await r.json() == {"ok": True}
            assert server.stats()["http_responses"] == 8
            assert nothing_created()

    run(main())


def test_heads_over_picows_cap_get_431_not_a_reset(run: Run) -> None:
    async def main() -> None:
        async with running_server(Recorder(echo=True)) as server:
            for size in (20_000, 70_000):  # picows alone would drop these silently
                big = [*upgrade_lines(server.port), f"X-Filler: {'v' * size}"]
                assert_refused(await exchange(server.port, raw(*big)), 431, b"431")
            # A request line that never ends: 414.
            answer = await exchange(server.port, b"GET /" + b"a" * 20_000)
            assert_refused(answer, 414, b"414 URI Too Long")
            assert server.stats()["refused"] == {"request_too_large": 3}
            assert nothing_created()

    run(main())


def test_upgrade_in_pieces_and_with_early_frames(run: Run) -> None:
    """The hand-over to picows keeps every byte: a head sent a few bytes at a
    time, a large head (beyond picows' initial buffer), and frames sent right
    behind the head all arrive."""

    async def main() -> None:
        handler = Recorder(echo=True)
        async with running_server(handler) as server:
            lines = [*upgrade_lines(server.port), f"X-Filler: {'f' * 6000}"]
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            try:
                data = raw(*lines)
                for i in range(0, 63, 7):
                    writer.write(data[i:i + 7])
                    await writer.drain()
                    await asyncio.sleep(0.01)
                writer.write(data[63:] + client_frame(TEXT, b"one") + client_frame(TEXT, b"two"))
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                assert Answer(head).status == 101
                for expected in (b"one", b"two"):
                    b0, b1 = await asyncio.wait_for(reader.readexactly(2), 5)
                    assert (b0, await reader.readexactly(b1)) == (0x81, expected)
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

    run(main())


def test_silent_client_is_dropped_after_handshake_timeout(run: Run) -> None:
    async def main() -> None:
        async with running_server(Recorder(echo=True), handshake_timeout=0.3) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()

    run(main())


# -- routing -----------------------------------------------------------------------------


def test_router_path_params_and_mapping(run: Run) -> None:
    async def main() -> None:
        rooms, other = Recorder(echo=True), Recorder(echo=True)
        router = (rw.Router().websocket("/rooms/{room}", rooms, name="room")
                  .websocket("/other", other))
        async with running_server(router) as server:
            await echo_round_trip(server, router.url_for("room", room="lobby") + "?x=1")
            conn = await asyncio.wait_for(rooms.connected.get(), 5)
            assert conn.path_params == {"room": "lobby"}
            assert conn.path == "/rooms/lobby?x=1"
            await echo_round_trip(server, "/other")
            assert (await asyncio.wait_for(other.connected.get(), 5)).path_params == {}
            assert rooms.connected.empty()
            created.update(connections=0, listeners=0)
            await refused_by_all(server, "/rooms/a/b", 404, b"Not Found",
                                 raw(*upgrade_lines(server.port, "/rooms/")))
        echo = Recorder(echo=True)
        async with running_server({"/echo": echo}) as server:
            await echo_round_trip(server, "/echo")
            code, _body, _ = await websockets_status(url_of(server, "/"))
            assert code == 404

    run(main())


def test_serve_refuses_a_bad_target() -> None:
    with pytest.raises(TypeError):
        rw.serve(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="route '/x'"):
        rw.serve(rw.Router().websocket("/x", object()))


# -- origins ---------------------------------------------------------------------------


def test_origin_policy_at_the_handshake(run: Run) -> None:
    async def main() -> None:
        handler = Recorder(echo=True)
        async with running_server(handler, origins=["https://app.example.com",
                                                    "https://*.example.org", None]) as server:
            evil = "Origin: http://evil.example"
            await refused_by_all(server, "/", 403, b"403 Forbidden: origin not allowed",
                                 raw(*upgrade_lines(server.port, "/", evil)),
                                 origin="http://evil.example")
            await refused_by_all(server, "/", 403, b"origin not allowed",
                                 origin="https://example.org")
            assert server.stats()["refused"] == {"origin": 5}
            await echo_round_trip(server, origin="https://app.example.com")
            await echo_round_trip(server, origin="https://a.b.example.org")
            await echo_round_trip(server)  # no Origin: None is listed
        async with running_server(handler, origins=["https://app.example.com"]) as server:
            created.update(connections=0, listeners=0)
            assert_refused(await exchange(server.port, raw(*upgrade_lines(server.port))),
                           403, b"origin not allowed")
            assert nothing_created()

    run(main())


def test_same_origin_policy(run: Run) -> None:
    async def main() -> None:
        async with running_server(Recorder(echo=True),
                                  origins=[rw.SAME_ORIGIN, None]) as server:
            await echo_round_trip(server, origin=f"http://127.0.0.1:{server.port}")
            created.update(connections=0, listeners=0)
            await refused_by_all(server, "/", 403, b"origin not allowed",
                                 origin=f"http://127.0.0.1:{server.port + 1}")

    run(main())


# -- process_request ------------------------------------------------------------------


def test_process_request_refuses_and_accepts(run: Run) -> None:
    async def main() -> None:
        handler = Recorder(echo=True)
        seen: list[rw.Request] = []

        def gate(request: rw.Request) -> rw.HTTPResponse | rw.Accept | None:
            seen.append(request)
            token = request.query.get("token", [""])[0] or request.headers.get(
                "authorization", "")
            if token in ("alice", "Bearer alice"):
                return rw.Accept(user={"name": "alice"}, subprotocol="chat.v2"
                                 if "chat.v2" in request.headers.get(
                                     "sec-websocket-protocol", "") else None)
            if request.path == "/open":
                return None
            return rw.HTTPResponse(401, b"token required\n",
                                   headers={"WWW-Authenticate": 'Bearer realm="chat"'})

        async with running_server(handler, process_request=gate,
                                  subprotocols=("chat.v1",)) as server:
            answer = await exchange(server.port, raw(*upgrade_lines(server.port, "/x?t=1")))
            assert_refused(answer, 401, b"token required\n")
            assert answer.headers["www-authenticate"] == 'Bearer realm="chat"'
            assert seen[0].path == "/x" and seen[0].query_string == "t=1"
            assert seen[0].remote_address[0] == "127.0.0.1"
            assert seen[0].headers["sec-websocket-key"] == KEY
            code, body, headers = await websockets_status(url_of(server, "/x"))
            assert (code, body) == (401, b"token required\n")
            assert headers["WWW-Authenticate"] == 'Bearer realm="chat"'
            assert await aiohttp_status(url_of(server, "/x")) == 401
            assert nothing_created() and server.stats()["refused"] == {"process_request": 3}
            # Accepted with an identity and a subprotocol the hook chose.
            async with ws_connect(url_of(server, "/?token=alice"),
                                  subprotocols=["chat.v2", "chat.v1"]) as ws:  # type: ignore[list-item]
                assert ws.subprotocol == "chat.v2"
                await ws.send("hi")
                assert await ws.recv() == "hi"
            conn = await asyncio.wait_for(handler.connected.get(), 5)
            assert conn.user == {"name": "alice"} and conn.subprotocol == "chat.v2"
            async with aiohttp.ClientSession() as session, session.ws_connect(
                    url_of(server, "/"), headers={"Authorization": "Bearer alice"}) as ws:
                await ws.send_str("hey")
                assert (await ws.receive(timeout=5)).data == "hey"
            # None admits, without an identity; the server negotiates as usual.
            async with ws_connect(url_of(server, "/open"),
                                  subprotocols=["chat.v1"]) as ws:  # type: ignore[list-item]
                assert ws.subprotocol == "chat.v1"
            conn = await asyncio.wait_for(handler.connected.get(), 5)
            conn = await asyncio.wait_for(handler.connected.get(), 5)
            assert conn.user is None

    run(main())


def test_process_request_mistakes_are_500(run: Run, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        def gate(request: rw.Request) -> Any:
            if request.path == "/raise":
                raise RuntimeError("hook bug")
            if request.path == "/ok-status":
                return rw.HTTPResponse(200)
            if request.path == "/foreign-subprotocol":
                return rw.Accept(subprotocol="never-offered")
            return "nonsense"

        async with running_server(Recorder(echo=True), process_request=gate) as server:
            for path in ("/raise", "/ok-status", "/foreign-subprotocol", "/nonsense"):
                assert_refused(await exchange(server.port,
                                              raw(*upgrade_lines(server.port, path))),
                               500, b"500 Internal Server Error")
            assert server.stats()["refused"] == {"error": 4}
            assert nothing_created()

    run(main())
    assert sum("process_request failed" in r.getMessage() for r in caplog.records) == 4


# -- connection limits --------------------------------------------------------------------


def test_max_connections_503_then_admitted(run: Run) -> None:
    async def main() -> None:
        handler = Recorder(echo=True)
        async with running_server(handler, max_connections=2) as server, \
                contextlib.AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(ws_connect(url_of(server)))
                       for _ in range(2)]
            assert server.stats()["connections"] == 2
            before = dict(created)
            code, body, headers = await websockets_status(url_of(server))
            assert (code, headers["Retry-After"]) == (503, "1")
            assert body == b"503 Service Unavailable: too many connections\n"
            assert await aiohttp_status(url_of(server)) == 503
            assert_refused(await exchange(server.port, raw(*upgrade_lines(server.port))),
                           503, b"too many connections")
            assert created == before
            # A handshake picows refuses after us (bad key) never counts.
            bad_key = [line if not line.startswith("Sec-WebSocket-Key")
                       else "Sec-WebSocket-Key: short" for line in upgrade_lines(server.port)]
            await clients[0].close()
            await eventually(lambda: server.stats()["connections"] == 1)
            assert (await exchange(server.port, raw(*bad_key))).status == 400
            assert server.stats()["connections"] == 1
            await echo_round_trip(server)  # the freed slot is usable
            assert server.stats()["refused"] == {"max_connections": 3}
            await eventually(lambda: server.stats()["connections"] == 1)
            assert len(server.connections) == 1

    run(main())


def test_max_connections_per_ip_429(run: Run) -> None:
    async def main() -> None:
        async with running_server(Recorder(echo=True), max_connections_per_ip=2) as server, \
                contextlib.AsyncExitStack() as stack:
            local = [await stack.enter_async_context(ws_connect(url_of(server)))
                     for _ in range(2)]
            code, body, _ = await websockets_status(url_of(server))
            assert code == 429 and b"too many connections from your address" in body
            assert await aiohttp_status(url_of(server)) == 429
            # Another address of the loopback range has its own share.
            other = await stack.enter_async_context(
                ws_connect(url_of(server), local_addr=("127.0.0.2", 0)))
            await other.send("x")
            assert await other.recv() == "x"
            assert server.stats()["hosts"] == 2
            await local[1].close()
            await eventually(lambda: server.stats()["connections"] == 2)
            await echo_round_trip(server)
            assert server.stats()["refused"] == {"max_connections_per_ip": 2}

    run(main())


def test_limits_are_validated() -> None:
    for bad in ({"max_connections": 0}, {"max_connections_per_ip": -1},
                {"max_request_head": 20000}, {"max_request_line": 10},
                {"origins": ["nope"]}):
        with pytest.raises(ValueError):
            rw.ServerOptions(**bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        rw.ServerOptions(origins="https://x.example")


@pytest.mark.parametrize("use_aiofastnet", [False, True], ids=["loop-transport", "aiofastnet"])
def test_hand_over_on_each_transport(run: Run, use_aiofastnet: bool) -> None:
    async def main() -> None:
        router = (rw.Router().websocket("/", Recorder(echo=True))
                  .http("/healthz", lambda r: rw.HTTPResponse(200, b"ok\n")))
        async with running_server(router, use_aiofastnet=use_aiofastnet) as server:
            await echo_round_trip(server)
            head = await exchange(server.port, raw("HEAD /healthz HTTP/1.1", "Host: x"))
            assert head.status == 200 and head.body == b""
            async with aiohttp.ClientSession() as session, session.ws_connect(
                    url_of(server)) as ws:
                await ws.send_bytes(b"\x00" * 100_000)
                assert (await ws.receive(timeout=5)).data == b"\x00" * 100_000

    run(main())
