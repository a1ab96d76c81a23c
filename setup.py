"""Build definition of the optional C extension ``reinhardt_ws._fastbroadcast``.

Metadata lives in pyproject.toml; this file only decides whether and how the
Cython fan-out is compiled:

REINHARDT_WS_BUILD_EXTENSION=yes   compile it, fail the build if that fails (CI, wheels)
REINHARDT_WS_BUILD_EXTENSION=no    no extension: a pure ``py3-none-any`` wheel
REINHARDT_WS_BUILD_EXTENSION=auto  (default) try, fall back to pure Python with a warning

A fallback in ``auto`` mode is loud and honest:

* the warning goes to stderr and, when there is a terminal, straight to it
  (``/dev/tty``): pip captures a build's output and shows it only when the build
  fails or with ``-v``, so stderr alone is invisible in ``pip install``;
* the wheel is tagged ``py3-none-any`` (``Root-Is-Purelib: true``), as a wheel
  without compiled code must be, and pip's own "Created wheel ...
  py3-none-any.whl" line then says so too.

Stale compiled modules in ``build/lib*/reinhardt_ws/`` are deleted before every
build: an extension compiled by an earlier build never reaches a new wheel.
"""

from __future__ import annotations

import glob
import os
import platform
import sys

from setuptools import Extension, setup
from setuptools.command.build import build
from setuptools.command.build_ext import build_ext

try:
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # setuptools < 70.1: the wheel package's
    from wheel.bdist_wheel import bdist_wheel  # type: ignore[no-redef]

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
    # The listener reads picows' structures (cimported from its picows.pxd): the
    # build records the release it compiled against, and reinhardt_ws/_fanout.py
    # uses the listener only with that release installed.
    from importlib.metadata import version

    macros.append(("RWS_PICOWS_VERSION", '"%s"' % version("picows")))
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


#: Set when the extension was wanted (auto) but could not be built.
FELL_BACK: list[str] = []


def warn_fallback(reason: object) -> None:
    """Say that the wheel will carry the pure-Python fan-out, where a person sees it."""
    text = (f"WARNING: reinhardt-ws: the C extension could not be built ({reason}); "
            "this build carries the pure-Python fan-out only (slower broadcasts) and "
            "its wheel is tagged py3-none-any. Install a C compiler and rebuild, or set "
            "REINHARDT_WS_BUILD_EXTENSION=yes to make this an error.")
    FELL_BACK.append(text)
    print(text, file=sys.stderr, flush=True)
    if not sys.stderr.isatty():  # captured (pip): tell the terminal, if there is one
        try:
            with open("/dev/tty", "w") as tty:
                tty.write(text + "\n")
        except OSError:
            pass


class CleanBuild(build):
    """``build`` that first deletes compiled modules left by earlier builds."""

    def run(self) -> None:
        pattern = os.path.join(self.build_base, "lib*", "reinhardt_ws", "_fastbroadcast*")
        for stale in glob.glob(pattern):
            os.remove(stale)
        super().run()


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
        if not FELL_BACK:
            warn_fallback(exc)
        # Nothing compiled goes on from here: a wheel of this build is pure.
        self.distribution.ext_modules = []
        self.extensions = []


class BdistWheel(bdist_wheel):
    """A wheel whose extension failed to build is tagged ``py3-none-any``."""

    def run(self) -> None:
        # Build first (bdist_wheel would, but decides purity before it knows):
        # after a fallback the wheel holds no compiled code, so it is pure.
        if not self.skip_build:
            self.reinitialize_command("build_ext").inplace = False
            self.run_command("build")
        if FELL_BACK or not self.distribution.has_ext_modules():
            self.root_is_pure = True
        super().run()
        if FELL_BACK:
            print(FELL_BACK[0], file=sys.stderr, flush=True)


try:
    ext_modules = extensions()
except ImportError as exc:  # Cython missing in a build environment without isolation
    if MODE == "yes":
        raise
    warn_fallback(exc)
    ext_modules = []

setup(ext_modules=ext_modules,
      cmdclass={"build": CleanBuild, "build_ext": OptionalBuildExt, "bdist_wheel": BdistWheel})
