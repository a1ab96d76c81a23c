"""The logs, at each level: server start and stop at INFO (address, fan-out, pid; on
stop how many connections were closed), each connection opened and closed at DEBUG
(id, peer, path without its query string, close code), a client's misbehaviour at
INFO without a traceback, our own failures at ERROR with one; ``--log-level`` filters
and ``--log-format json`` writes one JSON object per line."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import connect as ws_connect

import reinhardt_ws as rw
from reinhardt_ws import _logging
from reinhardt_ws._logging import JsonFormatter

from ..fixtures import child_env


async def run_echo(implementation: str, tmp_path: Path, *flags: str) -> tuple[int, str, int]:
    """``echo --port 0 FLAGS``: a client that closes with 1000 (path with a token in its
    query), one still connected at SIGTERM (1001); returns (port, stderr, pid)."""
    err_path = tmp_path / "stderr.txt"
    with err_path.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-W", "error", "-m", "reinhardt_ws", "echo", "--port", "0",
            *flags, stdout=subprocess.PIPE, stderr=err, env=child_env(implementation))
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        match = re.search(rb":(\d+)/", line)
        assert match is not None, line
        port = int(match.group(1))
        async with ws_connect(f"ws://127.0.0.1:{port}/room?token=s3cret") as ws:
            await ws.send("hi")
            assert await ws.recv() == "hi"
        stays = await ws_connect(f"ws://127.0.0.1:{port}/stays")
        await stays.send("hi")
        assert await stays.recv() == "hi"
        proc.send_signal(signal.SIGTERM)
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(stays.recv(), 10)
        assert stays.close_code == 1001
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return port, err_path.read_text(), proc.pid


def test_debug_json_logs(implementation: str, tmp_path: Path) -> None:
    port, stderr, pid = asyncio.run(run_echo(implementation, tmp_path, "--log-level", "debug",
                                             "--log-format", "json"))
    assert "s3cret" not in stderr
    entries = [json.loads(line) for line in stderr.splitlines()]  # every line is JSON
    for entry in entries:
        assert {"time", "level", "logger", "message", "pid"} <= set(entry), entry
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"])
        assert entry["pid"] == pid
        assert "exc_info" not in entry, entry
    ours = [(e["level"], e["message"]) for e in entries if e["logger"] == "reinhardt_ws"]
    assert ("INFO", f"listening on ws://127.0.0.1:{port}/ (fan-out {implementation}, "
                    f"pid {pid})") in ours
    assert ("INFO", f"stopped listening on ws://127.0.0.1:{port}/: closed 1 connection "
                    f"with 1001 (pid {pid})") in ours
    opened = [m for level, m in ours if level == "DEBUG" and " opened: " in m]
    closed = [m for level, m in ours if level == "DEBUG" and " closed: " in m]
    assert len(opened) == len(closed) == 2, ours
    pattern = r"connection ([0-9a-f]{32}) opened: peer 127\.0\.0\.1:\d+, path '(/\w+)'"
    ids = {}
    for message in opened:
        found = re.fullmatch(pattern, message)
        assert found is not None, message
        ids[found.group(2)] = found.group(1)
    assert set(ids) == {"/room", "/stays"}
    assert any(m.startswith(f"connection {ids['/room']} closed: peer 127.0.0.1:") and
               m.endswith("path '/room', code 1000") for m in closed), closed
    assert any(m.startswith(f"connection {ids['/stays']} closed: peer 127.0.0.1:") and
               m.endswith("path '/stays', code 1001") for m in closed), closed


def test_info_text_logs_have_no_connection_lines(implementation: str, tmp_path: Path) -> None:
    port, stderr, pid = asyncio.run(run_echo(implementation, tmp_path))  # INFO, text
    lines = stderr.splitlines()
    assert any(line.endswith(f" INFO {pid} reinhardt_ws: listening on ws://127.0.0.1:{port}/ "
                             f"(fan-out {implementation}, pid {pid})") for line in lines), lines
    assert any(f"INFO {pid} reinhardt_ws: stopped listening on" in line for line in lines)
    assert not [line for line in lines if " DEBUG " in line or ": connection " in line], lines


def test_warning_level_is_quiet(implementation: str, tmp_path: Path) -> None:
    _port, stderr, _pid = asyncio.run(run_echo(implementation, tmp_path, "--log-level",
                                               "WARNING"))
    assert stderr == ""


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def test_our_failure_is_error_with_traceback_a_client_fault_info_without(
        implementation: str, monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken(rw.WebSocketHandler):
        async def on_message(self, conn: rw.WebSocketConnection, message: rw.Message) -> None:
            raise ZeroDivisionError("handler bug")

    # A fresh client-fault rate limit: earlier tests may have spent the process's.
    monkeypatch.setattr(_logging, "_limiter", _logging._FaultLimiter())
    collect = _Collect()
    logger = logging.getLogger("reinhardt_ws")
    logger.addHandler(collect)
    old_level = logger.level
    logger.setLevel(logging.INFO)

    async def main() -> None:
        async with rw.serve(Broken(), "127.0.0.1", 0, max_message_size=64) as server:
            url = f"ws://127.0.0.1:{server.port}/"
            async with ws_connect(url) as ws:
                await ws.send("boom")
                with pytest.raises(websockets.ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), 10)
                assert ws.close_code == 1011
            async with ws_connect(url, max_size=None, compression=None) as big:
                await big.send("x" * 1000)  # over max_message_size: the client's fault
                with pytest.raises(websockets.ConnectionClosed):
                    await asyncio.wait_for(big.recv(), 10)
                assert big.close_code == 1009

    try:
        asyncio.run(main())
    finally:
        logger.removeHandler(collect)
        logger.setLevel(old_level)
    entries: list[dict[str, Any]] = [json.loads(line) for line in collect.lines]
    errors = [e for e in entries if e["level"] == "ERROR"]
    assert len(errors) == 1, entries
    assert "raised; closing it with 1011" in errors[0]["message"]
    assert errors[0]["exc_info"].startswith("Traceback (most recent call last):")
    assert errors[0]["exc_info"].rstrip().endswith("ZeroDivisionError: handler bug")
    assert all("\n" not in line for line in collect.lines)  # one record, one line
    faults = [e for e in entries if e["logger"] == "reinhardt_ws.picows"]
    assert len(faults) == 1, entries
    assert faults[0]["level"] == "INFO" and "exc_info" not in faults[0]
    assert faults[0]["message"].startswith("WS parser error") and "1009" in faults[0]["message"]
    assert not [e for e in entries if e["level"] not in ("INFO", "ERROR")], entries
