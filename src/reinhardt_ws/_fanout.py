"""The one place that chooses the fan-out implementation (C extension or Python twin).

``REINHARDT_WS_NO_EXTENSIONS=1`` (any non-empty value but ``0``) forces the Python
twin; interpreters other than CPython always use it; a pure install (no
extension file) uses it silently; an extension that is present but fails to
import (an ``ImportError``, or the ``ValueError`` Cython raises on a binary
layout mismatch) falls back to it with a ``RuntimeWarning``.  Everything else in the
package asks this module for the implementation, never imports one directly.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import platform
import warnings
import weakref
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any

from . import _fastbroadcast_py

if TYPE_CHECKING:
    from ._fastbroadcast_py import Hub, Peer

__all__ = ["available", "get_hub", "impl", "new_peer", "use"]


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

#: The implementation in use: ``reinhardt_ws._fastbroadcast`` or its Python twin.
impl: ModuleType = _extension if _extension is not None else _fastbroadcast_py

_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Hub] = weakref.WeakKeyDictionary()


def available() -> dict[str, ModuleType]:
    """Every implementation that can run here, by name (``"cython"``, ``"python"``)."""
    found = {"python": _fastbroadcast_py}
    if _extension is not None:
        found["cython"] = _extension
    return found


def use(name: str) -> None:
    """Switch the implementation for hubs created from now on (tests, benchmarks).

    Raises ``LookupError`` when *name* cannot run here.
    """
    global impl
    choices = available()
    if name not in choices:
        raise LookupError(f"fan-out implementation {name!r} is not available here")
    impl = choices[name]
    _hubs.clear()


def new_peer(hub: Hub, transport: Any, ws: Any, conn_id: str, max_write_buffer: int,
             drop_slow: bool, on_overflow: Callable[[], object],
             on_failure: Callable[[BaseException | None], object]) -> Peer:
    """A fan-out peer of the current implementation for one connection."""
    return impl.Peer(hub, transport, ws, conn_id, max_write_buffer, drop_slow,  # type: ignore[no-any-return]
                     on_overflow, on_failure)


def get_hub(loop: asyncio.AbstractEventLoop) -> Hub:
    """The fan-out hub of *loop*, created on first use."""
    hub = _hubs.get(loop)
    if hub is None or hub.loop is not loop:
        hub = impl.Hub(loop)
        _hubs[loop] = hub
    return hub
