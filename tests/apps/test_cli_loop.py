"""The command line's event loop: uvloop when it is installed (``--loop auto``, the
default), asyncio's on request or without uvloop; ``--loop uvloop`` without it is a
usage error."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from websockets.asyncio.client import connect as ws_connect

from reinhardt_ws.__main__ import loop_factory

from ..fixtures import child_env

uvloop = pytest.importorskip("uvloop")  # in the test extra; absent only on Windows

#: The CLI with uvloop made unimportable (``sys.modules[name] = None`` is how
#: Python marks a module as not importable: ``import uvloop`` raises ImportError).
WITHOUT_UVLOOP = ("import sys; sys.modules['uvloop'] = None; "
                  "from reinhardt_ws.__main__ import main; sys.exit(main())")


async def first_line_and_echo(head: list[str], extra: list[str], env: dict[str, str],
                              stderr: Path) -> bytes:
    """Start ``<python> <head> echo --port 0 <extra>``, check that it echoes, stop
    it; return its first stdout line."""
    with stderr.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-W", "error", *head, "echo", "--port", "0", *extra,
            stdout=subprocess.PIPE, stderr=err, env=env)
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        port = int(line.split(b"ws://127.0.0.1:", 1)[1].split(b"/", 1)[0])
        async with ws_connect(f"ws://127.0.0.1:{port}/") as ws:
            await ws.send("loop?")
            assert await asyncio.wait_for(ws.recv(), 5) == "loop?"
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert "Traceback" not in stderr.read_text()
    return line


@pytest.mark.parametrize(("head", "extra", "loop"), [
    (["-m", "reinhardt_ws"], [], "uvloop"),
    (["-m", "reinhardt_ws"], ["--loop", "asyncio"], "asyncio"),
    (["-c", WITHOUT_UVLOOP], [], "asyncio"),
], ids=["auto-with-uvloop", "asyncio-asked", "auto-without-uvloop"])
def test_the_cli_runs_on_uvloop_when_it_is_installed(implementation: str, tmp_path: Path,
                                                     head: list[str], extra: list[str],
                                                     loop: str) -> None:
    line = asyncio.run(first_line_and_echo(head, extra, child_env(implementation),
                                           tmp_path / "stderr.txt"))
    assert line.rstrip().endswith(f", event loop {loop})".encode()), line


@pytest.mark.pure
def test_loop_uvloop_without_uvloop_is_a_usage_error() -> None:
    done = subprocess.run([sys.executable, "-c", WITHOUT_UVLOOP, "echo", "--loop", "uvloop"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "--loop uvloop needs uvloop" in done.stderr
    assert "reinhardt-ws[uvloop]" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.pure
def test_loop_factory_makes_the_loop_it_names() -> None:
    for kind, name, cls in (("auto", "uvloop", uvloop.Loop), ("uvloop", "uvloop", uvloop.Loop),
                            ("asyncio", "asyncio", asyncio.BaseEventLoop)):
        got_name, factory = loop_factory(kind)
        loop = factory()
        try:
            assert got_name == name and isinstance(loop, cls), (kind, loop)
            if kind == "asyncio":
                assert not isinstance(loop, uvloop.Loop)
        finally:
            loop.close()
    with pytest.raises(ValueError, match="unknown event loop"):
        loop_factory("trio")
