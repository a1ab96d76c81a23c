"""The suite's implementation axis (tests/conftest.py): the tests of the fan-out and
I/O paths are collected once per implementation, pure tests once."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .fixtures import ROOT, child_env

pytestmark = pytest.mark.pure


def test_pure_tests_are_collected_once_and_the_others_per_implementation() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         "tests/protocol/test_assembler.py", "tests/io/test_client.py"],
        cwd=ROOT, env=child_env("cython"), capture_output=True, text=True, timeout=120,
        check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    ids = [line for line in done.stdout.splitlines() if "::" in line]

    def collected(name: str) -> list[str]:
        return sorted(i.partition("::")[2] for i in ids if i.partition("::")[2].split("[")[0]
                      == name)

    # tests/protocol/: pure throughout, never an implementation in the id.
    assert collected("test_fragmented_text") == ["test_fragmented_text"]
    assert [i for i in ids if i.startswith("tests/protocol/")
            and ("cython" in i or "python" in i)] == []
    # An I/O test: both implementations (and both loops).
    assert collected("test_connect_awaited") == [
        "test_connect_awaited[asyncio-cython]", "test_connect_awaited[asyncio-python]",
        "test_connect_awaited[uvloop-cython]", "test_connect_awaited[uvloop-python]"]
    # Marked pure inside an I/O file: once.
    assert collected("test_connect_rejects_other_schemes") == [
        "test_connect_rejects_other_schemes"]
