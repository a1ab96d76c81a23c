"""The protocol core is sans-I/O: nothing under ``reinhardt_ws/protocol/`` imports
an event loop, a socket or picows, directly or through what it imports.

Two checks: the sources are read with :mod:`ast` (every import statement, also
those inside functions and ``TYPE_CHECKING`` blocks, and the in-package modules
they reach), and a fresh interpreter imports every protocol module and reports
what landed in ``sys.modules``.  The package's own ``__init__`` (which imports the
server) is not part of the core: both checks load ``reinhardt_ws.protocol``
without running it.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import reinhardt_ws

#: Top-level modules that do I/O, or drive it; none may be imported by the core.
FORBIDDEN = frozenset({"aiofastnet", "asyncio", "picows", "selectors", "socket", "ssl", "uvloop"})

PACKAGE = Path(reinhardt_ws.__file__).resolve().parent
PROTOCOL = PACKAGE / "protocol"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_of(name: str) -> Path | None:
    """The source file of the in-package module *name*, if it has one."""
    base = PACKAGE.parent.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imports_of(path: Path, *, type_checking: bool) -> list[tuple[int, str]]:
    """``(line, absolute module name)`` of every import in *path*; the blocks under
    ``if TYPE_CHECKING:`` are included only when *type_checking* is true."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    skipped: set[int] = set()
    found: list[tuple[int, str]] = []
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in ast.walk(tree):
        if (not type_checking and isinstance(node, ast.If)
                and "TYPE_CHECKING" in ast.unparse(node.test)):
            skipped.update(id(n) for stmt in node.body for n in ast.walk(stmt))
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            else:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            found.append((node.lineno, base))
            # ``from . import x`` may name submodules.
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names
                      if source_of(f"{base}.{alias.name}") is not None]
    return found


def protocol_sources() -> list[Path]:
    sources = sorted(PROTOCOL.rglob("*.py"))
    assert PROTOCOL / "__init__.py" in sources and len(sources) >= 3, sources
    return sources


def test_protocol_sources_import_no_io_module() -> None:
    bad = [f"{path.relative_to(PACKAGE)}:{line}: imports {target}"
           for path in protocol_sources()
           for line, target in imports_of(path, type_checking=True)
           if target.split(".")[0] in FORBIDDEN]
    assert not bad, "\n".join(bad)


def test_protocol_reaches_no_io_module_through_the_package() -> None:
    """Follows in-package imports (lazy ones too) from the protocol modules."""
    chains: dict[str, list[str]] = {module_name(p): [module_name(p)] for p in protocol_sources()}
    todo = list(chains)
    bad: list[str] = []
    while todo:
        name = todo.pop()
        path = source_of(name)
        if path is None:
            bad.append(" -> ".join(chains[name]) + " (compiled, cannot be checked)")
            continue
        for _line, target in imports_of(path, type_checking=False):
            chain = [*chains[name], target]
            if target.split(".")[0] in FORBIDDEN:
                bad.append(" -> ".join(chain))
            elif target.startswith("reinhardt_ws.") and target not in chains:
                chains[target] = chain
                todo.append(target)
    assert not bad, "\n".join(bad)


_IMPORT_THE_CORE = """
import importlib, json, pkgutil, sys, types
package_dir, forbidden = sys.argv[1], set(sys.argv[2].split(","))
before = sorted(m for m in sys.modules if m.split(".")[0] in forbidden)
# The package object without its __init__ (which imports the server).
package = types.ModuleType("reinhardt_ws")
package.__path__ = [package_dir]
sys.modules["reinhardt_ws"] = package
protocol = importlib.import_module("reinhardt_ws.protocol")
for info in pkgutil.walk_packages(protocol.__path__, "reinhardt_ws.protocol."):
    importlib.import_module(info.name)
print(json.dumps({
    "before": before,
    "after": sorted(m for m in sys.modules if m.split(".")[0] in forbidden),
    "loaded": sorted(m for m in sys.modules if m.startswith("reinhardt_ws")),
}))
"""


def test_importing_the_protocol_core_loads_no_io_module() -> None:
    done = subprocess.run(
        [sys.executable, "-I", "-W", "error", "-c", _IMPORT_THE_CORE, str(PACKAGE),
         ",".join(sorted(FORBIDDEN))],
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["before"] == [], f"the interpreter starts with {seen['before']} loaded"
    expected = {module_name(p) for p in protocol_sources()}
    assert expected <= set(seen["loaded"]), expected - set(seen["loaded"])
    assert seen["after"] == [], (f"importing the protocol core loads {seen['after']} "
                                 f"(modules loaded: {seen['loaded']})")
