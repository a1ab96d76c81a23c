"""What the bench clients and servers agree on: the handshake, the payload bytes,
the frame sizes and the control-line protocol.  Standard library only: the client
and server processes import it by path, without the package.

Every contestant sends the same payload (``make_payload``) as one unmasked binary
frame, so a client can check each byte it receives against ``make_frame`` repeated.
"""

from __future__ import annotations

import base64
import hashlib
import resource
import time
from typing import Any

__all__ = [
    "ACCEPT",
    "BROWSER_HEADERS",
    "KEY",
    "frame_header_len",
    "frame_len",
    "make_frame",
    "make_json_payload",
    "make_payload",
    "raise_nofile_limit",
    "upgrade_request",
]

#: The fixed Sec-WebSocket-Key of every bench client (the RFC 6455 example) and the
#: accept value a correct server answers with.  floor.c hard-codes both.
KEY = "dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = base64.b64encode(
    hashlib.sha1((KEY + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
).decode()


#: The other header fields Chromium 131 sends with a WebSocket upgrade, in its
#: order, with a session cookie of a typical size; without
#: Sec-WebSocket-Extensions (the counting clients do not inflate).  The Origin is
#: the server's own (same-origin, as a page it served).
BROWSER_HEADERS = (
    "Pragma: no-cache\r\n"
    "Cache-Control: no-cache\r\n"
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36\r\n"
    "Origin: http://{host}:{port}\r\n"
    "Accept-Encoding: gzip, deflate, br, zstd\r\n"
    "Accept-Language: en-US,en;q=0.9\r\n"
    "Cookie: sessionid=k3j4h5g6f7d8s9a0q1w2e3r4t5y6u7i8; "
    "csrftoken=Zx8Cv7Bn6Mm5Aa4Ss3Dd2Ff1Gg0Hh9Jj8Kk7Ll6Qq5Ww4Ee3Rr2Tt1Yy0Uu9\r\n"
)


def upgrade_request(host: str, port: int, path: str = "/bench", *,
                    browser: bool = False) -> bytes:
    """The clients' upgrade request; *browser*: with :data:`BROWSER_HEADERS` too
    (a head of about 600 bytes, as a browser's)."""
    return (
        f"GET {path} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        + (BROWSER_HEADERS.format(host=host, port=port) if browser else "")
        + f"Sec-WebSocket-Key: {KEY}\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        "\r\n"
    ).encode()


def read_101(sock: Any, deadline: float | None = None) -> dict[bytes, bytes]:
    """Read the server's answer to :func:`upgrade_request` on *sock*: it must be a
    101 with our ``Sec-WebSocket-Accept`` and nothing after its head (the server
    may not speak first).  Returns its headers (lower-cased names);
    ``ConnectionError`` otherwise.  With *deadline* (``time.monotonic()``), each
    read waits until then (at least 0.1 s); without, the socket's own timeout."""
    data = b""
    while b"\r\n\r\n" not in data:
        if deadline is not None:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("server closed the connection during the handshake")
        data += chunk
        if len(data) > 65536:
            raise ConnectionError("handshake response too long")
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    if not lines[0].startswith(b"HTTP/1.1 101"):
        raise ConnectionError(f"handshake refused: {lines[0]!r}")
    headers = {k.strip().lower(): v.strip()
               for k, v in (line.split(b":", 1) for line in lines[1:] if b":" in line)}
    if headers.get(b"sec-websocket-accept") != ACCEPT.encode():
        raise ConnectionError("wrong or missing Sec-WebSocket-Accept")
    if rest:
        raise ConnectionError(f"{len(rest)} bytes arrived right after the handshake")
    return headers


def make_payload(size: int) -> bytes:
    """The bench payload of *size* bytes; floor.c builds the same bytes."""
    return bytes(i % 251 for i in range(size))


def make_json_payload(size: int) -> bytes:
    """A deterministic JSON document of exactly *size* bytes (at least 64): a
    chat room's recent events, the kind of text permessage-deflate is for
    (repeated keys, similar values, varied words and numbers).  Every process
    builds the same bytes."""
    if size < 64:
        raise ValueError("a JSON payload needs at least 64 bytes")
    words = ("hello", "world", "meeting", "at", "noon", "see", "you", "there", "thanks",
             "deploy", "done", "the", "build", "is", "green", "again", "lunch", "review",
             "ship", "it", "tomorrow", "coffee", "sounds", "good", "fixed", "bug")
    users = ("ada", "grace", "linus", "guido", "ken", "barbara", "edsger", "margaret")
    state = 12345  # a small LCG: the same "random" text in every process

    def rnd(n: int) -> int:
        nonlocal state
        state = (state * 1103515245 + 12345) & 0x7FFFFFFF
        return state % n

    head = '{"type":"history","room":"bench","events":['
    parts: list[str] = []
    length = len(head) + len('],"pad":""}')
    i = 0
    while True:
        text = " ".join(words[rnd(len(words))] for _ in range(3 + rnd(9)))
        event = (f'{{"id":{1000 + i},"user":"{users[rnd(len(users))]}","ts":'
                 f'{1700000000 + 7 * i + rnd(7)},"text":"{text}","likes":{rnd(20)}}}')
        extra = len(event) + (1 if parts else 0)
        if length + extra > size:
            break
        parts.append(event)
        length += extra
        i += 1
    pad = "".join(chr(97 + rnd(26)) for _ in range(size - length))
    out = (head + ",".join(parts) + '],"pad":"' + pad + '"}').encode()
    assert len(out) == size
    return out


def frame_header_len(size: int) -> int:
    return 2 if size < 126 else 4 if size < 65536 else 10


def frame_len(size: int) -> int:
    """Bytes on the wire for one unmasked frame carrying *size* payload bytes."""
    return frame_header_len(size) + size


def make_frame(size: int, opcode: int = 0x2) -> bytes:
    first = 0x80 | opcode
    if size < 126:
        header = bytes((first, size))
    elif size < 65536:
        header = bytes((first, 126, size >> 8, size & 0xFF))
    else:
        header = bytes((first, 127)) + size.to_bytes(8, "big")
    return header + make_payload(size)


def raise_nofile_limit() -> int:
    """Raise this process's open-file soft limit to its hard limit; return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
