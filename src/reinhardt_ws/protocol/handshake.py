"""Opening-handshake decisions, without I/O: what a request asks for and what the
server answers (RFC 6455 section 4.2).

The listener calls these with the parsed request; they never see a socket, so
tests drive them directly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["HTTPResponse", "is_upgrade", "negotiate_subprotocol"]


@dataclass(frozen=True)
class HTTPResponse:
    """A plain HTTP answer to a request that is not a WebSocket upgrade."""

    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: Mapping[str, str] = field(default_factory=dict)


def is_upgrade(headers: Mapping[str, str]) -> bool:
    """Whether the request asks for a WebSocket upgrade (``Upgrade: websocket``)."""
    return "websocket" in headers.get("upgrade", "").lower()


def negotiate_subprotocol(offered: str | None, supported: tuple[str, ...]) -> str | None:
    """The first of the server's *supported* subprotocols the client *offered*."""
    if not offered or not supported:
        return None
    wanted = {p.strip() for p in offered.split(",") if p.strip()}
    for proto in supported:  # the server's order of preference
        if proto in wanted:
            return proto
    return None
