"""Test-suite switches: every test runs on both fan-out implementations.

The session-scoped ``implementation`` fixture is autouse and parametrized over
``"cython"`` and ``"python"`` (propcache / multidict style), so the whole suite
runs twice.  ``--no-c-extensions`` (or REINHARDT_WS_NO_EXTENSIONS=1) skips the C
side; otherwise a missing extension FAILS the cython half, it never skips.
Tests that take the ``run`` fixture also run on asyncio's loop and on uvloop.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from types import ModuleType

import pytest

from reinhardt_ws import _fanout

pytest_plugins = ["tests.fixtures"]

IMPLEMENTATIONS = ("cython", "python")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--no-c-extensions", action="store_true", default=False,
                     help="run the suite on the pure-Python twin only")


def c_extensions_disabled(config: pytest.Config) -> bool:
    return bool(config.getoption("--no-c-extensions")) or os.environ.get(
        "REINHARDT_WS_NO_EXTENSIONS", "") not in ("", "0")


@pytest.fixture(scope="session", params=IMPLEMENTATIONS, autouse=True)
def implementation(request: pytest.FixtureRequest) -> Iterator[str]:
    name = request.param
    if name == "cython":
        if c_extensions_disabled(request.config):
            pytest.skip("C extension disabled (--no-c-extensions / REINHARDT_WS_NO_EXTENSIONS)")
        if "cython" not in _fanout.available():
            pytest.fail("reinhardt_ws._fastbroadcast is not built: a normal build must load "
                        "the C extension")
    yield name


@pytest.fixture(autouse=True)
def _select_implementation(implementation: str) -> Iterator[None]:
    _fanout.use(implementation)
    yield


@pytest.fixture
def fanout_module(implementation: str) -> ModuleType:
    """The fan-out module under test (``_fastbroadcast`` or ``_fastbroadcast_py``)."""
    return _fanout.available()[implementation]
