"""Without Python 2.7 the Autobahn test skips with one line saying how to get it, on a
developer machine, and fails under CI (``CI=true``).  Run in a child pytest with
``REINHARDT_WS_PYTHON27`` naming no interpreter (the harness's first choice)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ..fixtures import ROOT, child_env

pytestmark = pytest.mark.pure


@pytest.mark.parametrize("ci", ["", "true"], ids=["developer", "CI"])
def test_missing_python27(ci: str) -> None:
    env = child_env("python", REINHARDT_WS_PYTHON27="/nonexistent/python2.7", CI=ci or None)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rsf", "-p", "no:cacheprovider",
         "--timeout", "60", "-m", "autobahn", "-k", "python",
         "tests/conformance/test_autobahn.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    output = done.stdout + done.stderr
    if ci:
        assert done.returncode == 1, output
        assert "1 failed" in output
        assert "is not a working Python 2.7 interpreter" in output
    else:
        assert done.returncode == 0, output
        assert "1 skipped" in output
        assert ("Autobahn needs Python 2.7, not found: run `pyenv install 2.7.18` or set "
                "REINHARDT_WS_PYTHON27=/path/to/python2.7 (Debian 12 packages none)") in output
