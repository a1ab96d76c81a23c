"""Each program of ``examples/`` run as a user would run it (its own process, the
command line its docstring gives), driven by real clients: reinhardt-ws's
``connect()`` for WebSockets, aiohttp for HTTP, a real ``redis-server`` for the
Redis example. The servers run on both fan-out implementations (``child_env``).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest

import reinhardt_ws as rw

from ..fixtures import ROOT, child_env, free_port
from ..redis_fixtures import RedisServer, redis_server_binary

EXAMPLES = ROOT / "examples"
SECRET = "an example secret of at least thirty-two bytes"
T = TypeVar("T")


def run_async(coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def required_module(name: str, extra: str) -> None:
    """Skip without *name* on a developer machine; fail under CI."""
    if importlib.util.find_spec(name) is not None:
        return
    message = f"{name} is not installed: pip install 'reinhardt-ws[{extra}]'"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


class Program:
    """A child process whose stdout lines are read by a thread, so that a test
    can wait for a line with a deadline; its stderr goes to a log file."""

    def __init__(self, argv: Sequence[str], env: dict[str, str], log: Path) -> None:
        self.argv = list(argv)
        self.log = log
        with open(log, "ab") as log_file:
            self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                         stderr=log_file, text=True, start_new_session=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def expect(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        """The first line from now on that matches *pattern* (``re.search``)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                self.stop(0)
                pytest.fail(f"{' '.join(self.argv)} printed no line matching {pattern!r}; "
                            f"it printed {self.seen[-20:]}; its stderr:\n"
                            + self.log.read_text(errors="replace")[-3000:])
            self.seen.append(line)
            match = re.search(pattern, line)
            if match:
                return match

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout)

    def stop(self, grace: float = 10.0, sig: int = signal.SIGTERM) -> int:
        """*sig* (SIGKILL at once when *grace* is 0, or after *grace* seconds); the
        exit status.  What is left of its process group is killed too."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig if grace > 0 else signal.SIGKILL)
            try:
                self.proc.wait(grace or 5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        code = self.proc.wait(5)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.reader.join(5)  # EOF: the reader is done with the pipe
        if self.proc.stdout is not None and not self.reader.is_alive():
            self.proc.stdout.close()
        return code


@pytest.fixture
def programs() -> Iterator[list[Program]]:
    started: list[Program] = []
    yield started
    for program in started:
        program.stop(0)


def start(programs: list[Program], tmp_path: Path, implementation: str, *argv: str,
          **env: str | None) -> Program:
    program = Program([sys.executable, *argv], child_env(implementation, **env),
                      tmp_path / f"program{len(programs)}.log")
    programs.append(program)
    return program


async def next_json(conn: rw.WebSocketConnection, timeout: float = 10.0) -> Any:
    return (await asyncio.wait_for(conn.recv(), timeout)).parse_json()


async def closed_with(conn: rw.WebSocketConnection, timeout: float = 10.0
                      ) -> tuple[int | None, str]:
    """Read until the server closes *conn*: its close code and reason."""
    with pytest.raises(rw.ConnectionClosed):
        while True:
            await asyncio.wait_for(conn.recv(), timeout)
    return conn.close_code, conn.close_reason


# -- (a) notifications: a room per user ----------------------------------------------
def test_notifications_reach_every_device_of_their_user_only(
        programs: list[Program], tmp_path: Path, implementation: str) -> None:
    server = start(programs, tmp_path, implementation,
                   str(EXAMPLES / "notifications.py"), "--port", "0", "--interval", "0.1")
    port = int(server.expect(r"notifications on ws://127\.0\.0\.1:(\d+)/").group(1))
    url = f"ws://127.0.0.1:{port}/"

    async def notifications(conn: rw.WebSocketConnection, count: int) -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        while len(got) < count:
            event = await next_json(conn)
            assert event["type"] == "notification", event
            got.append(event)
        return got

    async def main() -> list[rw.WebSocketConnection]:
        phone = await rw.connect(url + "?user=alice")
        laptop = await rw.connect(url + "?user=alice")
        bob = await rw.connect(url + "?user=bob")
        for conn, user in ((phone, "alice"), (laptop, "alice"), (bob, "bob")):
            assert await next_json(conn) == {"type": "welcome", "user": user}
        on_laptop = await notifications(laptop, 3)
        ids = [n["id"] for n in on_laptop]
        assert ids == sorted(ids) and len(set(ids)) == 3
        on_phone: list[dict[str, Any]] = []
        while not on_phone or on_phone[-1]["id"] < ids[-1]:
            on_phone += await notifications(phone, 1)
        # Both devices got the same notifications, in the same order, all alice's.
        assert set(ids) <= {n["id"] for n in on_phone}
        assert {n["user"] for n in on_laptop + on_phone} == {"alice"}
        on_bob = await notifications(bob, 3)
        assert {n["user"] for n in on_bob} == {"bob"}
        assert not {n["id"] for n in on_bob} & {n["id"] for n in on_laptop + on_phone}

        # Without a valid user name: closed with 1008, no notification.
        for bad in ("", "?user=", "?user=a%20b", "?user=x&user=y"):
            anonymous = await rw.connect(url + bad)
            assert await closed_with(anonymous) == (1008, "?user=<name> required")
        return [phone, laptop, bob]

    async def after_sigterm(conns: list[rw.WebSocketConnection]) -> None:
        for conn in conns:
            code, _ = await closed_with(conn)
            assert code == 1001

    conns_loop = asyncio.new_event_loop()
    try:
        conns = conns_loop.run_until_complete(asyncio.wait_for(main(), 60))
        server.proc.send_signal(signal.SIGTERM)
        conns_loop.run_until_complete(asyncio.wait_for(after_sigterm(conns), 30))
    finally:
        conns_loop.close()
    server.expect("^stopped$")
    assert server.wait() == 0


# -- (b) token authentication --------------------------------------------------------
def test_token_auth_example(programs: list[Program], tmp_path: Path,
                            implementation: str) -> None:
    script = str(EXAMPLES / "token_auth.py")
    env = child_env(implementation, EXAMPLE_TOKEN_SECRET=SECRET)

    def mint(*args: str) -> str:
        done = subprocess.run([sys.executable, script, "token", *args], env=env,
                              capture_output=True, text=True, timeout=30, check=True)
        return done.stdout.strip()

    alice = mint("alice", "--rooms", "team-*")
    bob = mint("bob", "--publish", "announcements")  # joins anything, posts to one room
    signer = rw.TokenSigner(SECRET)
    assert signer.verify(alice)["rooms"] == ["team-*"]
    expired = rw.TokenSigner(SECRET, clock=lambda: time.time() - 3600).sign("eve", ttl=60)
    forged = rw.TokenSigner("another secret, also thirty-two bytes long").sign("mallory")

    server = start(programs, tmp_path, implementation, script, "serve", "--port", "0",
                   EXAMPLE_TOKEN_SECRET=SECRET)
    port = int(server.expect(r"chat on ws://127\.0\.0\.1:(\d+)/").group(1))
    url = f"ws://127.0.0.1:{port}/"

    async def main() -> None:
        a = await rw.connect(url, extra_headers={"Authorization": f"Bearer {alice}"})
        b = await rw.connect(url + f"?token={bob}")  # the query string works too
        assert await next_json(a) == {"type": "welcome", "user": "alice"}
        assert await next_json(b) == {"type": "welcome", "user": "bob"}

        await a.send_json({"type": "join", "room": "team-red"})
        assert await next_json(a) == {"type": "joined", "room": "team-red", "size": 1}
        await a.send_json({"type": "join", "room": "general"})
        assert await next_json(a) == {"type": "error", "error": "may not join 'general'"}
        await b.send_json({"type": "join", "room": "team-red"})
        assert await next_json(b) == {"type": "joined", "room": "team-red", "size": 2}
        await b.send_json({"type": "message", "room": "team-red", "text": "hi"})
        assert await next_json(b) == {"type": "error", "error": "may not post to 'team-red'"}
        # The sender is the token's subject, whatever the message says.
        await a.send_json({"type": "message", "room": "team-red", "text": "hello",
                           "from": "mallory"})
        for conn in (a, b):
            assert await next_json(conn) == {"type": "message", "room": "team-red",
                                             "from": "alice", "text": "hello"}
        await a.send(b"not json")
        assert (await next_json(a))["type"] == "error"

        # Refused before on_connect: 3000 with the reason; nothing else arrives.
        for headers, query, reason in (
                ({}, "", "token required"),
                ({"Authorization": f"Bearer {forged}"}, "", "bad token signature"),
                ({}, f"?token={expired}", "token expired"),
                ({}, "?token=garbage", "malformed token")):
            refused = await rw.connect(url + query, extra_headers=headers)
            assert await closed_with(refused) == (3000, reason)
        # A browser's way: a bearer.<token> subprotocol entry.
        c = await rw.connect(url, subprotocols=("chat", rw.bearer_subprotocol(alice)))
        assert await next_json(c) == {"type": "welcome", "user": "alice"}
        for conn in (a, b, c):
            await conn.close()

    run_async(main())
    assert server.stop() == 0
    assert server.expect("^stopped$")


@pytest.mark.pure
def test_token_auth_example_refuses_to_start_without_a_secret() -> None:
    script = str(EXAMPLES / "token_auth.py")
    for secret in (None, "short"):
        env = child_env("python", EXAMPLE_TOKEN_SECRET=secret)
        done = subprocess.run([sys.executable, script, "serve"], env=env,
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 1
        assert "EXAMPLE_TOKEN_SECRET" in done.stderr
        assert "Traceback" not in done.stderr


# -- (c) a reconnecting client -------------------------------------------------------
def test_reconnecting_client_comes_back_after_the_server_restarts(
        programs: list[Program], tmp_path: Path, implementation: str) -> None:
    port = free_port()
    url = f"ws://127.0.0.1:{port}/"
    client = start(programs, tmp_path, implementation,
                   str(EXAMPLES / "reconnecting_client.py"), "--url", url, "--room", "lobby",
                   "--initial-delay", "0.05", "--max-delay", "0.3", "--exit-after", "2")
    # No server yet: refused, retried with growing waits.
    first = json.loads(client.expect(r'"status": "disconnected"').string)
    second = json.loads(client.expect(r'"status": "disconnected"').string)
    assert "ConnectionRefusedError" in first["reason"]
    assert 0 < first["retry_in"] <= 0.05 and 0 < second["retry_in"] <= 0.1

    async def say(text: str) -> None:
        async with rw.connect(url) as sender:
            await sender.send_json({"type": "join", "room": "lobby"})
            assert (await next_json(sender))["data"]["event"] == "joined"
            await sender.send_json({"type": "message", "room": "lobby", "data": text})
            assert (await next_json(sender))["data"]["data"] == text

    def chat_server() -> Program:
        server = start(programs, tmp_path, implementation,
                       "-m", "reinhardt_ws", "serve", "--port", str(port))
        server.expect("listening")
        return server

    server = chat_server()
    client.expect(r'"status": "connected"')
    client.expect(r'"event": "joined"')
    run_async(say("one"))
    assert json.loads(client.expect(r'"event": "message"').string)["data"] == "one"

    server.stop(0)  # SIGKILL: no close frame, the socket just goes
    client.expect(r'"status": "disconnected"')
    server = chat_server()
    client.expect(r'"status": "connected"')
    client.expect(r'"event": "joined"')  # it joined the room again
    run_async(say("two"))
    assert json.loads(client.expect(r'"event": "message"').string)["data"] == "two"
    assert client.wait() == 0  # --exit-after 2


def test_reconnecting_client_gives_up_when_retrying_cannot_help(
        programs: list[Program], tmp_path: Path, implementation: str) -> None:
    """Refused with 3000 (no token): exit status 1 after one attempt, no retry."""
    server = start(programs, tmp_path, implementation, str(EXAMPLES / "token_auth.py"),
                   "serve", "--port", "0", EXAMPLE_TOKEN_SECRET=SECRET)
    port = server.expect(r"ws://127\.0\.0\.1:(\d+)/").group(1)
    client = start(programs, tmp_path, implementation,
                   str(EXAMPLES / "reconnecting_client.py"), "--url", f"ws://127.0.0.1:{port}/")
    client.expect(r'"status": "connected"')
    assert client.wait() == 1
    assert "giving up: closed with 3000 'token required'" in client.log.read_text()
    assert not any("disconnected" in line for line in client.seen)


# -- (d) the chat with Redis and two workers ----------------------------------------
@pytest.mark.redis
@pytest.mark.slow
def test_redis_workers_example(programs: list[Program], tmp_path: Path,
                               implementation: str) -> None:
    required_module("redis", "redis")
    redis = RedisServer(redis_server_binary()).start()
    try:
        launcher = start(programs, tmp_path, implementation,
                         str(EXAMPLES / "redis_workers.py"), "--redis", redis.url,
                         "--port", str(free_port()), "--clients", "6")
        workers = [launcher.expect(r"^worker: .*listening.*\(pid (\d+)[,)]").group(1)
                   for _ in range(2)]
        assert len(set(workers)) == 2
        sizes = [int(launcher.expect(r"^client \d joined 'lobby': size (\d+)").group(1))
                 for _ in range(6)]
        assert sizes == [1, 2, 3, 4, 5, 6]  # counted across both workers
        for _ in range(6):
            launcher.expect(r"^client \d got 6 of 6 messages$")
        launcher.expect(r'^\{"all_delivered": true\}$')
        launcher.expect(r"^workers stopped \(exit status 0\)$")
        assert launcher.wait() == 0
    finally:
        redis.stop()


# -- (e) a Starlette application broadcasting to our rooms ---------------------------
def test_starlette_app_broadcasts_to_rooms_from_http_handlers(
        programs: list[Program], tmp_path: Path, implementation: str) -> None:
    required_module("starlette", "examples")
    required_module("uvicorn", "examples")
    http_port, ws_port = free_port(), free_port()
    app = start(programs, tmp_path, implementation, str(EXAMPLES / "starlette_app.py"),
                "--http-port", str(http_port), "--ws-port", str(ws_port))
    app.expect(rf"websockets on ws://127\.0\.0\.1:{ws_port}/rooms/<name>")
    app.expect(rf"http on http://127\.0\.0\.1:{http_port}/rooms")
    api = f"http://127.0.0.1:{http_port}"
    ws = f"ws://127.0.0.1:{ws_port}"

    async def main() -> list[rw.WebSocketConnection]:
        news = await rw.connect(f"{ws}/rooms/news")
        sports = await rw.connect(f"{ws}/rooms/sports")
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 10
            while True:  # on_connect (the join) may still be running after the 101
                async with http.get(f"{api}/rooms") as response:
                    assert response.status == 200
                    listed = await response.json()
                if listed == {"news": 1, "sports": 1} or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
            assert listed == {"news": 1, "sports": 1}

            async with http.post(f"{api}/rooms/news/messages",
                                 json={"text": "breaking"}) as response:
                assert (response.status, await response.json()) == (
                    200, {"room": "news", "delivered": 1})
            async with http.post(f"{api}/rooms/sports/messages",
                                 json={"text": "goal"}) as response:
                assert (await response.json())["delivered"] == 1
            async with http.post(f"{api}/rooms/empty/messages", json={}) as response:
                assert (await response.json()) == {"room": "empty", "delivered": 0}
            for body in (b"not json", b"[1, 2]"):
                async with http.post(f"{api}/rooms/news/messages", data=body) as response:
                    assert response.status == 400
        assert await next_json(news) == {"room": "news", "text": "breaking"}
        # The first thing sports gets is its own message: news never reached it.
        assert await next_json(sports) == {"room": "sports", "text": "goal"}

        elsewhere = await rw.connect(f"{ws}/chat")
        assert await closed_with(elsewhere) == (1008, "connect to /rooms/<name>")
        return [news, sports]

    loop = asyncio.new_event_loop()
    try:
        conns = loop.run_until_complete(asyncio.wait_for(main(), 60))
        app.proc.send_signal(signal.SIGTERM)  # uvicorn stops, the lifespan closes our server

        async def closed() -> None:
            for conn in conns:
                assert (await closed_with(conn))[0] == 1001

        loop.run_until_complete(asyncio.wait_for(closed(), 30))
    finally:
        loop.close()
    app.expect("^stopped$")
    assert app.wait() == 0
