"""The build: a normal build loads the C extension; the selector switch works."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path
from typing import Any

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


@pytest.mark.pure
def test_normal_build_runs_the_c_listener_with_its_picows(
        request: pytest.FixtureRequest) -> None:
    """The extension's frame listener was compiled against the installed picows,
    so the selector uses it."""
    if c_extensions_disabled(request.config):
        pytest.skip("this run is the no-extension axis")
    import picows

    from reinhardt_ws import _fastbroadcast

    assert picows.__version__ == _fastbroadcast.PICOWS_VERSION
    assert _fanout._listener_c is _fastbroadcast.Listener


def test_new_listener_follows_the_implementation(implementation: str) -> None:
    from reinhardt_ws._listener import ConnectionListener

    conn = object()
    listener = _fanout.new_listener(conn)  # type: ignore[arg-type]
    assert listener.conn is conn
    if implementation == "cython":
        assert type(listener) is _fanout.available()["cython"].Listener
    else:
        assert type(listener) is ConnectionListener


@pytest.mark.pure
def test_a_listener_compiled_against_another_picows_is_not_used(
        request: pytest.FixtureRequest) -> None:
    """It reads picows' structures: with another release installed, frames go
    through the Python listener, and a warning says why."""
    if c_extensions_disabled(request.config):
        pytest.skip("this run is the no-extension axis")
    from reinhardt_ws import _fastbroadcast

    built = _fastbroadcast.PICOWS_VERSION
    assert _fanout._compiled_listener(_fastbroadcast, built) is _fastbroadcast.Listener
    with pytest.warns(RuntimeWarning, match=f"compiled against picows {built} and picows 9.9"):
        assert _fanout._compiled_listener(_fastbroadcast, "9.9.9") is None
    assert _fanout._compiled_listener(None, built) is None  # the twin: nothing to say


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

    # The extension adds its frame listener (whose twin is _listener.py) and the
    # picows release that listener was compiled against.
    extra = {"Listener", "PICOWS_VERSION"} if fanout_module is not _fastbroadcast_py else set()
    assert sorted(fanout_module.__all__) == sorted(  # type: ignore[attr-defined]
        {*_fastbroadcast_py.__all__, *extra})
    for name in ("Peer", "Hub"):
        public = {n for n in dir(getattr(_fastbroadcast_py, name)) if not n.startswith("_")}
        other = {n for n in dir(getattr(fanout_module, name)) if not n.startswith("_")}
        assert public <= other, public - other


def test_the_selector_names_follow_use(implementation: str) -> None:
    """``_fanout.Hub``, ``.Peer``, ``.build_frame``... are those of the implementation
    selected (the autouse fixture called ``use``), and ``use`` rebinds them."""
    chosen = _fanout.available()[implementation]
    names = ("DELIVERED", "DROPPED", "FAILED", "IMPLEMENTATION", "Hub", "Peer", "build_frame")
    for name in names:
        assert getattr(_fanout, name) is getattr(chosen, name), name
    assert implementation == _fanout.IMPLEMENTATION
    try:
        _fanout.use("python")
        from reinhardt_ws import _fastbroadcast_py

        for name in names:
            assert getattr(_fanout, name) is getattr(_fastbroadcast_py, name), name
    finally:
        _fanout.use(implementation)


def _stub_interface() -> dict[str, Any]:
    """Module names, and per class its public members with their parameter names,
    as the stub of the compiled module declares them."""
    stub = Path(_fanout.__file__).with_name("_fastbroadcast.pyi")
    tree = ast.parse(stub.read_text())
    found: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            members: dict[str, list[str] | None] = {}
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and (
                        not item.name.startswith("_") or item.name == "__init__"):
                    is_property = any(isinstance(d, ast.Name) and d.id == "property"
                                      for d in item.decorator_list)
                    members[item.name] = None if is_property else [
                        a.arg for a in item.args.args[1:]]
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    members[item.target.id] = None
            found[node.name] = members
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            found[node.target.id] = None
        elif isinstance(node, ast.FunctionDef):
            found[node.name] = [a.arg for a in node.args.args]
    return found


def test_the_stub_declares_the_twins_interface() -> None:
    """The .pyi beside the compiled module matches the Python twin: the same names,
    the same public members, the same parameters."""
    from reinhardt_ws import _fastbroadcast_py as twin
    from reinhardt_ws._listener import ConnectionListener

    stub = _stub_interface()
    # Beyond the fan-out twin's: the listener (twin: _listener.ConnectionListener)
    # and the picows release it was compiled against.
    assert sorted(stub) == sorted({*twin.__all__, "Listener", "PICOWS_VERSION"})
    assert set(stub["Listener"]) == {"__init__", "conn"}
    assert stub["Listener"]["__init__"] == list(
        inspect.signature(ConnectionListener.__init__).parameters)[1:]
    assert stub["build_frame"] == list(inspect.signature(twin.build_frame).parameters)
    for name in ("Peer", "Hub"):
        cls = getattr(twin, name)
        public = {n for n in dir(cls) if not n.startswith("_")} | {"__init__"}
        public |= {n for n in getattr(cls, "__slots__", ()) if not n.startswith("_")}
        assert set(stub[name]) == public, set(stub[name]) ^ public
        for member, params in stub[name].items():
            if params is not None:
                signature = inspect.signature(getattr(cls, member))
                assert params == list(signature.parameters)[1:], (name, member)


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
