"""Benchmark switches and shared fixtures.

Options (see README.md):
  --bench-contestants=floor,reinhardt-cy,...   which servers run (default: all)
  --bench-deliveries=200000    deliveries per measured phase (messages = this / N)
  --bench-rounds=3             measured phases per scenario (median reported)
  --bench-loop=uvloop|asyncio  event loop of every Python contestant
  --bench-slow-messages=10000  messages in the slow-consumer scenario
  --bench-slow-size=1024       their payload size
  --bench-max-write-buffer=1048576   reinhardt's limit in the slow-consumer scenario
  --bench-clients-per-process=2500   sockets per client process
  --bench-client-poll=0.001    clients drain on a 1 ms timer during a phase (0: block in epoll)
  --bench-no-verify            clients count bytes without checking them
Each option also reads an environment variable (BENCH_CONTESTANTS, ...).

Tests are reordered so that every test of one (contestant, N) runs back to back
on one arena (one server process, N connected clients), the floor first.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness.arena import CONTESTANT_SPECS, ArenaPool, ContestantSpec, build_floor
from harness.scenarios import FloorBuild, base_spec

RESULTS_DIR = Path(__file__).resolve().parent / "results"

_OPTIONS: list[tuple[str, str, Any, str]] = [
    ("contestants", "BENCH_CONTESTANTS", "", "comma-separated contestant ids (default: all)"),
    ("deliveries", "BENCH_DELIVERIES", 200_000, "deliveries per measured phase"),
    ("rounds", "BENCH_ROUNDS", 3, "measured phases per scenario"),
    ("loop", "BENCH_LOOP", "uvloop", "event loop of the Python contestants: uvloop or asyncio"),
    ("slow-messages", "BENCH_SLOW_MESSAGES", 10_000, "messages in the slow-consumer scenario"),
    ("slow-size", "BENCH_SLOW_SIZE", 1024, "payload bytes in the slow-consumer scenario"),
    ("max-write-buffer", "BENCH_MAX_WRITE_BUFFER", 1 << 20,
     "reinhardt max_write_buffer in the slow-consumer scenario"),
    ("clients-per-process", "BENCH_CLIENTS_PER_PROCESS", 2500, "sockets per client process"),
    ("compression-n", "BENCH_COMPRESSION_N", 1000, "room size in test_compression.py"),
    ("client-poll", "BENCH_CLIENT_POLL", 0.001,
     "seconds a client sleeps between non-blocking polls during a phase (0: block in epoll)"),
]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("reinhardt-ws bench")
    for name, env, default, help_ in _OPTIONS:
        group.addoption(f"--bench-{name}", default=None, type=type(default),
                        help=f"{help_} (env {env}, default {default!r})")
    group.addoption("--bench-no-verify", action="store_true", default=False,
                    help="clients count bytes without checking their content "
                         "(env BENCH_NO_VERIFY=1)")


class BenchConfig:
    def __init__(self, config: pytest.Config) -> None:
        for name, env, default, _ in _OPTIONS:
            value = config.getoption(f"--bench-{name}")
            if value is None:
                raw = os.environ.get(env)
                value = type(default)(raw) if raw not in (None, "") else default
            setattr(self, name.replace("-", "_"), value)
        self.verify = not (config.getoption("--bench-no-verify")
                           or os.environ.get("BENCH_NO_VERIFY", "") not in ("", "0"))
        wanted = [c.strip() for c in str(self.contestants).split(",") if c.strip()]
        known = {spec.id for spec in CONTESTANT_SPECS}
        unknown = set(wanted) - known
        if unknown:
            raise pytest.UsageError(
                f"unknown contestants {sorted(unknown)}; known: {sorted(known)}")
        self.selected = set(wanted) if wanted else known

    # Typed views of the option values.
    contestants: str
    deliveries: int
    rounds: int
    loop: str
    slow_messages: int
    slow_size: int
    max_write_buffer: int
    clients_per_process: int
    client_poll: float
    compression_n: int


def pytest_configure(config: pytest.Config) -> None:
    config.bench = BenchConfig(config)  # type: ignore[attr-defined]


def _contestant_of(item: pytest.Item) -> ContestantSpec | None:
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return None
    param = callspec.params.get("contestant")
    return base_spec(param) if isinstance(param, str) else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    bench: BenchConfig = config.bench  # type: ignore[attr-defined]
    order = {spec.id: i for i, spec in enumerate(CONTESTANT_SPECS)}
    kept, deselected = [], []
    for item in items:
        spec = _contestant_of(item)
        if spec is not None and spec.id not in bench.selected:
            deselected.append(item)
        else:
            kept.append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)

    def key(item: pytest.Item) -> tuple[Any, ...]:
        module = item.module.__name__ if hasattr(item, "module") else ""  # type: ignore[attr-defined]
        spec = _contestant_of(item)
        params = getattr(getattr(item, "callspec", None), "params", {})
        if "micro" in module:
            return (0, 0, 0, 0, item.nodeid)
        if spec is None:
            return (3, 0, 0, 0, item.nodeid)
        if item.name.startswith("test_slow_consumer"):
            return (2, 0, order[spec.id], 0, item.nodeid)
        n = params.get("n", 5000)
        # Idle memory first in its (contestant, N) group: the arena is still fresh.
        first = 0 if item.name.startswith("test_idle_memory") else 1
        return (1, n, order[spec.id], first, params.get("size", 0), params.get("batch", 0))

    kept.sort(key=key)
    items[:] = kept


def pytest_benchmark_update_json(config: pytest.Config, benchmarks: Any,
                                 output_json: dict[str, Any]) -> None:
    """Record what report.py needs beyond the benchmarks: every contestant with why
    it is absent (skipped tests leave no benchmark behind, and an absent contestant
    must be named, not dropped), and the exact command of this run."""
    bench: BenchConfig = config.bench  # type: ignore[attr-defined]
    output_json["contestants"] = [
        {"id": spec.id, "server": spec.server, "selected": spec.id in bench.selected,
         "rooms": spec.rooms, "absent": spec.absent_reason()}
        for spec in CONTESTANT_SPECS
    ]
    # Every BENCH_* knob that was set (the options' variables, BENCH_NO_VERIFY, and
    # the scenario knobs such as BENCH_ECHO_SECONDS or BENCH_FLUSH_INTERVALS).
    env = [f"{name}={shlex.quote(value)}" for name, value in sorted(os.environ.items())
           if name.startswith("BENCH_") and value]
    args = shlex.join(config.invocation_params.args)
    output_json["command"] = " ".join([*env, "python -m pytest", args]).strip()
    output_json["invocation_dir"] = str(config.invocation_params.dir)
    output_json["bench_options"] = {name.replace("-", "_"): getattr(bench, name.replace("-", "_"))
                                    for name, _e, _d, _h in _OPTIONS}


@pytest.fixture(scope="session")
def bench_config(pytestconfig: pytest.Config) -> BenchConfig:
    return pytestconfig.bench  # type: ignore[attr-defined,no-any-return]


@pytest.fixture(scope="session")
def bench_logs() -> Path:
    path = RESULTS_DIR / "logs"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def floor_build(tmp_path_factory: pytest.TempPathFactory) -> FloorBuild:
    """floor.c compiled with the system compiler, or why it could not be."""
    try:
        return FloorBuild(build_floor(tmp_path_factory.mktemp("floor")), "")
    except Exception as exc:  # the floor's own tests report it
        return FloorBuild(None, str(exc))


@pytest.fixture(scope="session")
def arena_pool(bench_config: BenchConfig, floor_build: FloorBuild,
               bench_logs: Path) -> Iterator[ArenaPool]:
    pool = ArenaPool(floor_binary=floor_build.path, loop=bench_config.loop,
                     clients_per_process=bench_config.clients_per_process,
                     verify=bench_config.verify, poll_interval=bench_config.client_poll,
                     log_dir=bench_logs)
    yield pool
    pool.release()


@pytest.fixture(scope="session")
def floor_results() -> dict[tuple[int, int, int], dict[str, float]]:
    """Medians of the floor, by (N, size, batch), filled as the floor tests run."""
    return {}
