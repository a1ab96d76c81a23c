"""Parent side of the echo benchmark: one echo server process and one client
process (``echo_client.py``) per contestant, phases of a fixed duration, and the
server's CPU time read over its control channel before and after each phase.

An :class:`EchoArena` stays up for the whole run, so that the rounds of the
contestants can alternate on the same connections (a shared machine's weather
changes from minute to minute).  A phase whose clients see a wrong, missing or
extra byte raises :class:`~harness.arena.PhaseFailed`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from .arena import BenchError, LineProcess, PhaseFailed

__all__ = ["ECHO_SPECS", "EchoArena", "EchoResult", "EchoSpec", "absent_reason"]

HERE = Path(__file__).resolve().parent
ECHO_SERVER = HERE / "echo_server.py"
ECHO_CLIENT = HERE / "echo_client.py"
NODE_DIR = HERE.parent / "node"


@dataclasses.dataclass(frozen=True)
class EchoSpec:
    """How to start one echo contestant."""

    id: str
    server: str  # a key of echo_server.ECHO_SERVERS, or "node-ws"
    loop: str = "uvloop"  # of the asyncio servers
    env: tuple[tuple[str, str | None], ...] = ()
    needs: str | None = None  # module that must import
    expect_implementation: str | None = None


#: Report order; reinhardt's contestants first, the references after.
ECHO_SPECS: tuple[EchoSpec, ...] = (
    EchoSpec("reinhardt-cy", "reinhardt", env=(("REINHARDT_WS_NO_EXTENSIONS", None),),
             needs="reinhardt_ws", expect_implementation="cython"),
    EchoSpec("reinhardt-cy-asyncio", "reinhardt", loop="asyncio",
             env=(("REINHARDT_WS_NO_EXTENSIONS", None),), needs="reinhardt_ws",
             expect_implementation="cython"),
    EchoSpec("reinhardt-py", "reinhardt", env=(("REINHARDT_WS_NO_EXTENSIONS", "1"),),
             needs="reinhardt_ws", expect_implementation="python"),
    EchoSpec("picows", "picows", needs="picows"),
    EchoSpec("socketify", "socketify", needs="socketify"),
    EchoSpec("node-ws", "node-ws"),
    EchoSpec("websockets", "websockets", needs="websockets"),
)

#: ``BENCH_ECHO_BASELINE=/path/to/an/other/checkout/src`` adds ``reinhardt-baseline``:
#: the same echo from that tree (its extension built in place), for a before/after
#: comparison within one run.
BASELINE_SRC = os.environ.get("BENCH_ECHO_BASELINE", "")
if BASELINE_SRC:
    ECHO_SPECS = (*ECHO_SPECS[:1], EchoSpec(
        "reinhardt-baseline", "reinhardt",
        env=(("REINHARDT_WS_NO_EXTENSIONS", None), ("PYTHONPATH", BASELINE_SRC)),
        needs="reinhardt_ws", expect_implementation="cython"), *ECHO_SPECS[1:])


def absent_reason(spec: EchoSpec) -> str | None:
    """Why *spec* cannot run here (None: it can)."""
    if spec.server == "node-ws":
        if shutil.which("node") is None:
            return "node is not on PATH"
        if not (NODE_DIR / "node_modules" / "ws").is_dir():
            return "bench/node has no node_modules: run `npm ci` in bench/node"
        return None
    if spec.needs:
        import importlib.util

        try:
            found = importlib.util.find_spec(spec.needs) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            return f"{spec.needs} is not importable"
    if spec.server == "socketify":
        import subprocess

        probe = subprocess.run([sys.executable, "-c", "import socketify"],
                               capture_output=True, text=True, timeout=60, check=False)
        if probe.returncode != 0:
            tail = (probe.stderr.strip().splitlines() or ["?"])[-1]
            return f"socketify does not import ({tail}; it needs the libuv1 system library)"
    return None


@dataclasses.dataclass
class EchoResult:
    contestant: str
    clients: int
    size: int
    messages: int
    cpu_s: float
    wall_s: float
    p50_us: float
    p99_us: float
    client_cpu_s: float

    @property
    def cpu_us_per_message(self) -> float:
        return 1e6 * self.cpu_s / self.messages if self.messages else math.nan

    @property
    def messages_per_s(self) -> float:
        return self.messages / self.wall_s if self.wall_s > 0 else math.nan

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(cpu_us_per_message=self.cpu_us_per_message,
                 messages_per_s=self.messages_per_s)
        return d


class EchoArena:
    """One echo contestant: its server process and one client process."""

    def __init__(self, spec: EchoSpec, clients: int, log_dir: Path) -> None:
        self.spec = spec
        self.clients = clients
        self.log_dir = log_dir
        self.server: LineProcess | None = None
        self.client: LineProcess | None = None
        self.info: dict[str, Any] = {}
        self.broken = False

    def start(self) -> EchoArena:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def _start(self) -> None:
        env = dict(os.environ)
        for key, value in self.spec.env:
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        if self.spec.server == "node-ws":
            argv = ["node", str(NODE_DIR / "echo_server.js")]
        else:
            argv = [sys.executable, str(ECHO_SERVER), "--contestant", self.spec.server,
                    "--loop", self.spec.loop]
        tag = f"echo-{self.spec.id}-{os.getpid()}-{time.monotonic_ns() % 10**9}"
        self.server = LineProcess(f"server-{tag}", argv, env, self.log_dir)
        port_s, info = self.server.expect("PORT", 60)
        self.info = json.loads(info) if info else {}
        want = self.spec.expect_implementation
        if want and self.info.get("implementation") != want:
            raise BenchError(f"{self.spec.id}: asked for the {want} implementation, the "
                             f"server runs {self.info.get('implementation')!r}")
        self.client = LineProcess(
            f"client-{tag}", [sys.executable, str(ECHO_CLIENT), "--port", port_s,
                              "--count", str(self.clients)], dict(os.environ), self.log_dir)
        ready = self.client.read_line(120)
        if not ready.startswith("READY "):
            raise BenchError(f"{self.client.name}: {ready}; {self.server.stderr_tail()}")

    def server_cpu(self) -> float:
        assert self.server is not None
        self.server.send("STATS")
        ut, st, _maxrss = self.server.expect("STATS", 60)
        return float(ut) + float(st)

    def phase(self, seconds: float, size: int = 64, stall: float = 15.0) -> EchoResult:
        """Echo for *seconds*; raises PhaseFailed if a client saw a wrong byte."""
        if self.broken or self.client is None:
            raise BenchError(f"{self.spec.id}: this echo arena is broken")
        try:
            cpu0 = self.server_cpu()
            self.client.send(f"RUN {seconds} {size} {stall}")
            line = self.client.read_line(seconds + stall + 60)
            cpu1 = self.server_cpu()
        except BaseException:
            self.broken = True
            raise
        parts = line.split()
        if parts[0] != "DONE":
            self.broken = True
            raise PhaseFailed(f"{self.spec.id}: {line}")
        messages, p50, p99, client_cpu, wall = parts[1:6]
        return EchoResult(self.spec.id, self.clients, size, int(messages), cpu1 - cpu0,
                          float(wall), float(p50), float(p99), float(client_cpu))

    def close(self) -> None:
        for proc in (self.client, self.server):
            if proc is not None:
                proc.close()
        self.client = self.server = None
