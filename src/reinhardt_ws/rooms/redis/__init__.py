"""Redis backend: rooms across processes and machines (needs the ``redis`` extra)."""

from __future__ import annotations

from .backend import *  # noqa: F403
from .backend import __all__ as __all__
