"""Build definition of the optional C extension ``reinhardt_ws._fastbroadcast``.

Metadata lives in pyproject.toml; this file only decides whether and how the
Cython fan-out is compiled:

REINHARDT_WS_BUILD_EXTENSION=yes   compile it, fail the build if that fails (CI, wheels)
REINHARDT_WS_BUILD_EXTENSION=no    no extension: a pure ``py3-none-any`` wheel
REINHARDT_WS_BUILD_EXTENSION=auto  (default) try, fall back to pure Python with a warning
"""

from __future__ import annotations

import os
import platform
import sys
import warnings

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

MODE = os.environ.get("REINHARDT_WS_BUILD_EXTENSION", "auto").strip().lower()
if MODE not in ("yes", "no", "auto"):
    sys.exit(f"REINHARDT_WS_BUILD_EXTENSION must be yes, no or auto, not {MODE!r}")

if platform.python_implementation() != "CPython" and MODE == "auto":
    MODE = "no"

TRACE = os.environ.get("REINHARDT_WS_CYTHON_TRACE") == "1"


def extensions() -> list[Extension]:
    if MODE == "no":
        return []
    from Cython.Build import cythonize

    if sys.platform == "win32":
        compile_args = ["/O2"]
    else:
        compile_args = ["-O2", "-g0", "-DNDEBUG"]
    macros = [("CYTHON_TRACE", "1"), ("CYTHON_TRACE_NOGIL", "1")] if TRACE else []
    ext = Extension(
        "reinhardt_ws._fastbroadcast",
        ["src/_fastbroadcast.pyx"],
        extra_compile_args=compile_args,
        define_macros=macros,
    )
    directives = {
        "language_level": "3",
        "boundscheck": False,
        "wraparound": False,
        "cdivision": True,
        "linetrace": TRACE,
        "embedsignature": True,
    }
    return cythonize([ext], compiler_directives=directives, annotate=TRACE)


class OptionalBuildExt(build_ext):
    """In ``auto`` mode a compile failure leaves a working pure-Python install."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any compiler failure
            self._fallback(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            self._fallback(exc)

    def _fallback(self, exc: Exception) -> None:
        if MODE == "yes":
            raise
        warnings.warn(
            f"reinhardt-ws: the C extension could not be built ({exc}); "
            "installing the pure-Python fan-out. Set REINHARDT_WS_BUILD_EXTENSION=yes "
            "to make this an error.",
            stacklevel=1,
        )
        print(f"WARNING: reinhardt-ws C extension not built: {exc}", file=sys.stderr)


try:
    ext_modules = extensions()
except ImportError as exc:  # Cython missing in a build environment without isolation
    if MODE == "yes":
        raise
    print(f"WARNING: reinhardt-ws C extension not built: {exc}", file=sys.stderr)
    ext_modules = []

setup(ext_modules=ext_modules, cmdclass={"build_ext": OptionalBuildExt})
