"""Parent side of the benchmark: start a contestant server and its client processes,
run broadcast phases, measure the server process, and fail loudly on any loss.

An :class:`Arena` is one server process (a contestant) with N connected clients
spread over client processes (``client_worker.py``).  :meth:`Arena.phase` arms
every client with the exact number of bytes it must receive, tells the server to
broadcast, waits until every client has them (or fails), and reads the server's
CPU time (``getrusage`` inside the server, so the figure covers the server process
and nothing else) before and after.  A phase that loses, corrupts or over-delivers
a byte raises :class:`PhaseFailed`: a lossy run is a failed run, not a fast one.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import math
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from . import wire

__all__ = [
    "CONTESTANT_SPECS",
    "Arena",
    "ArenaPool",
    "BenchError",
    "ContestantSpec",
    "PhaseFailed",
    "PhaseResult",
    "build_floor",
]

HERE = Path(__file__).resolve().parent
BENCH_DIR = HERE.parent
SERVER_MAIN = HERE / "server_main.py"
NODE_DIR = BENCH_DIR / "node"
NODE_SERVER = NODE_DIR / "fanout_server.js"
SOCKETIFY_MAIN = HERE / "socketify_main.py"  # socketify runs its own loop: its own process
CLIENT_WORKER = HERE / "client_worker.py"
FLOOR_SOURCE = BENCH_DIR / "floor.c"


class BenchError(RuntimeError):
    """The harness could not run a scenario (a process died, timed out, refused)."""


class PhaseFailed(AssertionError):
    """A broadcast phase did not deliver every byte to every client."""


@dataclasses.dataclass(frozen=True)
class ContestantSpec:
    """How to start one contestant's server process."""

    id: str  # as it appears in test ids and the report
    server: str  # "floor" or a key of harness.contestants.CONTESTANTS
    env: tuple[tuple[str, str | None], ...] = ()  # None removes the variable
    options: tuple[tuple[str, str], ...] = ()
    expect_implementation: str | None = None  # checked against the server's info
    needs: str | None = None  # module that must import for this contestant to run
    rooms: bool = False  # the server process speaks ROOMS / BCASTROOMS
    # Why this contestant cannot run here (None: it can); for non-Python servers.
    probe: Callable[[], str | None] | None = None

    def absent_reason(self) -> str | None:
        """Why this contestant cannot run on this machine, or None if it can."""
        if self.needs and importlib.util.find_spec(self.needs) is None:
            return f"{self.needs} is not importable: install it to run {self.id}"
        return self.probe() if self.probe is not None else None

    def with_options(self, **options: Any) -> ContestantSpec:
        merged = dict(self.options)
        merged.update({k: str(v) for k, v in options.items() if v is not None})
        return dataclasses.replace(self, options=tuple(sorted(merged.items())))


#: Every contestant, in report order; the floor first so that ratios can be
#: computed as soon as a contestant finishes.
CONTESTANT_SPECS: tuple[ContestantSpec, ...] = (
    ContestantSpec("floor", "floor"),
    ContestantSpec(
        "reinhardt-cy", "reinhardt",
        env=(("REINHARDT_WS_NO_EXTENSIONS", None),),
        expect_implementation="cython", needs="reinhardt_ws", rooms=True,
    ),
    ContestantSpec(
        "reinhardt-py", "reinhardt",
        env=(("REINHARDT_WS_NO_EXTENSIONS", "1"),),
        expect_implementation="python", needs="reinhardt_ws", rooms=True,
    ),
    ContestantSpec("picows", "picows", needs="picows", rooms=True),
    ContestantSpec("websockets", "websockets", needs="websockets", rooms=True),
    ContestantSpec("aiohttp", "aiohttp", needs="aiohttp", rooms=True),
    ContestantSpec("node-ws", "node", rooms=True, probe=lambda: node_absent_reason()),
    ContestantSpec("socketify", "socketify", needs="socketify", rooms=True,
                   probe=lambda: socketify_absent_reason()),
)


@functools.cache
def node_absent_reason() -> str | None:
    """Why Node's ``ws`` + ``bufferutil`` (pinned in bench/node/package.json) cannot
    run here, or None: ``node`` on PATH, both packages installed at the pinned versions
    (``npm ci`` in bench/node), bufferutil's native module loads."""
    node = shutil.which("node")
    if node is None:
        return "node is not on PATH"
    pinned = json.loads((NODE_DIR / "package.json").read_text())["dependencies"]
    script = (
        "const want = JSON.parse(process.argv[1]); const got = {};"
        "for (const name of Object.keys(want)) {"
        "  try { got[name] = require(name + '/package.json').version; require(name); }"
        "  catch (e) { got[name] = 'missing: ' + String(e.message).split('\\n')[0]; } }"
        "process.stdout.write(JSON.stringify(got));"
    )
    try:
        proc = subprocess.run([node, "-e", script, json.dumps(pinned)], cwd=NODE_DIR,
                              capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"node does not run: {exc}"
    if proc.returncode != 0:
        return f"node failed: {proc.stderr.strip()[:300]}"
    got = json.loads(proc.stdout)
    wrong = [f"{name} {got.get(name)} (pinned {version})" for name, version in pinned.items()
             if got.get(name) != version]
    if wrong:
        return f"{', '.join(wrong)}: run `npm ci` in bench/node"
    return None


@functools.cache
def socketify_absent_reason() -> str | None:
    """Why socketify, installed, does not load (no libuv1, a wrong wheel...), or None.
    Imported in a fresh interpreter, so that a native library that crashes on load
    cannot take the benchmark session with it."""
    proc = subprocess.run([sys.executable, "-c", "import socketify"], capture_output=True,
                          text=True, timeout=120, check=False)
    if proc.returncode == 0:
        return None
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    return f"socketify does not import: {lines[-1] if lines else f'exit status {proc.returncode}'}"


def build_floor(out_dir: Path) -> Path:
    """Compile floor.c with the system compiler (``cc -O2``); return the binary."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise BenchError("no C compiler (cc/gcc) on PATH: cannot build the floor")
    out = out_dir / "floor"
    proc = subprocess.run(
        [cc, "-O2", "-Wall", "-o", str(out), str(FLOOR_SOURCE)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    if proc.returncode != 0:
        raise BenchError(f"compiling floor.c failed:\n{proc.stderr}")
    return out


class LineProcess:
    """A child speaking one-line commands and replies over stdin/stdout."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.stderr"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, env=env,
        )
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self.fd = self.proc.stdout.fileno()
        os.set_blocking(self.fd, False)
        self._buf = b""
        self.lines: deque[str] = deque()
        self.eof = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write((line + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError) as exc:
            raise BenchError(f"{self.name} is gone ({exc}); {self.stderr_tail()}") from exc

    def pump(self) -> None:
        """Move whatever the child wrote into ``lines``."""
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                return
            if not chunk:
                self.eof = True
                return
            self._buf += chunk
            while b"\n" in self._buf:
                raw, self._buf = self._buf.split(b"\n", 1)
                self.lines.append(raw.decode(errors="replace"))

    def read_line(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while not self.lines:
            if self.eof:
                raise BenchError(
                    f"{self.name} exited (rc={self.proc.poll()}); {self.stderr_tail()}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(
                    f"{self.name}: no reply within {timeout:.0f}s; {self.stderr_tail()}")
            select.select([self.fd], [], [], min(left, 1.0))
            self.pump()
        return self.lines.popleft()

    def expect(self, word: str, timeout: float) -> list[str]:
        line = self.read_line(timeout)
        parts = line.split(" ", 1 if word == "PORT" else -1)
        if parts[0] != word:
            raise BenchError(f"{self.name}: expected {word}, got {line!r}; {self.stderr_tail()}")
        return parts[1:] if word != "PORT" else parts[1].split(" ", 1)

    def stderr_tail(self, n: int = 2000) -> str:
        try:
            self._log.flush()
            data = self.log_path.read_bytes()[-n:].decode(errors="replace")
        except OSError:
            data = ""
        return f"stderr of {self.name}: {data.strip() or '(empty)'}"

    def close(self, timeout: float = 5.0) -> None:
        if self.proc.poll() is None:
            try:
                self.send("QUIT")
            except BenchError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        self._log.close()
        try:
            if self.log_path.stat().st_size == 0:
                self.log_path.unlink()
        except OSError:
            pass

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.close()


def read_proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of *pid*, in bytes (Linux /proc)."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0]) * 1024
    return out


@dataclasses.dataclass
class PhaseResult:
    contestant: str
    n: int  # clients that must receive everything
    size: int
    batch: int
    messages: int
    deliveries: int
    cpu_s: float  # server process user + system CPU from BCAST to the last client's receipt
    sys_s: float  # of cpu_s, the system (kernel) part
    wall_s: float  # from BCAST to the last client's receipt
    send_wall_s: float  # server's own time in its broadcast loop
    complete: bool
    delivered: int = 0  # as the server reports it
    dropped: int = 0
    failed: int = 0
    short_sockets: int = 0
    missing_bytes: int = 0
    client_cpu_s: float = 0.0
    rss_before: int = 0
    rss_peak: int = 0  # VmHWM after the phase
    reason: str = ""
    wire_bytes: int = 0  # deflate mode: bytes of the frames that carried the messages
    compressed_messages: int = 0  # deflate mode: of the deliveries, those sent compressed
    rate: float = 0.0  # paced (PACE) phase: messages per second, open loop; 0: BCAST
    late_p99_s: float = math.nan  # paced phase: p99 of (broadcast start - due time)
    late_max_s: float = math.nan  # paced phase: the largest of those

    @property
    def cpu_us_per_delivery(self) -> float:
        return 1e6 * self.cpu_s / self.deliveries if self.deliveries else math.nan

    @property
    def sys_us_per_delivery(self) -> float:
        return 1e6 * self.sys_s / self.deliveries if self.deliveries else math.nan

    @property
    def deliveries_per_s(self) -> float:
        return self.deliveries / self.wall_s if self.wall_s > 0 else math.nan

    @property
    def deliveries_per_cpu_s(self) -> float:
        return self.deliveries / self.cpu_s if self.cpu_s > 0 else math.nan

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(
            cpu_us_per_delivery=self.cpu_us_per_delivery,
            deliveries_per_s=self.deliveries_per_s,
            deliveries_per_cpu_s=self.deliveries_per_cpu_s,
        )
        return d


class Arena:
    """One contestant server process with *n* connected bench clients."""

    def __init__(
        self,
        spec: ContestantSpec,
        n: int,
        *,
        floor_binary: Path | None,
        loop: str = "uvloop",
        clients_per_process: int = 2500,
        verify: bool = True,
        poll_interval: float = 0.0,
        log_dir: Path | None = None,
        deflate: str = "",
        payload: str = "binary",
        browser_headers: bool = False,
    ) -> None:
        """*deflate*: the clients offer this Sec-WebSocket-Extensions value and parse
        frames (the compression benchmark); *payload* is then the kind of message
        they expect ("json": wire.make_json_payload).  *browser_headers*: the
        clients' upgrades carry a browser's header fields (wire.BROWSER_HEADERS)."""
        self.spec = spec
        self.deflate = deflate
        self.browser_headers = browser_headers
        self.payload = payload
        self.negotiated = ""  # deflate mode: the 101's Sec-WebSocket-Extensions
        self.n = n
        self.floor_binary = floor_binary
        self.loop = loop
        self.clients_per_process = clients_per_process
        self.verify = verify
        self.poll_interval = poll_interval
        self.log_dir = Path(log_dir or tempfile.mkdtemp(prefix="bench-logs-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.server: LineProcess | None = None
        self.clients: list[LineProcess] = []
        self.info: dict[str, Any] = {}
        self.broken = False
        self.stalled = 0
        self.rss_empty = 0  # server RSS, listening, no client
        self.rss_connected = 0  # server RSS with n idle clients
        self.connect_s = 0.0
        self.room_count = 0  # after set_rooms(k): k

    # -- life cycle -----------------------------------------------------------------

    def _server_argv(self) -> tuple[list[str], dict[str, str]]:
        env = dict(os.environ)
        for key, value in self.spec.env:
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        if self.spec.server == "floor":
            if self.floor_binary is None:
                raise BenchError("the floor binary was not built")
            return [str(self.floor_binary)], env
        if self.spec.server == "node":
            node = shutil.which("node") or "node"
            argv = [node, "--expose-gc", str(NODE_SERVER)]
            for key, value in self.spec.options:
                argv += [f"--{key}", value]
            return argv, env
        if self.spec.server == "socketify":
            argv = [sys.executable, str(SOCKETIFY_MAIN), "--loop", self.loop]
        else:
            argv = [sys.executable, str(SERVER_MAIN), "--contestant", self.spec.server,
                    "--loop", self.loop]
        for key, value in self.spec.options:
            argv += ["--option", f"{key}={value}"]
        return argv, env

    def start(self, timeout: float = 180.0) -> Arena:
        try:
            self._start(timeout)
        except BaseException:
            self.broken = True
            self.close()
            raise
        return self

    def _start(self, timeout: float) -> None:
        argv, env = self._server_argv()
        tag = f"{self.spec.id}-n{self.n}-{os.getpid()}-{time.monotonic_ns() % 10**9}"
        self.server = LineProcess(f"server-{tag}", argv, env, self.log_dir)
        port_s, info = self.server.expect("PORT", 60)
        port = int(port_s)
        self.info = json.loads(info) if info else {}
        want = self.spec.expect_implementation
        if want and self.info.get("implementation") != want:
            raise BenchError(
                f"{self.spec.id}: asked for the {want} implementation, the server runs "
                f"{self.info.get('implementation')!r}: {self.info}"
            )
        self.server.send("GC")
        self.server.expect("OK", 30)
        self.rss_empty = read_proc_status(self.server.pid)["VmRSS"]

        t0 = time.monotonic()
        procs = max(1, math.ceil(self.n / self.clients_per_process))
        base, extra = divmod(self.n, procs)
        client_env = dict(os.environ)
        for i in range(procs):
            count = base + (1 if i < extra else 0)
            # asyncio's default listen backlog is 100: keep the handshakes in flight
            # below it, or dropped SYNs cost a 1 s retransmit each.
            argv = [sys.executable, str(CLIENT_WORKER), "--port", str(port), "--count", str(count),
                    "--connect-timeout", str(timeout), "--connect-batch", str(max(8, 64 // procs))]
            if not self.verify:
                argv.append("--no-verify")
            if self.deflate:
                argv += ["--deflate", self.deflate]
            if self.browser_headers:
                argv.append("--browser-headers")
            if self.poll_interval > 0:
                argv += ["--poll-interval", str(self.poll_interval)]
            self.clients.append(LineProcess(f"clients{i}-{tag}", argv, client_env, self.log_dir))
        # WAIT first: the floor accepts only while it handles WAIT.
        self.server.send(f"WAIT {self.n} {timeout:.0f}")
        for c in self.clients:
            ready = c.read_line(timeout)
            if not ready.startswith("READY "):
                raise BenchError(f"{c.name}: {ready}; {self.server.stderr_tail()}")
            if self.deflate:
                answer = ready.split(" ", 2)[2] if ready.count(" ") >= 2 else "-"
                if self.negotiated and answer != self.negotiated:
                    raise BenchError(f"client processes negotiated {self.negotiated!r} "
                                     f"and {answer!r}")
                self.negotiated = answer
        (count_s,) = self.server.expect("CONNECTED", timeout)
        if int(count_s) != self.n:
            raise BenchError(f"{self.spec.id}: server sees {count_s} of {self.n} clients")
        self.connect_s = time.monotonic() - t0
        self.server.send("GC")
        self.server.expect("OK", 30)
        time.sleep(0.2)
        self.rss_connected = read_proc_status(self.server.pid)["VmRSS"]

    def close(self) -> None:
        # Server first: then every client sees EOF at once instead of the server
        # working through thousands of closes.
        if self.server is not None:
            self.server.kill()
        for c in self.clients:
            c.close()
        self.clients = []
        self.server = None

    def __enter__(self) -> Arena:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- measurements ---------------------------------------------------------------

    def server_cpu(self) -> float:
        return sum(self.server_times())

    def server_times(self) -> tuple[float, float]:
        """The server process's user and system (kernel) CPU seconds so far."""
        assert self.server is not None
        self.server.send("STATS")
        ut, st, _maxrss = self.server.expect("STATS", 60)
        return float(ut), float(st)

    def set(self, key: str, value: object) -> None:
        """Change a setting of the contestant between phases (``SET``)."""
        assert self.server is not None
        self.server.send(f"SET {key} {value}")
        self.server.expect("OK", 30)

    def collect(self) -> None:
        """A full garbage collection in the server process (``GC``), so that a
        measurement that follows is not paused by one the previous phases made due."""
        assert self.server is not None
        self.server.send("GC")
        self.server.expect("OK", 30)

    def send_times(self) -> list[float]:
        """The server's monotonic time at each broadcast of the last phase
        (after ``set("record", 1)``)."""
        assert self.server is not None
        self.server.send("SENDTIMES")
        line = self.server.read_line(60)
        if not line.startswith("SENDTIMES "):
            raise BenchError(f"{self.spec.id}: SENDTIMES: {line!r}")
        return [float(t) for t in json.loads(line.split(" ", 1)[1])]

    def arrivals(self) -> list[list[float]]:
        """Per recorded socket (all client processes), the monotonic time at
        which each frame of the last phase had arrived whole."""
        out: list[list[float]] = []
        for c in self.clients:
            c.send("ARRIVALS")
            line = c.read_line(60)
            if not line.startswith("ARRIVALS "):
                raise BenchError(f"{c.name}: ARRIVALS: {line!r}")
            out.extend(json.loads(line.split(" ", 1)[1]))
        return out

    def stall(self, k: int = 1) -> None:
        """Make the first *k* sockets of the first client process stop reading."""
        self.clients[0].send(f"STALL {k}")
        self.clients[0].expect("OK", 30)
        self.stalled += k

    def set_rooms(self, k: int) -> None:
        """Partition the open connections into *k* rooms (``ROOMS k``: connection i in
        accept order joins room i % k); for :meth:`phase` with ``to_rooms=True``."""
        if not self.spec.rooms:
            raise BenchError(f"{self.spec.id} does not speak ROOMS")
        assert self.server is not None
        self.server.send(f"ROOMS {k}")
        self.server.expect("OK", 300)
        self.room_count = k

    def reset_peak_rss(self) -> bool:
        """Reset the server's VmHWM to its current RSS (Linux >= 4.0); False if refused."""
        assert self.server is not None
        try:
            with open(f"/proc/{self.server.pid}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            return False
        return True

    def rss(self) -> dict[str, int]:
        assert self.server is not None
        return read_proc_status(self.server.pid)

    def phase(
        self,
        messages: int,
        size: int,
        batch: int,
        *,
        timeout: float,
        stall_timeout: float = 15.0,
        sample_rss: bool = False,
        to_rooms: bool = False,
        record: int = 0,
        rate: float = 0.0,
    ) -> PhaseResult:
        """Broadcast *messages* messages of *size* bytes, *batch* per loop iteration.

        With *to_rooms* (after :meth:`set_rooms`), message j goes to room j % k only
        (``BCASTROOMS``): every socket then receives messages / k frames.
        With *record* > 0, the first *record* sockets of each client process note
        the arrival of each frame (:meth:`arrivals`).
        With *rate* > 0 (batch 1, not *to_rooms*), the server broadcasts open loop
        at that rate (``PACE``: message j due at t0 + j / rate, see
        harness/pacer.py): the result then carries the server's lateness
        (``late_p99_s``, ``late_max_s``) and :meth:`send_times` the due times.
        Returns the measurements; raises :class:`PhaseFailed` when a client is short.
        """
        if self.broken or self.server is None:
            raise BenchError("this arena is broken; start a new one")
        if messages % batch:
            raise ValueError("messages must be a multiple of batch")
        if to_rooms and (not self.room_count or messages % self.room_count):
            raise ValueError("to_rooms needs set_rooms(k) first and messages a multiple of k")
        if rate and (rate < 0 or batch != 1 or to_rooms):
            raise ValueError("a paced phase (rate > 0) has batch 1 and no rooms")
        try:
            return self._phase(messages, size, batch, timeout, stall_timeout, sample_rss,
                               to_rooms, record, rate)
        except BaseException:
            self.broken = True
            raise

    def _phase(
        self, messages: int, size: int, batch: int, timeout: float, stall_timeout: float,
        sample_rss: bool, to_rooms: bool = False, record: int = 0, rate: float = 0.0,
    ) -> PhaseResult:
        server = self.server
        assert server is not None
        healthy = self.n - self.stalled
        per_socket = messages // self.room_count if to_rooms else messages
        nbytes = per_socket * wire.frame_len(size)
        rss_before = self.rss()["VmRSS"]
        user0, sys0 = self.server_times()
        for c in self.clients:
            if self.deflate:
                c.send(f"EXPECTMSG {messages} {size} {self.payload} {timeout:.1f} "
                       f"{stall_timeout:.1f}")
            else:
                c.send(f"EXPECT {nbytes} {size} {timeout:.1f} {stall_timeout:.1f}"
                       + (f" {record}" if record else ""))
        for c in self.clients:
            c.expect("ARMED", 30)
        t0 = time.perf_counter()
        if rate > 0:
            server.send(f"PACE {messages} {size} {rate!r}")
        else:
            server.send(f"{'BCASTROOMS' if to_rooms else 'BCAST'} {messages} {size} {batch}")

        sent: list[str] | None = None
        outcomes: dict[str, list[str]] = {}
        t_last = t0
        hard_deadline = time.monotonic() + timeout + stall_timeout + 30
        procs = [server, *self.clients]
        peak_sampled = rss_before
        t_last_give_up = time.monotonic()
        while ((sent is None or len(outcomes) < len(self.clients))
               and time.monotonic() < hard_deadline):
            gave_up = (len(outcomes) == len(self.clients)
                       and any(o[0] != "DONE" for o in outcomes.values()))
            if gave_up and time.monotonic() > t_last_give_up + 5:
                # Clients gave up: the server had 5 s more to finish; stop waiting.
                break
            fds = [p.fd for p in procs if not p.eof]
            ready, _, _ = select.select(fds, [], [], 0.05 if sample_rss else 0.5)
            for p in procs:
                if p.fd in ready:
                    p.pump()
            if sample_rss:
                peak_sampled = max(peak_sampled, self.rss()["VmRSS"])
            while server.lines:
                line = server.lines.popleft()
                if line.startswith("SENT "):
                    sent = line.split()[1:]
                elif line.startswith("ERROR"):
                    raise PhaseFailed(f"{self.spec.id}: server: {line}")
            for c in self.clients:
                while c.lines:
                    parts = c.lines.popleft().split()
                    if parts[0] in ("DONE", "SHORT"):
                        outcomes[c.name] = parts
                        t_last = time.perf_counter()
                        t_last_give_up = time.monotonic()
                    else:
                        raise BenchError(f"{c.name}: unexpected {' '.join(parts)!r}")
                if c.eof and c.name not in outcomes:
                    raise BenchError(f"{c.name} died; {c.stderr_tail()}")
            if server.eof:
                raise BenchError(f"server died; {server.stderr_tail()}")
        user1, sys1 = self.server_times()
        status = self.rss()

        short = missing = 0
        reasons: list[str] = []
        client_cpu = 0.0
        wire_bytes = compressed = 0
        for c in self.clients:
            o = outcomes.get(c.name)
            if o is None:
                reasons.append(f"{c.name}: no answer")
                short += 1
            elif o[0] == "DONE":
                client_cpu += float(o[1])
                if self.deflate:
                    wire_bytes += int(o[2])
                    compressed += int(o[3])
            else:
                short += int(o[1])
                missing += int(o[2])
                reasons.append(f"{c.name}: short={o[1]} missing={o[2]} closed={o[3]} "
                               f"corrupt={o[4]} over={o[5]} ({o[6]})")
        if sent is None:
            reasons.append("the server's broadcast loop did not finish")
        delivered, dropped, failed = (int(x) for x in sent[1:4]) if sent else (0, 0, 0)
        result = PhaseResult(
            contestant=self.spec.id, n=healthy, size=size, batch=batch, messages=messages,
            deliveries=healthy * per_socket, cpu_s=(user1 + sys1) - (user0 + sys0),
            sys_s=sys1 - sys0, wall_s=t_last - t0,
            send_wall_s=float(sent[0]) if sent else math.nan,
            complete=not reasons, delivered=delivered, dropped=dropped, failed=failed,
            short_sockets=short, missing_bytes=missing, client_cpu_s=client_cpu,
            rss_before=rss_before, rss_peak=max(status["VmHWM"], peak_sampled),
            reason="; ".join(reasons),
            wire_bytes=wire_bytes if self.deflate else healthy * nbytes,
            compressed_messages=compressed,
            rate=rate,
            late_p99_s=float(sent[4]) if rate > 0 and sent and len(sent) > 5 else math.nan,
            late_max_s=float(sent[5]) if rate > 0 and sent and len(sent) > 5 else math.nan,
        )
        if not result.complete:
            self.broken = True
        return result


class ArenaPool:
    """Keeps arenas alive while tests ask for the same ones: at most one contestant
    arena and one floor arena (the floor is measured next to every contestant, in
    the same minutes, so that a noisy machine moves both alike).

    Bench tests are sorted (conftest) so that all tests of one (contestant, N) run
    back to back; connecting 5000 clients then happens once per contestant.
    """

    def __init__(self, **arena_kwargs: Any) -> None:
        self.arena_kwargs = arena_kwargs
        self.current: Arena | None = None
        self.floor_arena: Arena | None = None
        self.failures: dict[tuple[str, int], str] = {}

    def _reuse(self, arena: Arena | None, spec: ContestantSpec, n: int) -> bool:
        return arena is not None and (arena.spec, arena.n) == (spec, n) and not arena.broken

    def _start(self, spec: ContestantSpec, n: int) -> Arena:
        key = (spec.id, n)
        if key in self.failures:
            raise BenchError(f"{spec.id} at N={n} already failed to start: {self.failures[key]}")
        try:
            return Arena(spec, n, **self.arena_kwargs).start()
        except BenchError as exc:
            self.failures[key] = str(exc)[:500]
            raise

    def get(self, spec: ContestantSpec, n: int) -> Arena:
        if spec.server == "floor":
            return self.floor(n, spec)
        if self._reuse(self.current, spec, n):
            assert self.current is not None
            return self.current
        self.release(floor=self.floor_arena is not None and self.floor_arena.n != n)
        self.current = self._start(spec, n)
        return self.current

    def floor(self, n: int, spec: ContestantSpec | None = None) -> Arena:
        """The floor's arena for *n* clients (kept beside the contestant's)."""
        spec = spec or next(s for s in CONTESTANT_SPECS if s.server == "floor")
        if self._reuse(self.floor_arena, spec, n):
            assert self.floor_arena is not None
            return self.floor_arena
        if self.current is not None and self.current.n != n:
            self.release(floor=False)
        if self.floor_arena is not None:
            self.floor_arena.close()
            self.floor_arena = None
        self.floor_arena = self._start(spec, n)
        return self.floor_arena

    def fresh(self, spec: ContestantSpec, n: int) -> Arena:
        """A new arena that the pool does not keep (the caller closes it)."""
        self.release(floor=True)
        return Arena(spec, n, **self.arena_kwargs)

    def release(self, floor: bool = True) -> None:
        if self.current is not None:
            self.current.close()
            self.current = None
        if floor and self.floor_arena is not None:
            self.floor_arena.close()
            self.floor_arena = None


def median(values: Iterable[float]) -> float:
    vals = sorted(v for v in values if not math.isnan(v))
    if not vals:
        return math.nan
    mid = len(vals) // 2
    return vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2
