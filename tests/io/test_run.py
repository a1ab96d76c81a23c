"""``reinhardt_ws.run()``: a program that calls it serves until SIGTERM or SIGINT, then
its clients get 1001 (Going Away), every ``on_disconnect`` runs, ``on_stop`` runs,
and the process exits 0 (no traceback, no KeyboardInterrupt)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import websockets
from websockets.asyncio.client import connect as ws_connect

import reinhardt_ws as rw

from ..fixtures import child_env

SCRIPT = textwrap.dedent('''
    import sys
    import reinhardt_ws as rw

    class Echo(rw.WebSocketHandler):
        async def on_message(self, conn, message):
            await conn.send(message)

        async def on_disconnect(self, conn):
            print("disconnected", conn.close_code, flush=True)

    def started(server):
        print("port", server.port, rw.IMPLEMENTATION, flush=True)

    async def stopped(server):
        print("stopped", len(server.connections), flush=True)

    rw.run(Echo(), "127.0.0.1", 0, on_start=started, on_stop=stopped,
           max_message_size=4096)
    print("returned", flush=True)
''')


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_run_closes_clients_with_1001_on_a_signal(implementation: str, tmp_path: Path,
                                                  stop: signal.Signals) -> None:
    script = tmp_path / "app.py"
    script.write_text(SCRIPT)

    async def main() -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-W", "error", str(script), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, env=child_env(implementation))
        assert proc.stdout is not None and proc.stderr is not None
        try:
            first = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode().split()
            assert first[0] == "port", first
            assert first[2] == implementation
            url = f"ws://127.0.0.1:{first[1]}/"
            clients = [await ws_connect(url) for _ in range(2)]
            for ws in clients:
                await ws.send("hello")
                assert await asyncio.wait_for(ws.recv(), 10) == "hello"
            proc.send_signal(stop)
            for ws in clients:
                with pytest.raises(websockets.ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), 10)
                assert ws.close_code == 1001
            assert await asyncio.wait_for(proc.wait(), 15) == 0
            out = (await proc.stdout.read()).decode().splitlines()
            err = (await proc.stderr.read()).decode()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert out == ["disconnected 1001", "disconnected 1001", "stopped 0", "returned"]
        assert "Traceback" not in err and "KeyboardInterrupt" not in err, err

    asyncio.run(main())


@pytest.mark.pure
def test_run_inside_a_running_loop_is_refused() -> None:
    async def main() -> None:
        with pytest.raises(RuntimeError, match="serve_until_signal"):
            rw.run(rw.WebSocketHandler(), "127.0.0.1", 0)

    asyncio.run(main())


@pytest.mark.pure
def test_run_validates_settings_before_serving() -> None:
    with pytest.raises(ValueError):
        rw.run(rw.WebSocketHandler(), "127.0.0.1", 0, max_message_size=0)
    with pytest.raises(TypeError):
        rw.run(rw.WebSocketHandler(), "127.0.0.1", 0, no_such_setting=1)


def test_serve_until_signal_returns_when_the_server_closes(implementation: str) -> None:
    """In a running loop: serve_until_signal() returns None once someone else closes
    the server, and leaves no signal handler behind."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await rw.serve(rw.WebSocketHandler(), "127.0.0.1", 0)
        task = asyncio.ensure_future(rw.serve_until_signal(server))
        await asyncio.sleep(0.05)
        await server.close()
        assert await asyncio.wait_for(task, 10) is None
        assert not loop.remove_signal_handler(signal.SIGTERM)

    asyncio.run(main())
