"""Harness of the hostile-client suite: a real server in a child process, its
memory measured with psutil, blocking raw WebSocket clients, and a bystander that
times its round trips while an attack runs.

Everything here talks to 127.0.0.1 only.  The child runs the fan-out
implementation of the suite's ``implementation`` fixture
(``REINHARDT_WS_NO_EXTENSIONS=1`` for the Python twin).
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import select
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil

import reinhardt_ws

MiB = 1024 * 1024

SRC = Path(reinhardt_ws.__file__).resolve().parents[1]
SERVER_APP = Path(__file__).resolve().with_name("server_app.py")

TEXT, BINARY, CLOSE, PING, PONG, CONT = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0

#: Bystander round trips (seconds) the suite tolerates while an attack runs.
BYSTANDER_LIMIT = 0.25


# -- the server process -----------------------------------------------------------------
def child_env(implementation: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("REINHARDT_WS_NO_EXTENSIONS", "PYTHONPATH")}
    env["PYTHONPATH"] = str(SRC)
    if implementation == "python":
        env["REINHARDT_WS_NO_EXTENSIONS"] = "1"
    return env


class ServerProcess:
    """A server in a child process: ``python -m reinhardt_ws ...`` (``cli()``) or
    ``tests/hostile/server_app.py`` (``app()``), on 127.0.0.1 and a free port.

    Its stderr goes to a file (``stderr_bytes()`` measures it); ``rss()`` is the
    child's resident set size.
    """

    def __init__(self, argv: list[str], implementation: str, stderr_path: Path) -> None:
        self.argv = argv
        self.implementation = implementation
        self.stderr_path = stderr_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.first_line = ""

    @classmethod
    def cli(cls, command: str, implementation: str, tmp_path: Path, *args: str
            ) -> ServerProcess:
        return cls([sys.executable, "-m", "reinhardt_ws", command, "--port", "0", *args],
                   implementation, tmp_path / f"{command}-stderr.txt")

    @classmethod
    def app(cls, name: str, implementation: str, tmp_path: Path, *args: str) -> ServerProcess:
        return cls([sys.executable, str(SERVER_APP), name, "--port", "0", *args],
                   implementation, tmp_path / f"{name}-stderr.txt")

    def __enter__(self) -> ServerProcess:
        with self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=err,
                                         env=child_env(self.implementation),
                                         cwd=str(SRC.parent))
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 20)
        line = self.proc.stdout.readline().decode("utf-8", "replace") if ready else ""
        match = re.search(r"listening on ws://[^:]+:(\d+)/", line)
        if match is None:
            self.__exit__(None, None, None)
            raise AssertionError(f"server did not start: {line!r}\n"
                                 f"{self.stderr_path.read_text(errors='replace')}")
        self.first_line = line.strip()
        self.port = int(match.group(1))
        impl = re.search(r"implementation (\w+)", line)
        if impl is not None:
            assert impl.group(1) == self.implementation, line
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss(self) -> int:
        return int(psutil.Process(self.pid).memory_info().rss)

    def stderr_bytes(self) -> int:
        return self.stderr_path.stat().st_size

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def http_json(self, path: str, timeout: float = 10.0) -> Any:
        """GET *path* from the server's plain-HTTP side channel (server_app.py)."""
        url = f"http://127.0.0.1:{self.port}{path}"
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return json.loads(answer.read())


class RssSampler:
    """Samples a process's RSS every *interval* seconds in a thread; ``peak`` and
    ``growth`` (peak minus the RSS when sampling started).  *on_over(growth)* is
    called once when the growth passes *cap* (to stop an attack that already
    proved its point before it exhausts the machine)."""

    def __init__(self, server: ServerProcess, interval: float = 0.05, cap: int | None = None,
                 on_over: Callable[[int], object] | None = None) -> None:
        self.server = server
        self.interval = interval
        self.cap = cap
        self.on_over = on_over
        self.baseline = server.rss()
        self.peak = self.baseline
        self.last = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._fired = False

    @property
    def growth(self) -> int:
        return self.peak - self.baseline

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rss = self.server.rss()
            except psutil.Error:
                return
            self.last = rss
            self.peak = max(self.peak, rss)
            if (self.cap is not None and not self._fired and self.on_over is not None
                    and self.growth > self.cap):
                self._fired = True
                self.on_over(self.growth)
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


# -- frames -------------------------------------------------------------------------------
ZERO_MASK = b"\x00\x00\x00\x00"


def mask_payload(payload: bytes, mask: bytes) -> bytes:
    if not payload or mask == ZERO_MASK:
        return payload
    n = len(payload)
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(
        n, "little")


def frame(opcode: int, payload: bytes = b"", fin: bool = True, rsv: int = 0,
          mask: bytes | None = None, masked: bool = True) -> bytes:
    """One client frame with whatever bits the attack wants.  ``mask=ZERO_MASK``
    costs no CPU for big payloads (the server cannot tell it from a random key)."""
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    bit = 0x80 if masked else 0
    n = len(payload)
    if n < 126:
        header = bytes((first, bit | n))
    elif n < 65536:
        header = bytes((first, bit | 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((first, bit | 127)) + n.to_bytes(8, "big")
    if not masked:
        return header + payload
    mask = os.urandom(4) if mask is None else mask
    return header + mask + mask_payload(payload, mask)


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return code.to_bytes(2, "big") + reason


def handshake_request(port: int, path: str = "/") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n").encode()


class Closed(Exception):
    """The server ended the TCP connection."""


class SyncClient:
    """A blocking raw WebSocket client: sends any frame, reads server frames."""

    def __init__(self, sock: socket.socket, buffered: bytes = b"") -> None:
        self.sock = sock
        self.buf = bytearray(buffered)

    @classmethod
    def connect(cls, port: int, path: str = "/", rcvbuf: int | None = None,
                timeout: float = 5.0) -> SyncClient:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if rcvbuf is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(timeout)
            sock.connect(("127.0.0.1", port))
            sock.sendall(handshake_request(port, path))
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    raise Closed(f"no handshake answer: {data!r}")
                data += chunk
        except BaseException:
            sock.close()
            raise
        head, _, rest = data.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            sock.close()
            raise AssertionError(f"handshake refused: {head!r}")
        return cls(sock, rest)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_text(self, text: str) -> None:
        self.sock.sendall(frame(TEXT, text.encode()))

    def _fill(self, n: int, deadline: float) -> None:
        while len(self.buf) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no frame in time")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(max(65536, n - len(self.buf)))
            except ConnectionResetError as exc:
                raise Closed("reset") from exc
            if not chunk:
                raise Closed("EOF")
            self.buf += chunk

    def recv_frame(self, timeout: float = 5.0) -> tuple[int, bytes]:
        """(opcode, payload) of the next server frame; ``Closed`` at EOF or reset."""
        deadline = time.monotonic() + timeout
        self._fill(2, deadline)
        b0, b1 = self.buf[0], self.buf[1]
        n, offset = b1 & 0x7F, 2
        if n == 126:
            self._fill(4, deadline)
            n, offset = int.from_bytes(self.buf[2:4], "big"), 4
        elif n == 127:
            self._fill(10, deadline)
            n, offset = int.from_bytes(self.buf[2:10], "big"), 10
        self._fill(offset + n, deadline)
        payload = bytes(self.buf[offset:offset + n])
        del self.buf[:offset + n]
        return b0 & 0x0F, payload

    def recv_json(self, timeout: float = 5.0) -> Any:
        """The next text frame as JSON (control frames skipped)."""
        while True:
            opcode, payload = self.recv_frame(timeout)
            if opcode == TEXT:
                return json.loads(payload)
            if opcode == CLOSE:
                raise Closed(f"close frame {payload[:2].hex()}")

    def read_until_close(self, timeout: float) -> int | str | None:
        """Read (and drop) frames until the server's close frame: its code, None for
        an empty one, "EOF" / "reset" when TCP ended without one, "open" when
        nothing ended within *timeout*."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                opcode, payload = self.recv_frame(max(0.001, deadline - time.monotonic()))
            except Closed as exc:
                return str(exc)
            except TimeoutError:
                return "open"
            if opcode == CLOSE:
                return int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None

    def close(self) -> None:
        self.sock.close()


def chat(kind: str, room: str, data: Any = None) -> str:
    request: dict[str, Any] = {"type": kind, "room": room}
    if kind == "message":
        request["data"] = data
    return json.dumps(request, separators=(",", ":"))  # compact, as browsers send


# -- the bystander ------------------------------------------------------------------------
def percentile(samples: list[float], fraction: float) -> float:
    if not samples:
        return math.inf
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


class Bystander:
    """A well-behaved client timing one round trip every *interval* seconds, in a
    thread: an echo (``mode="echo"``) or a chat message to a room of its own that
    the server broadcasts back (``mode="chat"``)."""

    def __init__(self, port: int, mode: str = "echo", interval: float = 0.05,
                 timeout: float = 3.0) -> None:
        self.port = port
        self.mode = mode
        self.interval = interval
        self.timeout = timeout
        self.samples: list[float] = []
        self.errors: list[str] = []
        self.room = f"bystander-{os.getpid()}-{id(self)}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.client = SyncClient.connect(port)
        if mode == "chat":
            self.client.send_text(chat("join", self.room))
            answer = self.client.recv_json()
            assert answer["data"]["event"] == "joined", answer

    def _round_trip(self, token: str) -> None:
        client = self.client
        if self.mode == "echo":
            client.send_text(token)
            while True:
                opcode, payload = client.recv_frame(self.timeout)
                if opcode == CLOSE:
                    raise Closed(f"close frame {payload[:2].hex()}")
                if opcode == TEXT and payload.decode() == token:
                    return
        else:
            client.send_text(chat("message", self.room, token))
            while True:
                event = client.recv_json(self.timeout)["data"]
                if event.get("event") == "message" and event.get("data") == token:
                    return

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            start = time.perf_counter()
            try:
                self._round_trip(f"rtt-{n}")
            except TimeoutError:
                self.samples.append(self.timeout)
                self.errors.append(f"round trip {n} over {self.timeout}s")
                return
            except (Closed, OSError) as exc:
                self.errors.append(f"round trip {n}: {exc!r}")
                return
            self.samples.append(time.perf_counter() - start)
            self._stop.wait(self.interval)

    def __enter__(self) -> Bystander:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join(self.timeout + 2)
            self.client.close()

    def summary(self) -> str:
        s = self.samples
        if not s:
            return "bystander: no samples " + "; ".join(self.errors)
        return (f"bystander ({self.mode}): {len(s)} round trips, p50 "
                f"{percentile(s, 0.5) * 1000:.1f} ms, p99 {percentile(s, 0.99) * 1000:.1f} ms, "
                f"max {max(s) * 1000:.1f} ms" + (f"; errors: {self.errors}" if self.errors
                                                 else ""))

    def check(self, min_samples: int = 10, limit: float = BYSTANDER_LIMIT) -> list[str]:
        """What went wrong for the bystander (empty: nothing): errors, too few
        samples, or a p99 round trip at or over *limit*."""
        problems = list(self.errors)
        if len(self.samples) < min_samples:
            problems.append(f"only {len(self.samples)} round trips (< {min_samples})")
        p99 = percentile(self.samples, 0.99)
        if p99 >= limit:
            problems.append(f"p99 round trip {p99 * 1000:.0f} ms >= {limit * 1000:.0f} ms")
        return problems


def report(title: str, **numbers: Any) -> None:
    """Print the measured numbers of an attack (run pytest with -s to see them)."""
    shown = ", ".join(f"{k}={_fmt(v)}" for k, v in numbers.items())
    print(f"\n[hostile] {title}: {shown}", flush=True)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def mib(n: int) -> str:
    return f"{n / MiB:.1f} MiB"


def until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def batches(total: int, size: int) -> Iterator[int]:
    while total > 0:
        yield min(size, total)
        total -= size
