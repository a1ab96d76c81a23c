"""The one place that chooses the fan-out implementation (C extension or Python twin).

``REINHARDT_WS_NO_EXTENSIONS=1`` (any non-empty value but ``0``) forces the Python
twin; interpreters other than CPython always use it; a pure install (no
extension file) uses it silently; an extension that is present but fails to
import (an ``ImportError``, or the ``ValueError`` Cython raises on a binary
layout mismatch) falls back to it with a ``RuntimeWarning``.  Everything else in the
package asks this module for the implementation, never imports one directly.

The names of the implementation in use (``Hub``, ``Peer``, ``build_frame``,
``DELIVERED``, ``DROPPED``, ``FAILED``, ``IMPLEMENTATION``) are bound here once, as
propcache binds its helpers; type checkers see the Python twin's (the stub of the
compiled module declares the same interface).  :func:`use` rebinds them (tests and
benchmarks), so read them as attributes of this module (``_fanout.build_frame``),
never ``from _fanout import build_frame``.

What does not run per frame lives here, not in the twins: which transports the
twins may write to directly (:func:`direct_fd`), and the validation of a peer's
limits (:func:`new_peer`).

The frame listener of a connection (:func:`new_listener`) follows the same
choice: the extension's ``Listener`` reads picows' structures, so it is used
only with the picows release the extension was compiled against; with another
one the Python listener (``_listener.py``) runs, with a ``RuntimeWarning``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import platform
import stat
import sys
import warnings
import weakref
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any

import picows

from . import _fastbroadcast_py
from ._listener import ConnectionListener

if TYPE_CHECKING:
    from ._fastbroadcast_py import (
        DELIVERED,
        DROPPED,
        FAILED,
        IMPLEMENTATION,
        Hub,
        Peer,
        build_frame,
    )
    from .connection import WebSocketConnection

__all__ = [
    "DELIVERED",
    "DIRECT_WRITES",
    "DROPPED",
    "FAILED",
    "IMPLEMENTATION",
    "Hub",
    "Peer",
    "available",
    "build_frame",
    "direct_fd",
    "get_hub",
    "new_listener",
    "new_peer",
    "use",
]

#: The names every implementation exports, rebound together by :func:`use`.
_NAMES = ("DELIVERED", "DROPPED", "FAILED", "IMPLEMENTATION", "Hub", "Peer", "build_frame")

#: Whether the twins may write to a socket themselves: they need a scatter-gather
#: send (``os.writev`` in the Python twin, ``sendmsg`` in C, neither on Windows,
#: where the compiled module has ``RWS_HAVE_DIRECT`` 0).  Where they may not, every
#: frame goes through the transport.
DIRECT_WRITES = sys.platform != "win32" and hasattr(os, "writev")


def _extensions_disabled() -> bool:
    value = os.environ.get("REINHARDT_WS_NO_EXTENSIONS", "")
    return value not in ("", "0")


def _load_extension() -> ModuleType | None:
    if _extensions_disabled() or platform.python_implementation() != "CPython":
        return None
    if importlib.util.find_spec(f"{__package__}._fastbroadcast") is None:
        # A pure install (py3-none-any wheel, or built without a compiler): the
        # twin is what was installed, nothing is broken, so nothing to warn about.
        return None
    try:
        from . import _fastbroadcast
    except (ImportError, ValueError) as exc:
        warnings.warn(
            f"reinhardt_ws: the C fan-out could not be loaded ({exc!r}); using the "
            "pure-Python twin. Reinstall from a wheel or with a C compiler, or set "
            "REINHARDT_WS_NO_EXTENSIONS=1 to silence this.",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    return _fastbroadcast


_extension = _load_extension()
_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Hub] = weakref.WeakKeyDictionary()


def _bind(module: ModuleType) -> None:
    """Bind this module's implementation names to *module*'s."""
    namespace = globals()
    for name in _NAMES:
        namespace[name] = getattr(module, name)


_bind(_extension if _extension is not None else _fastbroadcast_py)


def _compiled_listener(module: ModuleType | None, installed: str) -> Any:
    """The extension's ``Listener`` if *module* was compiled against picows
    *installed*, else None (and a ``RuntimeWarning`` when there is a module)."""
    if module is None:
        return None
    built = getattr(module, "PICOWS_VERSION", "")
    if built != installed:
        warnings.warn(
            f"reinhardt_ws: the C extension was compiled against picows {built or '?'} "
            f"and picows {installed} is installed; frames go through the Python "
            "listener (the fan-out stays in C). Reinstall reinhardt-ws to rebuild it.",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    return module.Listener


_listener_c = _compiled_listener(_extension, str(getattr(picows, "__version__", "")))


def new_listener(conn: WebSocketConnection) -> Any:
    """The picows listener of *conn*, of the current implementation: the
    extension's (when it matches the installed picows) or the Python one."""
    if _listener_c is not None and IMPLEMENTATION == "cython":
        return _listener_c(conn)
    return ConnectionListener(conn)


def available() -> dict[str, ModuleType]:
    """Every implementation that can run here, by name (``"cython"``, ``"python"``)."""
    found = {"python": _fastbroadcast_py}
    if _extension is not None:
        found["cython"] = _extension
    return found


def use(name: str) -> None:
    """Switch the implementation for hubs and peers created from now on (tests,
    benchmarks): rebinds this module's implementation names and forgets the hubs.

    Raises ``LookupError`` when *name* cannot run here.
    """
    choices = available()
    if name not in choices:
        raise LookupError(f"fan-out implementation {name!r} is not available here")
    _bind(choices[name])
    _hubs.clear()


def direct_fd(transport: Any) -> int:
    """The socket descriptor the fan-out may write to directly for *transport*, or -1.

    -1 where there is no scatter-gather send (Windows), for TLS (the bytes must go
    through the TLS layer), and for a transport without a socket, or whose
    "socket" has no descriptor or is not one (uvloop gives pipes a pseudo-socket):
    those peers write through the transport only.  The twins treat every error of
    a direct write but "would block" as fatal to the connection, as asyncio's own
    transports do, so only real sockets get here.
    """
    if not DIRECT_WRITES:
        return -1
    if transport.get_extra_info("sslcontext") is not None:
        return -1
    if transport.get_extra_info("ssl_object") is not None:
        return -1
    sock = transport.get_extra_info("socket")
    if sock is None:
        return -1
    try:
        fd = int(sock.fileno())
        return fd if fd >= 0 and stat.S_ISSOCK(os.fstat(fd).st_mode) else -1
    except Exception:
        return -1


def new_peer(hub: Hub, transport: Any, ws: Any, conn_id: str, max_write_buffer: int,
             drop_slow: bool, on_overflow: Callable[[], object],
             on_failure: Callable[[BaseException | None], object]) -> Peer:
    """A fan-out peer of the current implementation for one connection on *hub*.

    Computes the descriptor it may write to directly (:func:`direct_fd`).
    Raises ``ValueError`` when *max_write_buffer* is not positive.
    """
    if max_write_buffer <= 0:
        raise ValueError("max_write_buffer must be positive")
    return Peer(hub, transport, ws, direct_fd(transport), conn_id, max_write_buffer,
                drop_slow, on_overflow, on_failure)


def get_hub(loop: asyncio.AbstractEventLoop) -> Hub:
    """The fan-out hub of *loop* (of the current implementation), created on first use."""
    hub = _hubs.get(loop)
    if hub is None or hub.loop is not loop:
        hub = Hub(loop)
        _hubs[loop] = hub
    return hub
