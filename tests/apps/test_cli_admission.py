"""The CLI's admission defaults, in a subprocess: same-origin pages and clients
without Origin are admitted, other sites get 403; ``--allow-origin``,
``--allow-any-origin`` and the connection limits."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import websockets
from websockets.asyncio.client import connect as ws_connect

from tests.apps.test_cli import start_cli
from tests.fixtures import child_env, free_port


@contextlib.asynccontextmanager
async def cli_server(implementation: str, tmp_path: Path, *args: str) -> AsyncIterator[int]:
    proc, port = await start_cli(["serve", "--port", str(free_port()), "--log-level",
                                  "WARNING", *args], child_env(implementation),
                                 tmp_path / "stderr.txt")
    try:
        yield port
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    assert "Traceback" not in (tmp_path / "stderr.txt").read_text()


async def status(url: str, **options: object) -> int:
    try:
        async with ws_connect(url, open_timeout=5, **options) as ws:  # type: ignore[arg-type]
            await ws.send('{"type": "join", "room": "r"}')
            assert "joined" in str(await asyncio.wait_for(ws.recv(), 5))
            return 101
    except websockets.InvalidStatus as exc:
        return int(exc.response.status_code)


def test_serve_defaults_to_same_origin(implementation: str, tmp_path: Path) -> None:
    async def main() -> None:
        async with cli_server(implementation, tmp_path) as port:
            url = f"ws://127.0.0.1:{port}/ws"
            assert await status(url) == 101  # no Origin: a non-browser client
            assert await status(url, origin=f"http://127.0.0.1:{port}") == 101
            assert await status(url, origin="http://evil.example") == 403
            assert await status(url, origin=f"http://127.0.0.1:{port + 1}") == 403
        async with cli_server(implementation, tmp_path, "--allow-origin",
                              "https://app.example.com", "--allow-origin",
                              "https://*.example.org") as port:
            url = f"ws://127.0.0.1:{port}/ws"
            assert await status(url, origin="https://app.example.com") == 101
            assert await status(url, origin="https://x.example.org") == 101
            assert await status(url, origin=f"http://127.0.0.1:{port}") == 101
            assert await status(url, origin="http://evil.example") == 403
        async with cli_server(implementation, tmp_path, "--allow-any-origin") as port:
            assert await status(f"ws://127.0.0.1:{port}/ws", origin="http://evil.example") == 101

    asyncio.run(main())


def test_serve_connection_limits(implementation: str, tmp_path: Path) -> None:
    async def main() -> None:
        async with cli_server(implementation, tmp_path, "--max-connections-per-ip", "2",
                              "--max-connections", "3") as port:
            url = f"ws://127.0.0.1:{port}/"
            async with ws_connect(url), ws_connect(url):
                assert await status(url) == 429
                async with ws_connect(url, local_addr=("127.0.0.2", 0)):
                    assert await status(url, local_addr=("127.0.0.3", 0)) == 503
            # All closed: admitted again (the server counts closes).
            for _ in range(50):
                if await status(url) == 101:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("never admitted again")

    asyncio.run(main())


@pytest.mark.parametrize("args", [["--max-connections", "-1"],
                                  ["--allow-origin", "example.com"]])
def test_serve_bad_admission_flags(args: list[str]) -> None:
    done = subprocess.run([sys.executable, "-m", "reinhardt_ws", "serve", *args],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr.startswith("reinhardt-ws: ")
