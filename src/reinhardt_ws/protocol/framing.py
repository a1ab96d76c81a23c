"""Frame headers without I/O (RFC 6455 section 5.2): shared by the Python fan-out
twin and the permessage-deflate framing (the C twin has its own, in C)."""

from __future__ import annotations

__all__ = ["frame_header"]


def frame_header(first: int, n: int) -> bytes:
    """The header of an unmasked frame (RFC 6455 section 5.2): *first* is FIN, the
    RSV bits and the opcode; *n* the payload length."""
    if n < 126:
        return bytes((first, n))
    if n < 65536:
        return bytes((first, 126, n >> 8, n & 0xFF))
    return bytes((first, 127)) + n.to_bytes(8, "big")
