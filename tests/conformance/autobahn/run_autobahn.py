#!/usr/bin/env python3
"""Run the Autobahn|Testsuite (``wstest -m fuzzingclient``) against a WebSocket server.

The testsuite (PyPI ``autobahntestsuite``) runs on Python 2.7 only.  This script,
which needs nothing but the Python 3 standard library, keeps a Python 2.7
virtualenv with it in a cache directory, builds that virtualenv from PyPI when it
is missing or stale, runs the fuzzing client against one server, and judges the
report.

Usage (from the repository root)::

    # start a server per run; {port} becomes a free port on 127.0.0.1
    python tests/conformance/autobahn/run_autobahn.py \\
        --server-cmd "python -m reinhardt_ws echo --host 127.0.0.1 --port {port} \\
                      --max-message-size 16777216"

    # or test a server that already listens
    python tests/conformance/autobahn/run_autobahn.py --url ws://127.0.0.1:9001

    # a subset, for quick iteration, and a machine-readable summary
    python tests/conformance/autobahn/run_autobahn.py --url ws://127.0.0.1:9001 \\
        --cases "1.*,7.*" --json-summary /tmp/autobahn.json

    # only build (or check) the Python 2.7 virtualenv
    python tests/conformance/autobahn/run_autobahn.py --setup-only

Environment:

``REINHARDT_WS_AUTOBAHN_VENV``
    where the virtualenv lives (default: ``.autobahn/venv`` in the repo root).
``REINHARDT_WS_PYTHON27``
    the Python 2.7 interpreter to build it with.  Without it the script looks at
    ``~/.pyenv/versions/2.7.*/bin/python`` (and ``$PYENV_ROOT``,
    ``/root/.pyenv``), then ``python2.7`` on ``PATH``.  No Python 2.7 is an
    error (exit 2) here; tests/conformance/test_autobahn.py skips on it outside
    CI and fails under CI.

The virtualenv is built in this order: a ``virtualenv`` below 20.22 (the last
line that creates Python 2 environments) into a temporary directory with the
current interpreter's pip (falling back to Python 2.7's own pip), the Python 2.7
virtualenv, the ``autobahntestsuite`` sdist (whose metadata does not declare its
dependencies to pip), the pinned list in its ``autobahntestsuite.egg-info/
requires.txt``, then the package itself with ``--no-deps``.  A marker file
written last makes a half-built virtualenv count as missing.

Verdict: Autobahn reports each case with two outcomes, ``behavior`` (the
exchange: OK, NON-STRICT, INFORMATIONAL, UNIMPLEMENTED, FAILED) and
``behaviorClose`` (the closing handshake: OK, INFORMATIONAL, WRONG CODE,
FAILED BY CLIENT, UNCLEAN, FAILED).  The *outcome* of a case is the worse of the
two, with WRONG CODE and FAILED BY CLIENT counting as NON-STRICT and UNCLEAN as
FAILED (Autobahn's own HTML report paints UNCLEAN red as well).  The run fails
(exit 1) when a case has outcome FAILED (outside the known upstream failures),
when a case of sections 12-13 (permessage-deflate) reports anything but OK (the
server negotiates permessage-deflate: UNIMPLEMENTED there is a regression), or
when cases are missing from the report (server crashed or refused connections).
Exit 2 means the harness could not run (no Python 2.7, failed install, server
did not start, wstest crashed or timed out).

Reports (``index.html`` for people, ``index.json`` plus one JSON per case) go
to ``--outdir`` (default ``.autobahn/reports/<agent>``), next to ``spec.json``,
``wstest.log`` and, with ``--server-cmd``, ``server.log``.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import html
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_VENV = REPO_ROOT / ".autobahn" / "venv"
DEFAULT_REPORTS = REPO_ROOT / ".autobahn" / "reports"

AUTOBAHN_VERSION = "25.10.1"
# virtualenv 20.22 dropped creating Python <= 3.6 environments; 20.21 runs on 3.7-3.13.
VIRTUALENV_FROM_PY3 = "virtualenv>=20.16,<20.22"
# Fallback when the current interpreter has no pip: the last line that runs on 2.7.
VIRTUALENV_FROM_PY27 = "virtualenv>=20.0,<20.16"
MARKER_NAME = "reinhardt-ws-autobahn.json"
MARKER_FORMAT = 1

EXIT_OK = 0
EXIT_NONCONFORMANT = 1
EXIT_HARNESS_ERROR = 2

BEHAVIORS = ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED")
# behaviorClose values mapped onto the behavior scale (see the module docstring).
CLOSE_AS_BEHAVIOR = {
    "OK": "OK",
    "INFORMATIONAL": "INFORMATIONAL",
    "WRONG CODE": "NON-STRICT",
    "FAILED BY CLIENT": "NON-STRICT",
    "UNCLEAN": "FAILED",
    "FAILED": "FAILED",
}
SEVERITY = {"OK": 0, "UNIMPLEMENTED": 1, "INFORMATIONAL": 2, "NON-STRICT": 3, "FAILED": 4}
COMPRESSION_SECTIONS = frozenset({12, 13})


class HarnessError(Exception):
    """The harness itself could not do its job (exit 2)."""


def log(msg: str) -> None:
    print(f"[autobahn] {msg}", flush=True)


def clean_env() -> dict[str, str]:
    """The environment for Python 2.7 processes: no Python 3 paths or settings leak in."""
    dropped = ("VIRTUAL_ENV", "PYENV_VERSION", "__PYVENV_LAUNCHER__")
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k not in dropped
    }
    env["PYTHONIOENCODING"] = "utf-8"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


# --------------------------------------------------------------------------- Python 2.7


def _python_version(exe: str) -> str | None:
    try:
        out = subprocess.run(
            [exe, "-c", "import sys; sys.stdout.write('%d.%d' % sys.version_info[:2])"],
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _version_key(path: str) -> tuple[int, ...]:
    match = re.search(r"2\.7\.(\d+)", path)
    return (int(match.group(1)),) if match else (-1,)


def find_python27() -> Path:
    """Python 2.7: ``$REINHARDT_WS_PYTHON27``, then pyenv's 2.7.x, then ``python2.7``."""
    explicit = os.environ.get("REINHARDT_WS_PYTHON27")
    if explicit:
        if _python_version(explicit) == "2.7":
            return Path(explicit)
        raise HarnessError(
            f"REINHARDT_WS_PYTHON27={explicit!r} is not a working Python 2.7 interpreter"
        )

    roots = [os.environ.get("PYENV_ROOT", ""), str(Path.home() / ".pyenv"), "/root/.pyenv"]
    candidates: list[str] = []
    for root in dict.fromkeys(r for r in roots if r):
        found = glob.glob(os.path.join(root, "versions", "2.7.*", "bin", "python"))
        candidates.extend(sorted(found, key=_version_key, reverse=True))
    on_path = shutil.which("python2.7")
    if on_path:
        candidates.append(on_path)

    for exe in candidates:
        if _python_version(exe) == "2.7":
            return Path(exe)
    raise HarnessError(
        "Python 2.7 not found: the Autobahn testsuite needs it. Set REINHARDT_WS_PYTHON27 to "
        "a Python 2.7 interpreter, or install one (e.g. `pyenv install 2.7.18`). Looked at: "
        + (", ".join(candidates) or "pyenv versions 2.7.* and python2.7 on PATH (none exist)")
    )


# --------------------------------------------------------------------------- virtualenv


def venv_bin(venv: Path, name: str) -> Path:
    return venv / "bin" / name


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock file, so that concurrent runs do not build one venv twice."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            yield
            return
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def venv_is_ready(venv: Path, python27: Path) -> bool:
    marker = venv / MARKER_NAME
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    if data != _marker_data(python27):
        return False
    probe = subprocess.run(
        [str(venv_bin(venv, "python")), "-c", "import autobahntestsuite.wstest"],
        env=clean_env(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    return probe.returncode == 0 and venv_bin(venv, "wstest").exists()


def _marker_data(python27: Path) -> dict[str, Any]:
    return {
        "format": MARKER_FORMAT,
        "autobahntestsuite": AUTOBAHN_VERSION,
        "python27": str(python27),
    }


class _Steps:
    """Runs build steps, logging their output to one file and failing with its tail."""

    def __init__(self, logfile: Path) -> None:
        self.logfile = logfile
        self.fh: IO[str] = open(logfile, "w", encoding="utf-8")  # noqa: SIM115

    def close(self) -> None:
        self.fh.close()

    def run(self, what: str, cmd: Sequence[str], env: dict[str, str] | None = None) -> None:
        log(f"  {what}")
        self.fh.write(f"\n$ {shlex.join(cmd)}\n")
        self.fh.flush()
        started = time.monotonic()
        proc = subprocess.run(
            list(cmd),
            stdout=self.fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env if env is not None else clean_env(),
            check=False,
        )
        self.fh.write(f"# exit {proc.returncode} after {time.monotonic() - started:.1f} s\n")
        self.fh.flush()
        if proc.returncode != 0:
            tail = self.logfile.read_text(encoding="utf-8", errors="replace").splitlines()[-40:]
            raise HarnessError(
                f"{what} failed (exit {proc.returncode}); full log: {self.logfile}\n"
                + "\n".join(tail)
            )


def _has_pip(python: str) -> bool:
    probe = subprocess.run(
        [python, "-m", "pip", "--version"], capture_output=True, timeout=60, check=False
    )
    return probe.returncode == 0


def read_sdist_requirements(sdist: Path) -> list[str]:
    """The pinned requirements of ``<name>.egg-info/requires.txt`` inside an sdist.

    Unconditional lines are kept, ``[:marker]`` sections become ``req; marker``, and
    extras sections (``[name]``) are dropped.
    """
    with tarfile.open(sdist) as tar:
        members = [
            m
            for m in tar.getmembers()
            if m.isfile() and re.fullmatch(r"[^/]+/[^/]+\.egg-info/requires\.txt", m.name)
        ]
        if not members:
            raise HarnessError(f"{sdist.name} has no <pkg>.egg-info/requires.txt")
        extracted = tar.extractfile(members[0])
        assert extracted is not None
        text = extracted.read().decode("utf-8")

    reqs: list[str] = []
    marker: str | None = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        section = re.fullmatch(r"\[(.*)\]", line)
        if section:
            name = section.group(1)
            marker = name[1:] if name.startswith(":") else None
            continue
        if marker is None:
            continue  # an extra: not wanted
        reqs.append(f"{line}; {marker}" if marker else line)
    if not reqs:
        raise HarnessError(f"{sdist.name}: requires.txt lists no requirements")
    return reqs


def build_venv(venv: Path, python27: Path) -> None:
    started = time.monotonic()
    log(f"building the Autobahn virtualenv at {venv} with {python27}")
    if venv.exists():
        looks_like_venv = (venv / "pyvenv.cfg").exists() or (venv / MARKER_NAME).exists()
        if any(venv.iterdir()) and not looks_like_venv:
            raise HarnessError(f"{venv} is not empty and is no virtualenv: refusing to replace it")
        shutil.rmtree(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    logfile = venv.parent / f"{venv.name}-build.log"
    steps = _Steps(logfile)
    try:
        with tempfile.TemporaryDirectory(prefix="autobahn-build-") as tmp_name:
            tmp = Path(tmp_name)
            tool = tmp / "virtualenv"
            if _has_pip(sys.executable):
                runner, spec = sys.executable, VIRTUALENV_FROM_PY3
            else:
                runner, spec = str(python27), VIRTUALENV_FROM_PY27
            pip_env = clean_env()
            steps.run(
                f"pip-installing {spec!r} into a temporary directory",
                [runner, "-m", "pip", "install", "--no-input", "--disable-pip-version-check",
                 "--target", str(tool), spec],
                env=pip_env,
            )
            tool_env = clean_env()
            tool_env["PYTHONPATH"] = str(tool)
            steps.run(
                "creating the Python 2.7 virtualenv",
                [runner, "-m", "virtualenv", "--no-periodic-update",
                 "--app-data", str(tmp / "app-data"), "-p", str(python27), str(venv)],
                env=tool_env,
            )
            py = str(venv_bin(venv, "python"))
            pip = [py, "-m", "pip", "--no-input", "--disable-pip-version-check"]
            steps.run(
                f"downloading the autobahntestsuite {AUTOBAHN_VERSION} sdist",
                # pip 20.3.4's legacy resolver trips an assertion in `download`
                # (save_linked_requirement: req.link is None); the new one works.
                [*pip, "download", "--use-feature=2020-resolver", "--no-deps",
                 "--no-binary", ":all:", "-d", str(tmp / "sdist"),
                 f"autobahntestsuite=={AUTOBAHN_VERSION}"],
            )
            sdists = sorted((tmp / "sdist").glob("autobahntestsuite-*.tar.gz"))
            if not sdists:
                raise HarnessError("pip download produced no autobahntestsuite-*.tar.gz")
            reqs = read_sdist_requirements(sdists[0])
            req_file = tmp / "requirements.txt"
            req_file.write_text("\n".join(reqs) + "\n")
            steps.fh.write("# requires.txt of the sdist:\n" + req_file.read_text())
            steps.run(
                f"installing the {len(reqs)} pinned requirements of the sdist",
                [*pip, "install", "-r", str(req_file)],
            )
            steps.run(
                "installing autobahntestsuite itself (--no-deps)",
                [*pip, "install", "--no-deps", str(sdists[0])],
            )
            steps.run("checking: wstest --autobahnversion",
                      [str(venv_bin(venv, "wstest")), "--autobahnversion"])
    finally:
        steps.close()
    (venv / MARKER_NAME).write_text(json.dumps(_marker_data(python27), indent=2) + "\n")
    log(f"virtualenv ready in {time.monotonic() - started:.1f} s (build log: {logfile})")


def ensure_venv(venv: Path) -> Path:
    """The ``wstest`` of a ready virtualenv at *venv*, building it if needed."""
    python27 = find_python27()
    with locked(venv.parent / f"{venv.name}.lock"):
        if not venv_is_ready(venv, python27):
            build_venv(venv, python27)
    return venv_bin(venv, "wstest")


# --------------------------------------------------------------------------- server


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class ServerProcess:
    """A server started from ``--server-cmd`` in its own process group."""

    cmd: list[str]
    port: int
    logfile: Path
    proc: subprocess.Popen[bytes] | None = None
    _fh: IO[bytes] | None = None

    def start(self, timeout: float) -> None:
        log(f"starting server: {shlex.join(self.cmd)}")
        self._fh = open(self.logfile, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            self.cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HarnessError(
                    f"the server exited with {self.proc.returncode} before listening on "
                    f"port {self.port}:\n{self.log_tail()}"
                )
            if port_open("127.0.0.1", self.port):
                return
            time.sleep(0.05)
        raise HarnessError(
            f"the server did not listen on 127.0.0.1:{self.port} within {timeout:.0f} s:\n"
            + self.log_tail()
        )

    def exited_early(self) -> int | None:
        """The exit code if the server has died by itself, else ``None``."""
        return None if self.proc is None else self.proc.poll()

    def stop(self) -> None:
        """Stop the process group: SIGINT, then SIGTERM, then SIGKILL."""
        proc = self.proc
        if proc is None:
            return
        try:
            if proc.poll() is not None:
                log(f"server had already exited with {proc.returncode}")
                return
            started = time.monotonic()
            for sig, grace in ((signal.SIGINT, 5.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(grace)
                if proc.poll() is not None:
                    log(f"server stopped by {sig.name} in {time.monotonic() - started:.1f} s "
                        f"(exit {proc.returncode})")
                    return
            log("server did not stop, even on SIGKILL")
        finally:
            # Anything the server left in its group goes too.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            if self._fh is not None:
                self._fh.close()

    def log_tail(self, lines: int = 30) -> str:
        if self._fh is not None and not self._fh.closed:
            self._fh.flush()
        try:
            text = self.logfile.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join("    " + line for line in text.splitlines()[-lines:]) or "    (empty)"


# --------------------------------------------------------------------------- wstest


def write_spec(path: Path, url: str, agent: str, outdir: Path,
               cases: list[str], exclude: list[str]) -> None:
    spec = {
        "options": {"failByDrop": False},
        "outdir": str(outdir),
        "servers": [{"agent": agent, "url": url}],
        "cases": cases,
        "exclude-cases": exclude,
        "exclude-agent-cases": {},
    }
    path.write_text(json.dumps(spec, indent=2) + "\n")


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def run_wstest(wstest: Path, spec: Path, logfile: Path, timeout: float) -> int:
    """Run the fuzzing client; return the number of cases it announced."""
    log(f"running wstest -m fuzzingclient (log: {logfile})")
    env = clean_env()
    env["PYTHONUNBUFFERED"] = "1"  # a live log, read below while wstest runs
    announced: int | None = None
    with open(logfile, "w", encoding="utf-8") as fh:
        proc = subprocess.Popen(
            [str(wstest), "-m", "fuzzingclient", "-s", str(spec)],
            cwd=str(spec.parent),
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            if announced is None:
                found = re.search(r"will run (\d+) test cases", logfile.read_text(errors="replace"))
                announced = int(found.group(1)) if found else None
                if announced == 0:  # wstest would wait forever
                    _kill_group(proc)
                    raise HarnessError("no Autobahn case matches --cases/--exclude-cases")
            if time.monotonic() > deadline:
                _kill_group(proc)
                raise HarnessError(f"wstest did not finish within {timeout:.0f} s; see {logfile}")
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(0.25)
    text = logfile.read_text(encoding="utf-8", errors="replace")
    if proc.returncode != 0:
        tail = "\n".join(text.splitlines()[-30:])
        raise HarnessError(f"wstest exited with {proc.returncode}; see {logfile}:\n{tail}")
    found = re.search(r"will run (\d+) test cases", text)
    if not found:
        raise HarnessError(f"wstest did not say how many cases it would run; see {logfile}")
    for line in re.findall(r"^Connection to .* failed \(.*\)$", text, re.M):
        log(f"wstest: {line}")
    return int(found.group(1))


# --------------------------------------------------------------------------- report


def case_key(case_id: str) -> tuple[int, ...]:
    return tuple(int(part) for part in case_id.split("."))


def plain(text: Any, limit: int = 400) -> str:
    """Autobahn's HTML-ish description text as one plain line."""
    s = html.unescape(re.sub(r"<[^>]+>", " ", str(text)))
    s = " ".join(s.split())
    return s if len(s) <= limit else s[: limit - 4] + " ..."


@dataclass
class CaseResult:
    id: str
    behavior: str
    behavior_close: str
    remote_close_code: int | None
    duration_ms: int
    reportfile: str

    @property
    def section(self) -> int:
        return case_key(self.id)[0]

    @property
    def outcome(self) -> str:
        close = CLOSE_AS_BEHAVIOR.get(self.behavior_close, "FAILED")
        behavior = self.behavior if self.behavior in SEVERITY else "FAILED"
        return max(behavior, close, key=SEVERITY.__getitem__)


@dataclass
class Verdict:
    passed: bool = True
    reasons: list[str] = field(default_factory=list)

    def fail(self, reason: str) -> None:
        self.passed = False
        self.reasons.append(reason)


def load_report(outdir: Path, agent: str) -> list[CaseResult]:
    index = outdir / "index.json"
    if not index.exists():
        raise HarnessError(f"wstest wrote no report ({index} is missing)")
    data = json.loads(index.read_text(encoding="utf-8"))
    if agent not in data:
        raise HarnessError(f"{index} has no results for agent {agent!r} (has {sorted(data)})")
    results = [
        CaseResult(
            id=case_id,
            behavior=str(c.get("behavior")),
            behavior_close=str(c.get("behaviorClose")),
            remote_close_code=c.get("remoteCloseCode"),
            duration_ms=int(c.get("duration") or 0),
            reportfile=str(c.get("reportfile", "")),
        )
        for case_id, c in data[agent].items()
    ]
    return sorted(results, key=lambda r: case_key(r.id))


def case_details(outdir: Path, result: CaseResult) -> dict[str, Any]:
    try:
        detail = json.loads((outdir / result.reportfile).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        detail = {}
    return {
        "id": result.id,
        "behavior": result.behavior,
        "behaviorClose": result.behavior_close,
        "remoteCloseCode": result.remote_close_code,
        "description": plain(detail.get("description", "")),
        "expectation": plain(detail.get("expectation", "")),
        "result": plain(detail.get("result", "")),
        "resultClose": plain(detail.get("resultClose", "")),
        "reportfile": result.reportfile,
    }


def judge(results: list[CaseResult], expected: int,
          known_upstream: frozenset[str] = frozenset()) -> Verdict:
    """The run's verdict.  Cases in *known_upstream* are failures of a dependency
    we cannot fix from our side (documented in docs/conformance.md): they are
    still reported as FAILED, but do not fail the run."""
    verdict = Verdict()
    if len(results) != expected:
        verdict.fail(
            f"{expected - len(results)} of {expected} cases are missing from the report "
            "(did the server crash or refuse connections?)"
        )
    for r in results:
        if r.section in COMPRESSION_SECTIONS:
            if r.behavior != "OK" or r.outcome == "FAILED":
                verdict.fail(
                    f"case {r.id} (permessage-deflate) is {r.behavior}/{r.behavior_close}, "
                    "not OK"
                )
        elif r.outcome == "FAILED" and r.id not in known_upstream:
            verdict.fail(f"case {r.id} FAILED (behavior {r.behavior}, close {r.behavior_close})")
    return verdict


def summarize(results: list[CaseResult], outdir: Path, agent: str, expected: int,
              verdict: Verdict, elapsed: float) -> dict[str, Any]:
    sections: dict[str, dict[str, Any]] = {}
    for section in sorted({r.section for r in results}):
        rs = [r for r in results if r.section == section]
        sections[str(section)] = {
            "total": len(rs),
            "outcome": _counts(r.outcome for r in rs),
            "behavior": _counts(r.behavior for r in rs),
            "behaviorClose": dict(Counter(r.behavior_close for r in rs)),
        }
    return {
        "agent": agent,
        "autobahntestsuite": AUTOBAHN_VERSION,
        "outdir": str(outdir),
        "elapsed_s": round(elapsed, 1),
        "cases_expected": expected,
        "cases_reported": len(results),
        "outcome": _counts(r.outcome for r in results),
        "behavior": _counts(r.behavior for r in results),
        "behaviorClose": dict(Counter(r.behavior_close for r in results)),
        "sections": sections,
        "non_strict": [r.id for r in results if r.outcome == "NON-STRICT"],
        "informational": [r.id for r in results if r.outcome == "INFORMATIONAL"],
        "failed": [case_details(outdir, r) for r in results if r.outcome == "FAILED"],
        "passed": verdict.passed,
        "reasons": verdict.reasons,
    }


def _counts(values: Iterable[str]) -> dict[str, int]:
    counter = Counter(values)
    counts = {b: counter.pop(b, 0) for b in BEHAVIORS}
    counts.update(counter)  # anything unexpected stays visible
    return counts


def print_summary(summary: dict[str, Any]) -> None:
    cols = list(BEHAVIORS)
    width = 14
    print()
    print(f"Autobahn fuzzingclient results for {summary['agent']} "
          f"({summary['cases_reported']}/{summary['cases_expected']} cases, "
          f"{summary['elapsed_s']} s; report: {summary['outdir']}/index.html)")
    print("Outcome = worse of behavior and behaviorClose.")
    def row(name: str, total: int, counts: dict[str, int]) -> str:
        return f"{name:<9}{total:>6}" + "".join(f"{counts[c]:>{width}}" for c in cols)

    print(f"{'section':<9}{'total':>6}" + "".join(f"{c:>{width}}" for c in cols))
    for name, sec in summary["sections"].items():
        print(row(name, sec["total"], sec["outcome"]))
    print(row("all", summary["cases_reported"], summary["outcome"]))
    behavior = summary["behavior"].items()
    close = sorted(summary["behaviorClose"].items())
    print("behavior:      " + ", ".join(f"{k} {v}" for k, v in behavior if v))
    print("behaviorClose: " + ", ".join(f"{k} {v}" for k, v in close))
    if summary["non_strict"]:
        print("NON-STRICT:    " + " ".join(summary["non_strict"]))
    if summary["informational"]:
        print("INFORMATIONAL: " + " ".join(summary["informational"]))
    if summary["failed"]:
        print(f"\nFAILED cases ({len(summary['failed'])}):")
        for case in summary["failed"]:
            print(f"  {case['id']}: behavior {case['behavior']}, close {case['behaviorClose']} "
                  f"(remote close code {case['remoteCloseCode']})")
            for key in ("description", "expectation", "result", "resultClose"):
                if case[key]:
                    print(f"      {key + ':':<13}{case[key]}")
    print()
    if summary["passed"]:
        print("AUTOBAHN: PASSED")
    else:
        print("AUTOBAHN: FAILED")
        for reason in summary["reasons"]:
            print(f"  - {reason}")


# --------------------------------------------------------------------------- main


def split_patterns(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def parse_url(url: str) -> tuple[str, int]:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != "ws" or not parsed.hostname:
        raise HarnessError(f"--url must look like ws://127.0.0.1:PORT, not {url!r}")
    return parsed.hostname, parsed.port or 80


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Run the Autobahn testsuite (fuzzingclient) against a WebSocket server.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Exit status: 0 conformant, 1 not conformant, 2 harness error.",
    )
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--url", help="test a server already listening, e.g. ws://127.0.0.1:9001")
    target.add_argument(
        "--server-cmd",
        help="start this server for the run; {port} is replaced by a free port on 127.0.0.1",
    )
    parser.add_argument(
        "--known-upstream", default="", metavar="IDS",
        help="comma-separated case ids that fail because of a dependency (still reported "
             "as FAILED, listed apart, and not counted against the verdict)")
    parser.add_argument("--cases", default="*",
                        help='comma-separated case patterns, e.g. "1.*,7.*" (default: "*")')
    parser.add_argument("--exclude-cases", default="", help="comma-separated case patterns to skip")
    parser.add_argument("--agent", default="reinhardt-ws", help="agent name in the report")
    parser.add_argument("--outdir", type=Path,
                        help="report directory (default: .autobahn/reports/<agent>)")
    parser.add_argument("--json-summary", type=Path, metavar="PATH",
                        help="also write the counts and failures as JSON to PATH")
    parser.add_argument("--venv", type=Path,
                        default=Path(os.environ.get("REINHARDT_WS_AUTOBAHN_VENV") or DEFAULT_VENV),
                        help="Python 2.7 virtualenv (default: $REINHARDT_WS_AUTOBAHN_VENV "
                             "or .autobahn/venv)")
    parser.add_argument("--setup-only", action="store_true",
                        help="only make sure the virtualenv is ready")
    parser.add_argument("--startup-timeout", type=float, default=30.0,
                        help="seconds for --server-cmd to start listening (default 30)")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds for the whole wstest run (default 600)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.setup_only and not (args.url or args.server_cmd):
        build_parser().error("one of --url or --server-cmd is required (or --setup-only)")
    try:
        return _main(args)
    except HarnessError as exc:
        print(f"\nAUTOBAHN: HARNESS ERROR: {exc}", file=sys.stderr, flush=True)
        return EXIT_HARNESS_ERROR


def _main(args: argparse.Namespace) -> int:
    venv = args.venv.expanduser().absolute()
    wstest = ensure_venv(venv)
    if args.setup_only:
        log(f"ready: {wstest}")
        return EXIT_OK

    agent = re.sub(r"[^A-Za-z0-9_.-]", "-", args.agent)
    outdir = (args.outdir or DEFAULT_REPORTS / agent).expanduser().absolute()
    if outdir.exists():
        if any(outdir.iterdir()) and not (outdir / "spec.json").exists():
            raise HarnessError(f"--outdir {outdir} is not empty and holds no earlier run: "
                               "refusing to clear it")
        shutil.rmtree(outdir)  # never judge a stale report
    outdir.mkdir(parents=True)
    cases = split_patterns(args.cases) or ["*"]
    exclude = split_patterns(args.exclude_cases)
    for pattern in cases + exclude:
        if not re.fullmatch(r"[0-9.*]+", pattern):
            raise HarnessError(f"bad case pattern {pattern!r} (use e.g. 1.*, 7.9.*, 6.4.1)")

    server: ServerProcess | None = None
    started = time.monotonic()
    try:
        if args.server_cmd:
            port = free_port()
            cmd = shlex.split(args.server_cmd.replace("{port}", str(port)))
            server = ServerProcess(cmd, port, outdir / "server.log")
            server.start(args.startup_timeout)
            url = f"ws://127.0.0.1:{port}"
        else:
            url = args.url
            host, port = parse_url(url)
            if not port_open(host, port):
                raise HarnessError(f"nothing listens at {url}")

        spec = outdir / "spec.json"
        write_spec(spec, url, agent, outdir, cases, exclude)
        log(f"testing {url} as agent {agent!r}, cases {cases}"
            + (f" excluding {exclude}" if exclude else ""))
        expected = run_wstest(wstest, spec, outdir / "wstest.log", args.timeout)
        elapsed = time.monotonic() - started

        crashed = server.exited_early() if server else None
        results = load_report(outdir, agent)
        known = frozenset(split_patterns(args.known_upstream))
        verdict = judge(results, expected, known)
        if crashed is not None:
            verdict.fail(f"the server exited by itself with {crashed} during the run")
    finally:
        if server is not None:
            server.stop()

    summary = summarize(results, outdir, agent, expected, verdict, elapsed)
    summary["known_upstream"] = sorted(
        r.id for r in results if r.outcome == "FAILED" and r.id in known)
    print_summary(summary)
    if summary["known_upstream"]:
        print("Known upstream failures (FAILED, not counted; see docs/conformance.md): "
              + " ".join(summary["known_upstream"]))
    fixed = sorted(known - {r.id for r in results if r.outcome == "FAILED"})
    if fixed:
        print("No longer failing, remove from --known-upstream: " + " ".join(fixed))
    if crashed is not None and server is not None:
        print("server log tail:\n" + server.log_tail())
    if args.json_summary:
        args.json_summary.parent.mkdir(parents=True, exist_ok=True)
        args.json_summary.write_text(json.dumps(summary, indent=2) + "\n")
    return EXIT_OK if verdict.passed else EXIT_NONCONFORMANT


if __name__ == "__main__":
    sys.exit(main())
