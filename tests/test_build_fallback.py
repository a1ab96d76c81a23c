"""The build fallback: without a working C compiler, ``REINHARDT_WS_BUILD_EXTENSION=auto``
makes a ``py3-none-any`` wheel without compiled code, says so where a person running
pip sees it, and a stale compiled module under ``build/`` never reaches the wheel.

A real ``pip wheel`` of a copy of the source tree, with ``CC=/bin/false``; run under
``script`` (a pseudo-terminal, as in an interactive shell) and without ``-v``, the
way a user runs pip.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from .fixtures import ROOT

pytestmark = [pytest.mark.pure, pytest.mark.slow, pytest.mark.timeout(600)]

SOURCES = ("setup.py", "pyproject.toml", "README.md", "LICENSE", "MANIFEST.in", "src")


def _build_requirements_here() -> bool:
    """Whether this interpreter can build without isolation (setuptools >= 77, Cython)."""
    try:
        import setuptools
    except ImportError:
        return False
    major = int(setuptools.__version__.split(".")[0])
    return major >= 77 and importlib.util.find_spec("Cython") is not None


def test_broken_compiler_gives_a_pure_wheel_and_a_visible_warning(tmp_path: Path) -> None:
    if shutil.which("script") is None:
        pytest.skip("needs util-linux 'script' for a pseudo-terminal")
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, tree / name, ignore=shutil.ignore_patterns(
                "__pycache__", "*.so", "*.pyd", "*.c", "*.html", "*.egg-info"))
        else:
            shutil.copy2(source, tree / name)
    # A stale extension from an earlier build, where setuptools would pick it up.
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    for lib in ("lib", f"lib.{sysconfig.get_platform()}-cpython-"
                       f"{sys.version_info.major}{sys.version_info.minor}"):
        stale = tree / "build" / lib / "reinhardt_ws" / f"_fastbroadcast{suffix}"
        stale.parent.mkdir(parents=True)
        stale.write_bytes(b"\x7fELF stale")
    out = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "-w", str(out)]
    if _build_requirements_here():
        pip.append("--no-build-isolation")
    env = dict(os.environ, CC="/bin/false", REINHARDT_WS_BUILD_EXTENSION="auto",
               PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.pop("PYTHONPATH", None)
    done = subprocess.run(["script", "-qec", shlex.join(pip), "/dev/null"], cwd=tree, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=540, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    wheels = sorted(out.glob("*.whl"))
    assert [w.name for w in wheels] == ["reinhardt_ws-0.1.0-py3-none-any.whl"], output
    assert "the C extension could not be built" in output
    assert "py3-none-any" in output
    with zipfile.ZipFile(wheels[0]) as wheel:
        names = wheel.namelist()
        metadata = wheel.read("reinhardt_ws-0.1.0.dist-info/WHEEL").decode()
    assert not [n for n in names if "_fastbroadcast" in n and not n.endswith(
        ("_fastbroadcast_py.py", "_fastbroadcast.pyi"))], names
    assert "reinhardt_ws/_fastbroadcast_py.py" in names
    assert "Root-Is-Purelib: true" in metadata
    assert "Tag: py3-none-any" in metadata
