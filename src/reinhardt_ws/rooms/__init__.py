"""Rooms: :class:`RoomManager`, :class:`BroadcastResult` and the backends."""

from __future__ import annotations

from .backend import Backend, InMemoryBackend
from .manager import BroadcastResult, RoomManager

__all__ = ["Backend", "BroadcastResult", "InMemoryBackend", "RoomManager"]
