"""Rooms: :class:`RoomManager`, :class:`BroadcastResult` and the backends."""

from __future__ import annotations

from .backend import Backend, InMemoryBackend
from .history import HistoryPolicy, HistoryResult, JoinResult, Position, Publication
from .manager import BroadcastResult, RoomManager

__all__ = ["Backend", "BroadcastResult", "HistoryPolicy", "HistoryResult", "InMemoryBackend",
           "JoinResult", "Position", "Publication", "RoomManager"]
