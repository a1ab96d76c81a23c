"""The package's ``__all__`` is exactly what its public modules export."""

from __future__ import annotations

import importlib

import pytest

import reinhardt_ws

pytestmark = pytest.mark.pure

PUBLIC_MODULES = ("client", "connection", "errors", "handler", "options", "policy",
                  "protocol.auth", "protocol.messages", "reconnect", "rooms", "runner",
                  "server")


def test_every_module_states_its_exports() -> None:
    for name in PUBLIC_MODULES:
        module = importlib.import_module(f"reinhardt_ws.{name}")
        assert isinstance(module.__all__, list), name
        for symbol in module.__all__:
            assert hasattr(module, symbol), f"{name}.{symbol}"


def test_package_all_matches_modules() -> None:
    exported = set()
    for name in PUBLIC_MODULES:
        exported |= set(importlib.import_module(f"reinhardt_ws.{name}").__all__)
    exported -= {"Backend"}  # a Protocol for backend authors: reinhardt_ws.rooms.Backend
    extra = {"IMPLEMENTATION", "__version__"}
    assert set(reinhardt_ws.__all__) == exported | extra
    for symbol in reinhardt_ws.__all__:
        assert getattr(reinhardt_ws, symbol) is not None


def test_private_extension_not_in_top_level_namespace() -> None:
    import sys

    assert "_fastbroadcast" not in sys.modules
    assert "_fastbroadcast" not in reinhardt_ws.__all__


def test_redis_backend_is_lazy() -> None:
    """``import reinhardt_ws`` never needs the redis extra; the name resolves on use."""
    import subprocess
    import sys

    code = ("import sys, reinhardt_ws\n"
            "assert 'redis' not in sys.modules, 'redis-py imported eagerly'\n"
            "assert 'RedisBackend' not in reinhardt_ws.__all__\n"
            "from reinhardt_ws.rooms.redis import RedisBackend\n"
            "assert reinhardt_ws.RedisBackend is RedisBackend\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
