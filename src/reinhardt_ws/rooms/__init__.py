"""Rooms: :class:`RoomManager`, :class:`BroadcastResult` and the backends."""

from __future__ import annotations

from .manager import Backend, BroadcastResult, InMemoryBackend, RoomManager

__all__ = ["Backend", "BroadcastResult", "InMemoryBackend", "RoomManager"]
