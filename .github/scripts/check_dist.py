"""Check what a built distribution of reinhardt-ws carries (used by the workflows).

    python .github/scripts/check_dist.py wheel --expect extension WHEEL_OR_GLOB...
    python .github/scripts/check_dist.py wheel --expect pure WHEEL_OR_GLOB...
    python .github/scripts/check_dist.py sdist SDIST_OR_GLOB...

A wheel always carries the package, its ``py.typed`` and the ``.pyi`` stub of the
extension, and never the Cython source or the generated C.  An ``extension`` wheel is
tagged for one interpreter and platform and carries exactly one compiled
``reinhardt_ws/_fastbroadcast`` module; a ``pure`` wheel is ``py3-none-any`` and
carries none.  An sdist carries what a wheel is built from (the ``.pyx`` and its
header) and the tests, and nothing generated or compiled.  Globs are expanded here,
so the same command line works under every shell.  Exit status 1 names every problem.
"""

from __future__ import annotations

import argparse
import glob
import re
import sys
import tarfile
import zipfile
from collections.abc import Iterable
from pathlib import Path

PACKAGE = "reinhardt_ws"
WHEEL_REQUIRED = (
    f"{PACKAGE}/__init__.py",
    f"{PACKAGE}/_fanout.py",
    f"{PACKAGE}/_fastbroadcast_py.py",
    f"{PACKAGE}/_fastbroadcast.pyi",
    f"{PACKAGE}/py.typed",
    f"{PACKAGE}/protocol/__init__.py",
    f"{PACKAGE}/rooms/__init__.py",
    f"{PACKAGE}/apps/static/chat.html",
)
COMPILED = re.compile(rf"^{PACKAGE}/_fastbroadcast\.[^/]*\.(so|pyd)$")
NEVER_IN_WHEEL = re.compile(r"(\.c|\.pyx|\.pxd|\.h)$|^(src|tests|bench)/")
SDIST_REQUIRED = (
    "pyproject.toml",
    "setup.py",
    "MANIFEST.in",
    "PKG-INFO",
    "src/_fastbroadcast.pyx",
    "src/_fastbroadcast_compat.h",
    f"src/{PACKAGE}/__init__.py",
    f"src/{PACKAGE}/_fastbroadcast.pyi",
    f"src/{PACKAGE}/py.typed",
    "tests/conftest.py",
    "tests/protocol/test_sans_io.py",
)
NEVER_IN_SDIST = re.compile(
    r"(^src/_fastbroadcast\.c$|\.(so|pyd|o|obj)$|^build/|^dist/|^\.autobahn/|^bench/results/"
    r"|__pycache__/)"
)


def expand(patterns: Iterable[str]) -> list[Path]:
    found: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern))
        if not matches:
            raise SystemExit(f"check_dist: nothing matches {pattern!r}")
        found.extend(Path(m) for m in matches)
    return found


def check_wheel(path: Path, expect: str) -> list[str]:
    problems: list[str] = []
    with zipfile.ZipFile(path) as whl:
        names = whl.namelist()
        wheel_meta = next((n for n in names if n.endswith(".dist-info/WHEEL")), None)
        meta = whl.read(wheel_meta).decode() if wheel_meta else ""
    if not wheel_meta:
        problems.append("no .dist-info/WHEEL")
    problems += [f"missing {name}" for name in WHEEL_REQUIRED if name not in names]
    problems += [f"must not ship {name}" for name in names if NEVER_IN_WHEEL.search(name)]
    compiled = [name for name in names if COMPILED.match(name)]
    stray = [n for n in names if n.endswith((".so", ".pyd")) and n not in compiled]
    problems += [f"unexpected binary {name}" for name in stray]
    pure_tag = path.name.endswith("-py3-none-any.whl")
    if expect == "extension":
        if len(compiled) != 1:
            problems.append(f"expected one compiled _fastbroadcast module, found {compiled}")
        if pure_tag or "Root-Is-Purelib: true" in meta:
            problems.append("tagged as a pure wheel although it must carry the extension")
    else:
        if compiled:
            problems.append(f"a pure wheel must not carry {compiled}")
        if not pure_tag or "Root-Is-Purelib: true" not in meta:
            problems.append("not tagged py3-none-any / Root-Is-Purelib: true")
    if not problems:
        shown = compiled[0] if compiled else "no compiled module"
        print(f"ok  {path.name}  ({len(names)} files, {shown})")
    return problems


def check_sdist(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        members = [m.name for m in tar.getmembers() if m.isfile()]
    tops = {name.split("/", 1)[0] for name in members}
    if len(tops) != 1:
        return [f"expected one top-level directory, found {sorted(tops)}"]
    top = tops.pop()
    names = {name[len(top) + 1 :] for name in members}
    problems = [f"missing {name}" for name in SDIST_REQUIRED if name not in names]
    problems += [f"must not ship {name}" for name in sorted(names) if NEVER_IN_SDIST.search(name)]
    if not any(re.fullmatch(r"tests/(?:[^/]+/)*test_[^/]+\.py", name) for name in names):
        problems.append("no tests/test_*.py")
    if not problems:
        print(f"ok  {path.name}  ({len(names)} files)")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="kind", required=True)
    wheel = sub.add_parser("wheel")
    wheel.add_argument("--expect", choices=("extension", "pure"), required=True)
    wheel.add_argument("paths", nargs="+")
    sdist = sub.add_parser("sdist")
    sdist.add_argument("paths", nargs="+")
    args = parser.parse_args(argv)

    failed = False
    for path in expand(args.paths):
        problems = check_wheel(path, args.expect) if args.kind == "wheel" else check_sdist(path)
        for problem in problems:
            print(f"FAIL {path.name}: {problem}")
        failed = failed or bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
