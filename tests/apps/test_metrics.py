"""``GET /metrics``: a known traffic pattern against a real server, scraped with
aiohttp and parsed with prometheus_client's text parser; and the CLI's route."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect as ws_connect

import reinhardt_ws as rw
from reinhardt_ws.metrics import CONTENT_TYPE, Metrics
from reinhardt_ws.rooms import RoomManager

from ..fixtures import child_env, eventually
from ..redis_fixtures import RedisServer, redis_server_binary
from .test_cli import start_cli

N = 5          # connections in the room
M = 3          # messages each sends, echoed
BURST = 5      # message_burst (M < BURST: the echo clients never reach it)
TEXT = "hello"  # 5 bytes


class RoomEcho(rw.WebSocketHandler):
    def __init__(self, rooms: RoomManager) -> None:
        self.rooms = rooms

    async def on_connect(self, conn: rw.WebSocketConnection) -> None:
        await self.rooms.join("lobby", conn)

    async def on_message(self, conn: rw.WebSocketConnection, message: rw.Message) -> None:
        await conn.send(message)


class Quiet(rw.WebSocketHandler):
    """Reads and answers nothing (the rate-limited client's route)."""


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, parsed by prometheus_client: (name, labels)."""
    out = {}
    for family in text_string_to_metric_families(text):
        assert family.documentation, family.name
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def scrape(port: int, path: str = "/metrics") -> tuple[int, str, str]:
    async with (aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{port}{path}") as resp):
        return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


def test_metrics_after_known_traffic(run: Any) -> None:
    async def main() -> None:
        rooms = RoomManager()
        metrics = Metrics(rooms=rooms)
        router = (rw.Router().websocket("/ws", RoomEcho(rooms))
                  .websocket("/quiet", Quiet()).http("/metrics", metrics))
        async with rw.serve(router, "127.0.0.1", 0, ping_interval=None,
                            origins=["http://good.example", None],
                            message_rate=1, message_burst=BURST) as server:
            assert metrics.server is server  # bound by serve
            url = f"ws://127.0.0.1:{server.port}/ws"
            clients = [await ws_connect(url) for _ in range(N)]
            await eventually(lambda: rooms.stats()["memberships"] == N)
            # M messages each, echoed (well under the rate: one at a time)
            for _ in range(M):
                for c in clients:
                    await c.send(TEXT)
                    assert await c.recv() == TEXT
            # one broadcast to the room: N deliveries
            await rooms.broadcast("lobby", "news!")
            for c in clients:
                assert await c.recv() == "news!"
            # one refused Origin (403)
            with pytest.raises(websockets.InvalidStatus):
                await ws_connect(url, origin="http://evil.example")  # type: ignore[arg-type]
            # one client over the rate (BURST + 1 at once): closed 1008
            flood = await ws_connect(f"ws://127.0.0.1:{server.port}/quiet")
            for _ in range(BURST + 1):
                await flood.send("x")
            await flood.wait_closed()
            assert flood.close_code == 1008
            # one client closes normally
            await clients.pop().close()
            await eventually(lambda: server.stats()["connections"] == N - 1)
            await eventually(lambda: rooms.stats()["memberships"] == N - 1)

            status, ctype, text = await scrape(server.port)
            assert status == 200
            assert ctype.startswith("text/plain") and "version=0.0.4" in ctype
            got = samples(text)
            p = "reinhardt_ws_"
            assert got[(p + "connections", ())] == N - 1
            assert got[(p + "connections_opened_total", ())] == N + 1
            assert got[(p + "connections_closed_total", (("code", "1000"),))] == 1
            assert got[(p + "connections_closed_total", (("code", "1008"),))] == 1
            assert got[(p + "handshakes_refused_total", (("reason", "origin"),))] == 1
            assert got[(p + "limits_hit_total", (("limit", "message_rate"),))] == 1
            # N*M echoed, plus the flood's BURST (the next one closes it)
            assert got[(p + "messages_received_total", ())] == N * M + BURST
            assert got[(p + "bytes_received_total", ())] == N * M * len(TEXT) + BURST
            # sent: N broadcast deliveries, N*M echoes (single sends), their bytes
            # (a 2-byte header each; close frames are not counted)
            assert got[(p + "deliveries_total", ())] == N
            assert got[(p + "frames_pushed_total", ())] == N * M
            assert got[(p + "bytes_sent_total", ())] == (N * M + N) * (2 + len(TEXT))
            assert got[(p + "broadcasts_total", ())] == 1
            assert got[(p + "messages_dropped_total", ())] == 0
            assert got[(p + "rooms", ())] == 1
            assert got[(p + "memberships", ())] == N - 1
            assert got[(p + "room_connections", ())] == N - 1
            assert got[(p + "http_responses_total", ())] == 0  # this scrape not yet
            # the JSON figures are the same
            snap = metrics.snapshot()
            assert snap["server"]["messages_received"] == N * M + BURST
            assert snap["fanout"]["delivered"] == N
            assert snap["fanout"]["pushed"] == N * M
            assert snap["rooms"]["memberships"] == N - 1
            # a second scrape counts the first as an HTTP response
            status, _ctype, text = await scrape(server.port)
            assert samples(text)[(p + "http_responses_total", ())] == 1
            for c in clients:
                await c.close()

    run(main())


@pytest.mark.pure
def test_label_values_and_help_are_escaped() -> None:
    """Backslashes, quotes and newlines survive the round trip through a real parser."""
    from reinhardt_ws.metrics import _Writer

    w = _Writer()
    odd = 'a"b\\c\nd'
    w.labelled("odd_total", "counter", "help with \\ and\nnewline", "reason", {odd: 3})
    [family] = text_string_to_metric_families("\n".join(w.lines) + "\n")
    assert family.documentation == "help with \\ and\nnewline"
    assert family.samples[0].labels == {"reason": odd} and family.samples[0].value == 3


@pytest.mark.pure
def test_exposition_parses_without_server() -> None:
    """Unbound and outside a loop: only the process-wide families, still valid."""
    text = Metrics().render()
    assert text.endswith("\n")
    names = {f.name for f in text_string_to_metric_families(text)}
    assert "reinhardt_ws_compression_bytes_in" in names
    assert not any(n.startswith("reinhardt_ws_connections") for n in names)


@pytest.mark.pure
def test_metrics_content_type() -> None:
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"


@pytest.mark.parametrize("extra", [[], ["--no-metrics"]])
def test_cli_echo_metrics(implementation: str, tmp_path: Path, extra: list[str]) -> None:
    async def main() -> None:
        proc, port = await start_cli(["echo", "--port", "0", *extra],
                                     child_env(implementation), tmp_path / "stderr")
        try:
            async with ws_connect(f"ws://127.0.0.1:{port}/") as ws:
                await ws.send("ping")
                assert await ws.recv() == "ping"
                status, _ctype, text = await scrape(port)
            if extra:
                assert status == 404
            else:
                assert status == 200
                got = samples(text)
                assert got[("reinhardt_ws_connections", ())] == 1
                assert got[("reinhardt_ws_messages_received_total", ())] == 1
        finally:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 20)

    asyncio.run(main())


def test_cli_serve_metrics(implementation: str, tmp_path: Path) -> None:
    async def main() -> None:
        proc, port = await start_cli(["serve", "--port", "0"],
                                     child_env(implementation), tmp_path / "stderr")
        try:
            status, _ctype, text = await scrape(port)
            assert status == 200
            got = samples(text)
            assert got[("reinhardt_ws_rooms", ())] == 0
            assert got[("reinhardt_ws_connections", ())] == 0
        finally:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 20)

    asyncio.run(main())


def test_help_mentions_no_metrics() -> None:
    out = subprocess.run([sys.executable, "-m", "reinhardt_ws", "echo", "--help"],
                         capture_output=True, text=True, env=child_env("python"), check=True)
    assert "--no-metrics" in out.stdout


def test_compression_counters(run: Any) -> None:
    """A compressible broadcast to a deflate client: bytes in and out are counted
    (process-wide, so as a difference) and the ratio is below 1."""
    async def main() -> None:
        from reinhardt_ws.rooms import _compression

        rooms = RoomManager()
        metrics = Metrics(rooms=rooms)
        router = (rw.Router().websocket("/ws", RoomEcho(rooms)).http("/metrics", metrics))
        async with (rw.serve(router, "127.0.0.1", 0, ping_interval=None,
                             compression="deflate") as server,
                    ws_connect(f"ws://127.0.0.1:{server.port}/ws") as ws):
            await eventually(lambda: rooms.stats()["memberships"] == 1)
            before = _compression.stats()
            payload = "abc" * 1000
            await rooms.broadcast("lobby", payload)
            assert await ws.recv() == payload
            after = metrics.snapshot()["compression"]
            assert after["bytes_in"] - before["bytes_in"] == len(payload)
            wire = after["bytes_out"] - before["bytes_out"]
            assert 0 < wire < len(payload) // 10
            _status, _ctype, text = await scrape(server.port)
            ratio = samples(text)[("reinhardt_ws_compression_ratio", ())]
            assert ratio == after["bytes_out"] / after["bytes_in"]

    run(main())


@pytest.fixture(scope="module")
def redis_server() -> Any:
    server = RedisServer(redis_server_binary()).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.redis
def test_redis_metrics(run: Any, redis_server: RedisServer) -> None:
    """With a Redis backend: the backend's counters, after one broadcast."""
    async def main() -> None:
        import uuid

        from reinhardt_ws.rooms.redis import RedisBackend

        rooms = RoomManager(backend=RedisBackend(redis_server.url,
                                                 prefix=f"m{uuid.uuid4().hex[:10]}"))
        metrics = Metrics(rooms=rooms)
        router = rw.Router().websocket("/ws", RoomEcho(rooms)).http("/metrics", metrics)
        try:
            async with (rw.serve(router, "127.0.0.1", 0, ping_interval=None) as server,
                        ws_connect(f"ws://127.0.0.1:{server.port}/ws") as ws):
                await eventually(lambda: rooms.stats()["memberships"] == 1)
                await eventually(lambda: rooms.backend.stats()[  # type: ignore[attr-defined]
                    "connected"] == 1, timeout=10)
                await rooms.broadcast("lobby", "via redis")
                assert await ws.recv() == "via redis"
                await eventually(lambda: rooms.backend.stats()[  # type: ignore[attr-defined]
                    "published"] >= 1)
                _status, _ctype, text = await scrape(server.port)
                got = samples(text)
                backend = rooms.backend.stats()  # type: ignore[attr-defined]
                p = "reinhardt_ws_redis_"
                assert got[(p + "connected", ())] == 1
                assert got[(p + "published_total", ())] == backend["published"] >= 1
                assert got[(p + "dropped_publications_total", ())] == 0
                assert got[(p + "reconnects_total", ())] == 0
                assert got[(p + "pending_publications", ())] == backend["pending"]
        finally:
            await rooms.close()

    run(main())
