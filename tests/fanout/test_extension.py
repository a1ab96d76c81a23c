"""The build: a normal build loads the C extension; the selector switch works."""

from __future__ import annotations

import subprocess
import sys

import pytest

import reinhardt_ws
from reinhardt_ws import _fanout

from ..conftest import c_extensions_disabled
from ..fixtures import child_env


@pytest.mark.pure
def test_normal_build_loads_the_extension(request: pytest.FixtureRequest) -> None:
    if c_extensions_disabled(request.config):
        pytest.skip("this run is the no-extension axis")
    # Not skipped when missing: a normal build must carry the compiled fan-out.
    from reinhardt_ws import _fastbroadcast

    assert _fastbroadcast.IMPLEMENTATION == "cython"
    assert _fastbroadcast.__file__ is not None
    assert not _fastbroadcast.__file__.endswith(".py")
    assert "cython" in _fanout.available()


def _implementation_in_subprocess(env_extra: dict[str, str]) -> str:
    env = child_env("cython", **env_extra)
    out = subprocess.run(
        [sys.executable, "-W", "error", "-c",
         "import reinhardt_ws; print(reinhardt_ws.IMPLEMENTATION)"],
        env=env, capture_output=True, text=True, check=True, timeout=60)
    return out.stdout.strip()


@pytest.mark.pure
def test_fresh_process_reports_what_runs(request: pytest.FixtureRequest) -> None:
    assert _implementation_in_subprocess({"REINHARDT_WS_NO_EXTENSIONS": "1"}) == "python"
    if not c_extensions_disabled(request.config):
        assert _implementation_in_subprocess({}) == "cython"


@pytest.mark.pure
def test_zero_means_not_disabled(request: pytest.FixtureRequest) -> None:
    if c_extensions_disabled(request.config):
        pytest.skip("this run is the no-extension axis")
    assert _implementation_in_subprocess({"REINHARDT_WS_NO_EXTENSIONS": "0"}) == "cython"


def test_implementation_attribute_follows_the_selector(implementation: str) -> None:
    assert implementation == reinhardt_ws.IMPLEMENTATION


@pytest.mark.pure
def test_use_rejects_unknown_implementation() -> None:
    with pytest.raises(LookupError):
        _fanout.use("rust")


def test_twins_export_the_same_interface(fanout_module: object) -> None:
    from reinhardt_ws import _fastbroadcast_py

    assert sorted(fanout_module.__all__) == sorted(_fastbroadcast_py.__all__)  # type: ignore[attr-defined]
    for name in ("Peer", "Hub"):
        public = {n for n in dir(getattr(_fastbroadcast_py, name)) if not n.startswith("_")}
        other = {n for n in dir(getattr(fanout_module, name)) if not n.startswith("_")}
        assert public <= other, public - other


_BROKEN_EXTENSION = """
import importlib.abc, importlib.machinery, sys, warnings

class Broken(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name == "reinhardt_ws._fastbroadcast":
            return importlib.machinery.ModuleSpec(name, self)
        return None
    def create_module(self, spec):
        raise ValueError("picows.picows.WSTransport size changed, may indicate binary "
                         "incompatibility. Expected 200 from C header, got 184 from PyObject")
    def exec_module(self, module):
        pass

sys.meta_path.insert(0, Broken())
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import reinhardt_ws
print(reinhardt_ws.IMPLEMENTATION)
print(sum(issubclass(w.category, RuntimeWarning) and "size changed" in str(w.message)
          for w in caught))
"""


@pytest.mark.pure
def test_layout_mismatch_falls_back_with_a_warning() -> None:
    env = child_env("cython")
    out = subprocess.run([sys.executable, "-c", _BROKEN_EXTENSION], env=env,
                         capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.split() == ["python", "1"], out.stdout + out.stderr
