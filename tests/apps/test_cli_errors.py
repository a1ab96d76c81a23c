"""Every bad argument and every failed start of the command line: one line on stderr,
exit status 2 (arguments) or 1 (start), never a traceback; ``--version``, ``--help``
in plain words, and the ``reinhardt-ws`` console script's entry point, which is the
same ``main``."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

import reinhardt_ws as rw

from ..fixtures import child_env

pytestmark = pytest.mark.pure


def cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reinhardt_ws", *args], capture_output=True,
                          text=True, timeout=timeout, env=child_env("python"),
                          stdin=subprocess.DEVNULL, check=False)


def one_line(done: subprocess.CompletedProcess[str], status: int) -> str:
    """The single stderr line of a refused command, checked."""
    assert done.returncode == status, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert done.stdout == ""
    return lines[0]


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


def dead_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(("args", "expected"), [
    (("echo", "--port", "99999"), "port 99999 is out of range 0-65535"),
    (("echo", "--port", "-1"), "port -1 is out of range 0-65535"),
    (("serve", "--port", "http"), "not a port number: 'http'"),
    (("echo", "--log-level", "bogus"),
     "unknown level 'bogus': use one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
    (("echo", "--log-level", "10"), "unknown level '10'"),
    (("echo", "--log-format", "xml"), "argument --log-format: invalid choice: 'xml'"),
    (("echo", "--max-message-size", "0"), "--max-message-size must be at least 1"),
    (("echo", "--max-message-size", "1MiB"), "argument --max-message-size: invalid int"),
    (("serve", "--max-write-buffer", "-5"), "--max-write-buffer must be at least 1"),
    (("echo", "--host", "no-such-host.invalid"), "cannot resolve --host 'no-such-host.invalid'"),
    (("serve", "--redis", "notaurl"),
     "--redis needs a redis://, rediss:// or unix:// URL, not 'notaurl'"),
    (("serve", "--redis", "redis://127.0.0.1:port"), "is not a valid Redis URL"),
    (("serve", "--redis", "redis://u:hunter2@127.0.0.1:1", "--redis-wait", "-1"),
     "--redis-wait must be 0 or more seconds"),
    (("serve", "--workers", "2"), "--workers above 1 needs --redis URL"),
    (("shout",), "invalid choice: 'shout'"),
    ((), "the following arguments are required: COMMAND"),
], ids=lambda value: " ".join(value) if isinstance(value, tuple) else None)
def test_bad_argument_is_one_line_and_status_2(args: tuple[str, ...], expected: str) -> None:
    line = one_line(cli(*args), 2)
    assert line.startswith("reinhardt-ws"), line
    assert expected in line, line
    assert "hunter2" not in line


def test_port_in_use_names_the_port_and_suggests_another(busy_port: int) -> None:
    line = one_line(cli("echo", "--port", str(busy_port)), 1)
    assert line == (f"reinhardt-ws: port {busy_port} on 127.0.0.1 is already in use: stop "
                    f"what holds it, choose another (for example --port {busy_port + 1}), "
                    "or --port 0 to pick a free one")


def test_workers_on_a_port_in_use_start_none(busy_port: int) -> None:
    line = one_line(cli("serve", "--workers", "2", "--redis", "redis://127.0.0.1:1",
                        "--port", str(busy_port)), 1)
    assert f"port {busy_port} on 127.0.0.1 is already in use" in line


def test_host_not_of_this_machine() -> None:
    line = one_line(cli("echo", "--host", "192.0.2.1", "--port", "0"), 1)
    assert line == "reinhardt-ws: cannot listen on 192.0.2.1: it is not an address of this machine"


@pytest.mark.parametrize("workers", ["1", "2"])
def test_unreachable_redis_refuses_to_start(workers: str) -> None:
    """One process or a cluster: Redis down means no start (a cluster would split
    its rooms; one process would hold rooms that other servers on that Redis never
    see); exit 1 with the reason and the way out."""
    port = dead_port()
    url = f"redis://:hunter2@127.0.0.1:{port}/0"
    listen = "0" if workers == "1" else str(dead_port())
    line = one_line(cli("serve", "--workers", workers, "--port", listen, "--redis", url), 1)
    assert line.startswith(f"reinhardt-ws: cannot reach Redis at redis://:***@127.0.0.1:{port}/0 (")
    assert "not starting, rooms would not be shared" in line
    assert "start it, or pass --redis-wait SECONDS to wait for it" in line
    assert "hunter2" not in line


def test_redis_wait_waits_then_refuses() -> None:
    started = time.monotonic()
    done = cli("serve", "--port", "0", "--redis", f"redis://127.0.0.1:{dead_port()}",
               "--redis-wait", "1.5", "--log-level", "ERROR")
    elapsed = time.monotonic() - started
    line = one_line(done, 1)
    assert "it did not answer within --redis-wait 1.5 s" in line
    assert elapsed >= 1.5


def test_version() -> None:
    done = cli("--version")
    assert done.returncode == 0
    assert done.stdout == f"reinhardt-ws {rw.__version__}\n"


@pytest.mark.parametrize("command", [(), ("serve",), ("echo",)])
def test_help_is_plain_words(command: tuple[str, ...]) -> None:
    done = cli(*command, "--help")
    assert done.returncode == 0
    assert "`" not in done.stdout
    assert ":func:" not in done.stdout and ":class:" not in done.stdout
    assert "usage: reinhardt-ws" in done.stdout
    if command == ("serve",):
        assert "--redis-wait SECONDS" in done.stdout
        assert "--log-format {text,json}" in done.stdout


def test_console_script_entry_point_is_main(busy_port: int) -> None:
    """pyproject's ``reinhardt-ws = reinhardt_ws.__main__:main``: what the installed
    script runs (``sys.exit(main())``) refuses the same way."""
    code = ("import sys; from reinhardt_ws.__main__ import main; "
            "sys.argv[0] = 'reinhardt-ws'; sys.exit(main())")
    for args, status, expected in (
            (["echo", "--port", "99999"], 2, "port 99999 is out of range"),
            (["echo", "--port", str(busy_port)], 1, f"port {busy_port} on 127.0.0.1 is "
                                                    "already in use"),
            (["--version"], 0, "")):
        done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                              text=True, timeout=30, env=child_env("python"), check=False)
        if status == 0:
            assert done.returncode == 0 and done.stdout.startswith("reinhardt-ws ")
            continue
        assert expected in one_line(done, status)
