"""Test-suite switches: the tests of the fan-out and I/O paths run on both fan-out
implementations; pure tests run once.

The session-scoped ``implementation`` fixture is autouse, and
``pytest_generate_tests`` parametrizes it over ``"cython"`` and ``"python"``
(propcache / multidict style) for every test except the pure ones: those under
``tests/protocol/`` (the sans-I/O core) and those marked ``@pytest.mark.pure``
(a test independent of the implementation this process selects: argument
checks, export lists, child processes that choose their own implementation).
A pure test that asks for ``implementation`` or ``fanout_module`` is a
collection error.  ``--no-c-extensions`` (or REINHARDT_WS_NO_EXTENSIONS=1)
skips the C side; otherwise a missing extension FAILS the cython half, it
never skips.  Tests that take the ``run`` fixture also run on asyncio's loop and
on uvloop.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from reinhardt_ws import _fanout

pytest_plugins = ["tests.fixtures"]

IMPLEMENTATIONS = ("cython", "python")

#: Directories (under tests/) whose every test is pure.
PURE_DIRECTORIES = ("protocol",)

TESTS = Path(__file__).resolve().parent


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--no-c-extensions", action="store_true", default=False,
                     help="run the suite on the pure-Python twin only")


def c_extensions_disabled(config: pytest.Config) -> bool:
    return bool(config.getoption("--no-c-extensions")) or os.environ.get(
        "REINHARDT_WS_NO_EXTENSIONS", "") not in ("", "0")


def is_pure(node: pytest.Item) -> bool:
    """Whether the test *node* runs once rather than once per implementation."""
    if node.get_closest_marker("pure") is not None:
        return True
    try:
        parts = node.path.resolve().relative_to(TESTS).parts
    except ValueError:
        return False
    return len(parts) > 1 and parts[0] in PURE_DIRECTORIES


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "implementation" not in metafunc.fixturenames:
        return
    if not is_pure(metafunc.definition):
        metafunc.parametrize("implementation", IMPLEMENTATIONS, indirect=True, scope="session")
        return
    # "implementation" itself is in every closure (autouse): look at what the test asks for.
    if ("implementation" in inspect.signature(metafunc.function).parameters
            or "fanout_module" in metafunc.fixturenames):
        raise pytest.UsageError(
            f"{metafunc.definition.nodeid}: a pure test (under tests/protocol/ or marked "
            "pure) runs once, so it cannot depend on the fan-out implementation")


@pytest.fixture(scope="session", autouse=True)
def implementation(request: pytest.FixtureRequest) -> Iterator[str]:
    """The fan-out implementation the test runs on (``"cython"`` or ``"python"``);
    ``""`` for pure tests, which are not parametrized and select nothing."""
    name: str = getattr(request, "param", "")
    if name == "cython":
        if c_extensions_disabled(request.config):
            pytest.skip("C extension disabled (--no-c-extensions / REINHARDT_WS_NO_EXTENSIONS)")
        if "cython" not in _fanout.available():
            pytest.fail("reinhardt_ws._fastbroadcast is not built: a normal build must load "
                        "the C extension")
    yield name


@pytest.fixture(autouse=True)
def _select_implementation(implementation: str) -> Iterator[None]:
    if implementation:
        _fanout.use(implementation)
    yield


@pytest.fixture
def fanout_module(implementation: str) -> ModuleType:
    """The fan-out module under test (``_fastbroadcast`` or ``_fastbroadcast_py``)."""
    return _fanout.available()[implementation]
