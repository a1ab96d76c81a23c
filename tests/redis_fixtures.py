"""Harness of the Redis tests (and of ``bench/test_redis_fanout.py``): a real
``redis-server`` on a free loopback port, server processes running
``tests/redis_app.py`` or the CLI, and a JSON client for the app's commands."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import pytest

import reinhardt_ws as rw

from .fixtures import ROOT, child_env, free_port

__all__ = [
    "AppClient",
    "AppProcess",
    "RedisClusterNodes",
    "RedisServer",
    "child_env",
    "redis_server_binary",
    "start_process",
    "stop_process",
]


def redis_server_binary() -> str:
    """Path of ``redis-server``; skips the test when missing, FAILS it under CI."""
    path = shutil.which("redis-server")
    if path is not None:
        return path
    message = ("redis-server not found: install the Debian package redis-server "
               "(.ci/run installs it)")
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


def _ping(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1, without persistence; can be
    killed and started again on the same port."""

    def __init__(self, binary: str, port: int | None = None,
                 extra: Sequence[str] = ()) -> None:
        self.binary = binary
        self.port = port if port is not None else free_port()
        self.extra = tuple(extra)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--protected-mode", "no",
             "--daemonize", "no", "--loglevel", "warning", *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not _ping(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server not answering on port {self.port}")
            time.sleep(0.02)
        return self

    def kill(self) -> None:
        """SIGKILL: no goodbye to the clients (their sockets get reset)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


class RedisClusterNodes:
    """A Redis Cluster of *size* primaries on free loopback ports (no replicas),
    slots split evenly; built with CLUSTER ADDSLOTSRANGE and MEET (faster than
    ``redis-cli --cluster create``)."""

    def __init__(self, binary: str, workdir: Path, size: int = 3) -> None:
        self.nodes = []
        self.bus_ports = []
        for _ in range(size):
            port = free_port()
            self.bus_ports.append(free_port())  # not port + 10000, which may pass 65535
            self.nodes.append(RedisServer(binary, port, extra=(
                "--cluster-enabled", "yes", "--cluster-node-timeout", "2000",
                "--cluster-port", str(self.bus_ports[-1]),
                "--cluster-config-file", str(workdir / f"nodes-{port}.conf"))))

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self, timeout: float = 15.0) -> RedisClusterNodes:
        import redis

        try:
            for node in self.nodes:
                node.start()
        except BaseException:
            self.stop()
            raise
        clients = [redis.Redis(port=n.port) for n in self.nodes]
        try:
            step = 16384 // len(clients)
            for i, client in enumerate(clients):
                last = 16383 if i == len(clients) - 1 else (i + 1) * step - 1
                client.execute_command(  # type: ignore[no-untyped-call]
                    "CLUSTER", "ADDSLOTSRANGE", i * step, last)
            for node, bus_port in zip(self.nodes[1:], self.bus_ports[1:], strict=True):
                clients[0].execute_command(  # type: ignore[no-untyped-call]
                    "CLUSTER", "MEET", "127.0.0.1", node.port, bus_port)
            deadline = time.monotonic() + timeout
            while not all(c.cluster("INFO")["cluster_state"] == "ok" and
                          len(c.cluster("NODES")) == len(clients) for c in clients):
                if time.monotonic() > deadline:
                    raise RuntimeError("the redis cluster did not come up")
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise
        finally:
            for client in clients:
                client.close()
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _read_line(stream: IO[bytes], deadline: float) -> bytes:
    """One line from a child's stdout, or b"" at the deadline or at EOF."""
    sel = selectors.DefaultSelector()
    sel.register(stream, selectors.EVENT_READ)
    try:
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                return b""
            chunk = os.read(stream.fileno(), 1)
            if not chunk:
                return b""
            line += chunk
        return line
    finally:
        sel.unregister(stream)


def start_process(argv: Sequence[str], env: dict[str, str], log: Path, expect: str,
                  count: int = 1, timeout: float = 15.0
                  ) -> tuple[subprocess.Popen[bytes], list[str]]:
    """Start *argv*; return it and the first *count* stdout lines containing
    *expect* (failing with the child's log when they do not come)."""
    log_file = open(log, "ab")  # noqa: SIM115 - the child writes to it
    try:
        # A session of its own: the whole tree (CLI workers too) can be signalled.
        proc = subprocess.Popen(list(argv), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=log_file, start_new_session=True)
    finally:
        log_file.close()
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    while len(lines) < count:
        line = _read_line(proc.stdout, deadline)
        if not line:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGABRT)
            time.sleep(0.5)
            stop_process(proc, 0)
            pytest.fail(f"{' '.join(argv)} did not print {expect!r} {count} times "
                        f"(got {lines}); its log:\n"
                        + log.read_text(errors="replace")[-3000:])
        if expect in line.decode():
            lines.append(line.decode().strip())
    return proc, lines


def stop_process(proc: subprocess.Popen[bytes], grace: float = 10.0) -> int:
    """SIGTERM (then SIGKILL after *grace* seconds); close its pipe; the exit code.
    Whatever is left of its process group is killed too."""
    if proc.poll() is None:
        if grace > 0:
            proc.terminate()
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
        else:
            proc.kill()
    code = proc.wait(5)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    if proc.stdout is not None:
        proc.stdout.close()
    return code


class AppProcess:
    """A ``tests/redis_app.py`` server process on a free port."""

    def __init__(self, redis_url: str, prefix: str, implementation: str, log: Path, *,
                 ttl: float = 6.0, backoff_max: float = 0.5, sharded: bool = False,
                 uvloop: bool = False, history: int = 0, presence: bool = False,
                 extra_args: Sequence[str] = ()) -> None:
        self.redis_url = redis_url
        self.prefix = prefix
        self.implementation = implementation
        self.log = log
        self.ttl = ttl
        self.backoff_max = backoff_max
        self.sharded = sharded
        self.uvloop = uvloop
        self.history = history
        self.presence = presence
        self.extra_args = tuple(extra_args)
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> AppProcess:
        self.port = free_port()
        argv = [sys.executable, "-m", "tests.redis_app", "--redis", self.redis_url,
                "--port", str(self.port), "--prefix", self.prefix, "--ttl", str(self.ttl),
                "--backoff-max", str(self.backoff_max)]
        if self.sharded:
            argv.append("--sharded")
        if self.uvloop:
            argv.append("--uvloop")
        if self.history:
            argv += ["--history", str(self.history)]
        if self.presence:
            argv.append("--presence")
        argv += self.extra_args
        self.proc, (ready,) = start_process(argv, child_env(self.implementation), self.log,
                                            "READY")
        assert ready.split()[2] == self.implementation, ready
        return self

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    async def client(self) -> AppClient:
        return AppClient(await rw.connect(self.url))

    def kill(self) -> None:
        """SIGKILL: the process leaves nothing behind but its keys in Redis."""
        if self.proc is not None:
            stop_process(self.proc, 0)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


class AppClient:
    """Speaks ``tests/redis_app.py``'s JSON commands; broadcasts that arrive while
    it waits for a reply are kept, in order, in :attr:`received`."""

    def __init__(self, conn: rw.WebSocketConnection) -> None:
        self.conn = conn
        self.received: list[Any] = []
        self.id = ""

    @classmethod
    async def open(cls, url: str) -> AppClient:
        client = cls(await rw.connect(url))
        client.id = (await client.call("id"))["id"]
        return client

    async def _recv(self, timeout: float) -> Any:
        message = await asyncio.wait_for(self.conn.recv(), timeout)
        return json.loads(message.payload)

    async def call(self, op: str, timeout: float = 10.0, **args: Any) -> dict[str, Any]:
        await self.conn.send(json.dumps({"op": op, **args}))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            obj = await self._recv(max(0.01, deadline - loop.time()))
            if "reply" in obj:
                assert obj["reply"] == op, obj
                return obj  # type: ignore[no-any-return]
            self.received.append(obj["msg"])

    async def next(self, timeout: float = 5.0) -> Any:
        """The next broadcast or direct message."""
        if self.received:
            return self.received.pop(0)
        obj = await self._recv(timeout)
        assert "reply" not in obj, obj
        return obj["msg"]

    async def take_until(self, marker: Any, timeout: float = 5.0) -> list[Any]:
        """Messages up to and excluding *marker* (which is consumed)."""
        got: list[Any] = []
        while True:
            message = await self.next(timeout)
            if message == marker:
                return got
            got.append(message)

    async def close(self) -> None:
        await self.conn.close()
