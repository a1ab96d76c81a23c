"""Interop with Node's ``ws`` (tests/node, installed by ``.ci/run`` with ``npm ci``):
its client against our server and our client against its server, both with
permessage-deflate negotiated, exchanging compressible and incompressible
messages."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import pytest

import reinhardt_ws as rw

from ..core_helpers import Run
from ..fixtures import Recorder, running_server, url_of
from .test_compression import _exchange

NODE_DIR = Path(__file__).resolve().parents[1] / "node"


def node() -> str:
    found = shutil.which("node")
    if found is None or not (NODE_DIR / "node_modules" / "ws").is_dir():
        pytest.fail("Node's ws is not installed: run `npm ci` in tests/node (as .ci/run does)")
    return found


def test_node_ws_client_against_our_server(run: Run) -> None:
    async def main() -> None:
        handler = Recorder(echo=True)
        async with running_server(handler) as server:
            proc = await asyncio.create_subprocess_exec(
                node(), str(NODE_DIR / "client.js"), url_of(server),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            out, err = await asyncio.wait_for(proc.communicate(), 30)
            assert proc.returncode == 0, (out, err)
            report = json.loads(out.decode().strip().splitlines()[-1])
            assert report == {"echoed": 4, "extensions": "permessage-deflate", "header": (
                "permessage-deflate; server_no_context_takeover; client_max_window_bits=12")}
            conn = await asyncio.wait_for(handler.connected.get(), 5)
            assert conn.extension is not None

    run(main())


def test_our_client_against_node_ws_server(run: Run) -> None:
    async def main() -> None:
        proc = await asyncio.create_subprocess_exec(
            node(), str(NODE_DIR / "server.js"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert proc.stdout is not None
            port = json.loads(await asyncio.wait_for(proc.stdout.readline(), 20))["port"]
            async with rw.connect(f"ws://127.0.0.1:{port}/") as conn:
                assert conn.extension is not None
                # ws accepts our offer with no parameters: 15-bit windows and
                # context takeover both ways.
                assert conn.headers["sec-websocket-extensions"] == "permessage-deflate"
                assert conn.extension.shared is None  # our client keeps its context
                await _exchange(conn)
            seen = json.loads(await asyncio.wait_for(proc.stdout.readline(), 5))
            assert seen["extensions"].startswith("permessage-deflate")
        finally:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 10)

    run(main())
