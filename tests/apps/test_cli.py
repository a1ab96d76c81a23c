"""The command line: ``python -m reinhardt_ws echo`` in a subprocess, answering clients."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import websockets
from websockets.asyncio.client import connect as ws_connect

import reinhardt_ws as rw

from ..fixtures import child_env, free_port
from .test_chat import without_position


async def start_cli(args: list[str], env: dict[str, str], stderr: Path
                    ) -> tuple[asyncio.subprocess.Process, int]:
    with stderr.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-W", "error", "-m", "reinhardt_ws", *args,
            stdout=subprocess.PIPE, stderr=err, env=env)
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    match = re.search(rb"listening on ws://[^:]+:(\d+)/", line)
    if match is None:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"unexpected first line {line!r}; stderr: {stderr.read_text()}")
    return proc, int(match.group(1))


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_echo_command_answers_clients(implementation: str, tmp_path: Path,
                                      stop: signal.Signals) -> None:
    async def main() -> None:
        port = free_port()
        proc, bound = await start_cli(["echo", "--port", str(port), "--log-level", "WARNING"],
                                      child_env(implementation), tmp_path / "stderr.txt")
        try:
            assert bound == port
            url = f"ws://127.0.0.1:{port}/"
            async with rw.connect(url) as conn:
                await conn.send_text("hello cli ✓")
                assert (await conn.recv()).data == "hello cli ✓"
                await conn.send_binary(b"\x00\x01")
                assert (await conn.recv()).data == b"\x00\x01"
            ws = await ws_connect(url)
            await ws.send("from websockets")
            assert await ws.recv() == "from websockets"
            proc.send_signal(stop)
            # A clean shutdown: the connected client is told 1001 (Going Away).
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
            assert ws.close_code == 1001
            await ws.close()
            assert await asyncio.wait_for(proc.wait(), 10) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert "Traceback" not in (tmp_path / "stderr.txt").read_text()

    asyncio.run(main())


def test_port_zero_prints_the_bound_port(implementation: str, tmp_path: Path) -> None:
    async def main() -> None:
        proc, port = await start_cli(["echo", "--port", "0", "--max-write-buffer", "65536"],
                                     child_env(implementation),
                                     tmp_path / "stderr.txt")
        try:
            assert port > 0
            async with ws_connect(f"ws://127.0.0.1:{port}/") as ws:
                await ws.send(b"ping")
                assert await ws.recv() == b"ping"
        finally:
            proc.terminate()
            assert await asyncio.wait_for(proc.wait(), 10) == 0

    asyncio.run(main())


@pytest.mark.pure
def test_command_line_errors() -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "reinhardt_ws", *args],
                              capture_output=True, text=True, timeout=30)

    helped = cli("--help")
    assert helped.returncode == 0
    assert "echo" in helped.stdout and "serve" in helped.stdout
    assert cli("shout").returncode == 2
    refused = cli("serve", "--workers", "2")
    assert refused.returncode == 2
    assert "--redis" in refused.stderr
    for args in (("serve", "--max-rooms", "0"), ("echo", "--max-write-buffer", "0"),
                 ("serve", "--max-write-buffer", "-5"), ("echo", "--max-message-size", "0"),
                 ("echo", "--max-queue-bytes", "0"), ("serve", "--message-burst", "0.5")):
        bad = cli(*args)
        assert bad.returncode == 2, args
        assert f"{args[1]} must be at least 1" in bad.stderr, bad.stderr
        assert "Traceback" not in bad.stderr
    slow = cli("echo", "--message-rate", "0")
    assert slow.returncode == 2 and "--message-rate must be positive" in slow.stderr
    assert "--max-rooms" not in cli("echo", "--help").stdout
    assert "--max-write-buffer" in cli("echo", "--help").stdout
    short = cli("serve", "--token-secret", "too short")
    assert short.returncode == 2
    assert "at least 32 bytes" in short.stderr
    assert cli("serve", "--token-secret", "s" * 32, "--token-ttl", "0").returncode == 2


def test_serve_with_a_token_secret_from_the_environment(implementation: str,
                                                        tmp_path: Path) -> None:
    """``REINHARDT_WS_TOKEN_SECRET=... reinhardt-ws serve``: connections need a signed
    token; the DEMO endpoint ``GET /token/<name>`` mints one; the 101 selects the
    chat subprotocol, never the token."""
    import json
    import urllib.request

    secret = "cli-secret-" + "z" * 32
    env = child_env(implementation, REINHARDT_WS_TOKEN_SECRET=secret)

    async def main() -> None:
        proc, port = await start_cli(["serve", "--port", "0", "--log-level", "WARNING"], env,
                                     tmp_path / "stderr.txt")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/token/alice",
                                        timeout=10) as response:
                minted = json.load(response)
            assert "DEMO" in minted["demo"]
            assert rw.TokenSigner(secret).verify(minted["token"])["sub"] == "alice"
            async with ws_connect(f"ws://127.0.0.1:{port}/ws", subprotocols=[
                    "reinhardt-chat", rw.bearer_subprotocol(minted["token"])]) as ws:
                assert ws.subprotocol == "reinhardt-chat"
                await ws.send(json.dumps({"type": "join", "room": "lobby"}))
                joined = json.loads(await asyncio.wait_for(ws.recv(), 10))["data"]
                # The CLI's chat keeps history: the joined event carries the room's position.
                assert without_position(joined) == {"event": "joined", "room": "lobby",
                                                    "size": 1}
            async with ws_connect(f"ws://127.0.0.1:{port}/ws") as anonymous:
                with pytest.raises(websockets.ConnectionClosed):
                    await asyncio.wait_for(anonymous.recv(), 10)
                assert anonymous.close_code == 3000
                assert anonymous.close_reason == "token required"
        finally:
            proc.terminate()
            assert await asyncio.wait_for(proc.wait(), 10) == 0
        assert "Traceback" not in (tmp_path / "stderr.txt").read_text()

    asyncio.run(main())


def test_message_rate_flag_closes_a_flooding_client(implementation: str, tmp_path: Path) -> None:
    """``echo --message-rate 5 --message-burst 5``: a client that sends 50 messages at
    once is closed with 1008; a polite one is echoed."""

    async def main() -> None:
        proc, port = await start_cli(
            ["echo", "--port", "0", "--message-rate", "5", "--message-burst", "5"],
            child_env(implementation), tmp_path / "stderr.txt")
        try:
            async with ws_connect(f"ws://127.0.0.1:{port}/") as polite:
                await polite.send("hi")
                assert await polite.recv() == "hi"
            flood = await ws_connect(f"ws://127.0.0.1:{port}/")
            for i in range(50):
                await flood.send(f"m{i}")
            await asyncio.wait_for(flood.wait_closed(), 10)
            assert flood.close_code == 1008
        finally:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 20)

    asyncio.run(main())


def test_no_compression_flag(implementation: str, tmp_path: Path) -> None:
    """permessage-deflate is negotiated by default; ``--no-compression`` declines it."""
    async def main() -> None:
        for flags, expected in (([], "permessage-deflate; server_no_context_takeover; "
                                     "client_max_window_bits=12"),
                                (["--no-compression"], None)):
            proc, port = await start_cli(["echo", "--port", "0", *flags],
                                         child_env(implementation), tmp_path / "stderr.txt")
            try:
                async with ws_connect(f"ws://127.0.0.1:{port}/") as ws:
                    assert ws.response is not None
                    assert ws.response.headers.get("Sec-WebSocket-Extensions") == expected
                    await ws.send("x" * 1000)
                    assert await ws.recv() == "x" * 1000
            finally:
                proc.terminate()
                assert await asyncio.wait_for(proc.wait(), 10) == 0

    asyncio.run(main())
